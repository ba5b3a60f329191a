"""The wire codec: round trips, the grid, the float8_e4m3fn layout, packing and bad input."""

import numpy as np
import pytest
import torch

from fp8fl.numerics.codec import decode, encode, pack_codes, packed_length, unpack_codes
from fp8fl.numerics.formats import E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FloatFormat
from fp8fl.numerics.quant import quantize
from tests.numerics_reference import hard_inputs

FORMATS = [
    E4M3,
    E5M2,
    E3M4,
    E2M3,
    E3M2,
    E2M1,
    FloatFormat(2, 2),
    FloatFormat(3, 3),
    FloatFormat(1, 0),
]


def all_codes(fmt: FloatFormat) -> np.ndarray:
    return np.arange(2**fmt.bits, dtype=np.uint8)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("alpha", [0.02, 1.0, 37.5])
def test_decode_of_encode_equals_quantize(fmt, alpha):
    x = hard_inputs(fmt, float(np.float32(alpha)), random_count=5000, seed=1).reshape(-1, 1)
    codes = encode(x, alpha, fmt, stochastic=False)
    assert codes.dtype == np.uint8 and codes.size == packed_length(x.numel(), fmt.bits)
    decoded = decode(codes, alpha, fmt, shape=x.shape)
    assert decoded.shape == x.shape
    assert torch.equal(decoded, quantize(x, alpha, fmt))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_decoding_every_code_gives_exactly_the_grid(fmt):
    codes = all_codes(fmt)
    values = decode(pack_codes(codes, fmt.bits), 2.75, fmt, shape=(codes.size,))
    assert torch.equal(torch.unique(values), fmt.grid(2.75))  # ±0 both decode to zero


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("stochastic", [False, True])
def test_encode_of_decode_is_the_identity_on_codes(fmt, stochastic):
    codes = all_codes(fmt)
    values = decode(pack_codes(codes, fmt.bits), 0.5, fmt, shape=(codes.size,))
    again = unpack_codes(encode(values, 0.5, fmt, stochastic=stochastic), codes.size, fmt.bits)
    negative_zero = 1 << (fmt.bits - 1)
    assert np.array_equal(again[codes != negative_zero], codes[codes != negative_zero])


@pytest.mark.parametrize("scale_exp", [-6, 0, 3])
def test_e4m3_layout_is_float8_e4m3fn_except_for_alpha_codes(scale_exp):
    """With α = 480·2^k the grid is float8_e4m3fn's scaled by 2^k, so codes must agree bit for bit
    wherever float8 is finite; 0x7F/0xFF, NaN in float8, are ±α here."""
    alpha = 480.0 * 2.0**scale_exp
    codes = all_codes(E4M3)
    ours = decode(codes, alpha)
    theirs = torch.from_numpy(codes).view(torch.float8_e4m3fn).float() * 2.0**scale_exp
    finite = torch.isfinite(theirs)
    assert torch.equal(ours[finite], theirs[finite])
    assert ours[0x7F].item() == alpha and ours[0xFF].item() == -alpha
    # encoding agrees with the float8 cast (round half to even) wherever float8 is finite
    x = hard_inputs(E4M3, alpha, random_count=50_000, seed=2)
    x = x[x.abs() < 464.0 * 2.0**scale_exp]
    cast = (x / 2.0**scale_exp).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(encode(x, alpha, stochastic=False), cast)


def test_stochastic_encoding_decodes_to_grid_neighbours():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    codes = encode(x, 2.0, generator=torch.Generator().manual_seed(1))
    y = decode(codes, 2.0, shape=x.shape)
    grid = E4M3.grid(2.0)
    idx = torch.searchsorted(grid, x.clamp(-2, 2))
    lower = grid[(idx - 1).clamp(min=0)]
    upper = grid[idx.clamp(max=grid.numel() - 1)]
    assert torch.all((y == lower) | (y == upper))


def test_packing_layouts():
    # two E2M1 codes per byte, first code in the high nibble
    assert pack_codes(np.array([0x1, 0xA, 0xF], np.uint8), 4).tolist() == [0x1A, 0xF0]
    # four 6-bit codes in three bytes: 000001 000010 000011 111111
    packed = pack_codes(np.array([1, 2, 3, 63], np.uint8), 6)
    assert packed.tolist() == [0b00000100, 0b00100000, 0b11111111]
    for bits in range(1, 9):
        codes = np.random.default_rng(bits).integers(0, 2**bits, 1001).astype(np.uint8)
        packed = pack_codes(codes, bits)
        assert packed.size == packed_length(1001, bits) == -(-1001 * bits // 8)
        assert np.array_equal(unpack_codes(packed, 1001, bits), codes)


def test_bytes_per_weight():
    x = torch.randn(1000)
    assert encode(x, 3.0).nbytes == 1000
    assert encode(x, 3.0, E3M2).nbytes == 750
    assert encode(x, 3.0, E2M1).nbytes == 500


@pytest.mark.parametrize(
    ("codes", "kwargs", "error", "message"),
    [
        (np.zeros(4, np.int8), {}, TypeError, "uint8"),
        (np.zeros(4, np.float32), {}, TypeError, "uint8"),
        (torch.zeros(4, dtype=torch.uint8), {}, TypeError, "numpy array"),
        (np.zeros(5, np.uint8), {"shape": (2, 2)}, ValueError, "5 bytes .* need 4 bytes"),
        (np.zeros(3, np.uint8), {"shape": (2, 2)}, ValueError, "3 bytes .* need 4 bytes"),
        (np.zeros(2, np.uint8), {"fmt": E2M1}, ValueError, "needs shape="),
        (np.array([0x12, 0x3F], np.uint8), {"fmt": E2M1, "shape": (3,)}, ValueError, "padding"),
        (np.zeros(2, np.uint8), {"shape": (2, -1)}, ValueError, "non-negative"),
        (np.zeros(2, np.uint8), {"fmt": "e4m3"}, TypeError, "FloatFormat"),
    ],
)
def test_bad_codes_are_rejected(codes, kwargs, error, message):
    with pytest.raises(error, match=message):
        decode(codes, 1.0, **kwargs)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_is_rejected_by_the_codec(alpha):
    with pytest.raises(ValueError, match="alpha"):
        encode(torch.ones(3), alpha)
    with pytest.raises(ValueError, match="alpha"):
        decode(np.zeros(3, np.uint8), alpha)


def test_non_finite_input_is_rejected_by_encode():
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\) \(1 NaN, 1 inf\)"):
        encode(torch.tensor([0.0, float("nan"), float("inf")]), 1.0)
