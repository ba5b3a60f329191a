"""SWALP / LPT-FL block floating point: an exact reference, rounding, clamping, the codec, autograd."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fp8fl.numerics.blockfp import (
    BLOCKS,
    BFPActErr,
    BFPQuant,
    bfp_decode,
    bfp_encode,
    bfp_nbytes,
    bfp_quantize,
    block_layout,
    on_grid,
)
from fp8fl.numerics.codec import packed_length

SHAPES = [(), (1,), (13,), (7, 9), (4, 3, 5), (6, 3, 3, 3), (5, 4, 1, 1)]
F32_MAX = float(np.finfo(np.float32).max)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality of two float32 tensors (so +0 and −0 differ)."""
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


# --------------------------------------------------------------------------- exact reference
def ref_exponent(peak: Fraction) -> int:
    """clamp(floor(log2 peak), −128, 127) by exact comparison with powers of two; 0 -> −128."""
    if peak == 0:
        return -128
    e = 0
    while Fraction(2) ** e > peak:
        e -= 1
    while Fraction(2) ** (e + 1) <= peak:
        e += 1
    return min(max(e, -128), 127)


def ref_block(values: list[float], bits: int, us: list[float] | None) -> tuple[list[float], int]:
    """One block in exact rational arithmetic: the formula of the spec, nothing vectorised."""
    xs = [Fraction(v) for v in values]
    e = ref_exponent(max((abs(v) for v in xs), default=Fraction(0)))
    step = Fraction(2) ** (e - (bits - 2))
    top = 2 ** (bits - 1) - 1
    low = -top if e == 127 else -top - 1  # −2^128 is not a float32
    out = []
    for k, v in enumerate(xs):
        z = v / step
        i = round(z) if us is None else math.floor(z + Fraction(us[k]))  # round(): half to even
        out.append(float(min(max(i, low), top) * step))
    return out, e


def ref_quantize(
    x: torch.Tensor, bits: int, block: str, u: torch.Tensor | None
) -> tuple[torch.Tensor, list[int]]:
    """Walk the blocks one by one with numpy indexing (tensor / row / kernel / element)."""
    a = x.double().numpy()
    ua = None if u is None else u.double().numpy()
    out = np.zeros(a.shape)
    if block == "element":
        lead = a.ndim
    elif block == "tensor" or a.ndim <= 1:
        lead = 0
    else:
        lead = 2 if block == "kernel" else 1
    exps = []
    for idx in np.ndindex(*a.shape[:lead]):
        us = None if ua is None else list(np.asarray(ua[idx]).reshape(-1))
        vals, e = ref_block(list(np.asarray(a[idx]).reshape(-1)), bits, us)
        out[idx] = np.array(vals).reshape(np.shape(a[idx]))
        exps.append(e)
    return torch.from_numpy(out.astype(np.float32)) + 0.0, exps


def hard_tensor(shape: tuple[int, ...], bits: int, seed: int) -> torch.Tensor:
    """Random values over 16 binades, plus per-row specials: a zero row, a max that is exactly a
    (negative) power of two, ±max, a max just below 2^(e+1) (rounds to 2^(b−1), clamps to
    2^(b−1)−1), and exact ties k+½ of the step under max 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 8, shape, generator=g))
    rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
    n_rows, width = rows.shape
    if n_rows > 1:
        rows[0] = 0.0
    if n_rows > 2 and width >= 2:
        rows[1] *= 7.9 / rows[1].abs().max()
        rows[1, 0] = -8.0
    if n_rows > 3 and width >= 2:
        rows[2, 1] = -rows[2].abs().max()
        rows[2, 0] = -rows[2, 1]
    if n_rows > 3:
        rows[3] *= 7.0 / rows[3].abs().max()
        rows[3, 0] = float(np.nextafter(np.float32(8.0), np.float32(0.0)))
    if n_rows > 4 and width >= 4:
        step = 2.0 ** -(bits - 2)
        rows[4] = 0.25
        rows[4, 0] = 1.0
        rows[4, 1:4] = torch.tensor([0.5 * step, 1.5 * step, -2.5 * step])
    return x


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("block", BLOCKS)
def test_matches_exact_reference(block, bits, stochastic):
    for k, shape in enumerate(SHAPES):
        x = hard_tensor(shape, bits, seed=100 * bits + k)
        u = torch.rand(shape, generator=torch.Generator().manual_seed(k), dtype=torch.float32)
        gen = torch.Generator().manual_seed(k) if stochastic else None
        want, want_exps = ref_quantize(x, bits, block, u if stochastic else None)
        got = bfp_quantize(x, bits, block, stochastic, gen)
        assert same_bits(got, want), (shape, (got - want).abs().max())
        gen = torch.Generator().manual_seed(k) if stochastic else None
        _, exps = bfp_encode(x, bits, block, stochastic, gen)
        assert exps.tolist() == want_exps, shape
        assert len(want_exps) == block_layout(shape, block)[0]


def test_reference_covers_the_special_cases():
    """The special rows of ``hard_tensor`` do what they claim (b = 4, step 1/4 under max 1)."""
    x = hard_tensor((6, 8), 4, seed=0)
    q = bfp_quantize(x, 4, "row")
    assert torch.equal(q[0], torch.zeros(8))
    assert q[1, 0] == -8.0 and (q[1].abs() <= 8).all()
    assert q[2, 0] == -q[2, 1] or q[2, 0] == 7 / 8 * -q[2, 1]  # −max is on the grid, +max may clamp
    assert q[3, 0] == 7.0  # 8·(1 − 2^−24) -> i = 8 -> clamps to 7, step 1
    assert q[4, :4].tolist() == [1.0, 0.0, 0.5, -0.5]  # ½, 1½, −2½ steps: half to even


# ------------------------------------------------------------------------- stochastic rounding
@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_is_unbiased(frac, sign):
    """x = ±(3 + f)·step in a block whose max is 1 (e = 0, b = 6, step 2^−4). Each element rounds up
    with probability f, independently, so the error has mean 0 and σ = step·√(f(1−f)) ≤ step/2; the
    mean of n errors is within 5σ/√n except with probability < 6e−7 (normal approximation, n = 2^16).
    u = k·2^−24 biases P(up) by < 2^−24, far below σ/√n ≤ step/512. Nearest rounding, biased by
    f·step or (f−1)·step, must fail the same bound (the test can tell)."""
    n, bits = 2**16, 6
    step = 2.0**-4
    value = sign * (3 + frac) * step
    x = torch.full((n + 1,), value, dtype=torch.float32)
    x[0] = 1.0
    tolerance = 5 * (step / 2) / math.sqrt(n)
    q = bfp_quantize(x, bits, "tensor", True, torch.Generator().manual_seed(7))[1:].double()
    assert set(torch.unique(q).tolist()) <= {sign * 3 * step, sign * 4 * step}
    assert abs(float((q - float(np.float32(value))).mean())) < tolerance
    nearest = bfp_quantize(x, bits, "tensor")[1:].double()
    assert abs(float((nearest - float(np.float32(value))).mean())) > 10 * tolerance


def test_stochastic_rounding_follows_the_generator():
    x = torch.randn(5000)
    a = bfp_quantize(x, 5, "row", True, torch.Generator().manual_seed(3))
    b = bfp_quantize(x, 5, "row", True, torch.Generator().manual_seed(3))
    c = bfp_quantize(x, 5, "row", True, torch.Generator().manual_seed(4))
    assert same_bits(a, b) and not torch.equal(a, c)


# -------------------------------------------------------------------------- exponent clamping
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_exponent_clamps_at_minus_128(bits):
    """max|X| < 2^−128 still uses e = −128, step 2^(−126−b): values below half a step go to +0, the
    rest keep the bits the step allows (the float32 subnormals can hold every such grid value)."""
    step = Fraction(2) ** (-126 - bits)
    values = [2.0**-140, -(2.0**-149), 1.5 * 2.0**-130, -3 * 2.0**-133, 2.0**-142 * 1.25]
    x = torch.tensor(values, dtype=torch.float32)
    want = [float(round(Fraction(v) / step) * step) for v in values]
    got = bfp_quantize(x, bits, "tensor")
    assert got.tolist() == want
    assert bfp_encode(x, bits, "tensor")[1].tolist() == [-128]
    assert not torch.signbit(got[1])  # −2^−149 rounds to +0, as the decoder gives
    exact_min = torch.tensor([2.0**-128, -(2.0**-130)])
    assert bfp_encode(exact_min, bits, "tensor")[1].tolist() == [-128]
    assert torch.equal(bfp_quantize(exact_min, bits, "tensor"), exact_min)
    assert bfp_encode(torch.tensor([2.0**-127]), bits, "tensor")[1].tolist() == [-127]


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_exponent_clamps_at_127(bits):
    """max|X| in [2^127, 2^128) gives e = 127 with no clamping needed; the float32 max rounds to
    2^(b−1) and saturates at 2^(b−1)−1 on both sides (−2^(b−1)·2^(129−b) = −2^128 overflows float32,
    so at e = 127 the low end is −(2^(b−1)−1)); float64 inputs beyond 2^128 clamp e and saturate."""
    top = 2 ** (bits - 1) - 1
    step = 2.0 ** (129 - bits)
    x = torch.tensor([1.75 * 2.0**127, -(2.0**127), F32_MAX, -F32_MAX, 1.0], dtype=torch.float32)
    got = bfp_quantize(x, bits, "tensor")
    assert got.tolist() == [1.75 * 2.0**127, -(2.0**127), top * step, -top * step, 0.0]
    assert torch.isfinite(got).all()
    assert bfp_encode(x, bits, "element")[1].tolist() == [127, 127, 127, 127, 0]
    huge = torch.tensor([2.0**200, -(2.0**200), 2.0**127], dtype=torch.float64)
    assert bfp_quantize(huge, bits, "tensor").tolist() == [top * step, -top * step, 2.0**127]
    assert bfp_encode(huge, bits, "tensor")[1].tolist() == [127]


def test_all_zero_block_is_zeros_with_exponent_minus_128():
    x = torch.zeros(3, 2, 2, 2)
    x[1] = torch.randn(2, 2, 2)
    x[2, 0, 0, 0] = -0.0
    for block in BLOCKS:
        _, exps = bfp_encode(x, 6, block)
        q = bfp_quantize(x, 6, block)
        assert same_bits(q[0], torch.zeros(2, 2, 2)) and same_bits(q[2], torch.zeros(2, 2, 2))
        if block in ("row", "kernel"):
            per_row = exps.reshape(3, -1)
            assert (per_row[0] == -128).all() and (per_row[2] == -128).all()


# ----------------------------------------------------------------------------------- the codec
CODEC_SHAPES = [(0,), (5,), (3, 7), (2, 3, 5), (3, 2, 3, 3), (2, 5, 1, 1)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 16])
@pytest.mark.parametrize("block", BLOCKS)
def test_encode_decode_is_exact(block, bits):
    for k, shape in enumerate(CODEC_SHAPES):
        x = hard_tensor(shape, bits, seed=k) if math.prod(shape) else torch.zeros(shape)
        for stochastic in (False, True):
            mantissas, exps = bfp_encode(
                x, bits, block, stochastic, torch.Generator().manual_seed(k)
            )
            assert mantissas.dtype == np.uint8 and exps.dtype == np.int8
            count = math.prod(shape)
            assert mantissas.size == packed_length(count, bits) == (count * bits + 7) // 8
            assert mantissas.size + exps.size == bfp_nbytes(shape, bits, block)
            decoded = bfp_decode(mantissas, exps, shape, bits, block)
            q = bfp_quantize(x, bits, block, stochastic, torch.Generator().manual_seed(k))
            assert same_bits(decoded, q), (shape, stochastic)


def test_mantissas_are_offset_binary_packed_msb_first():
    """b = 4, max 1 -> e = 0, step 1/4: i = 4, −4, 2 -> codes 12, 4, 10 = 1100 0100 1010 (0000)."""
    mantissas, exps = bfp_encode(torch.tensor([1.0, -1.0, 0.5]), 4, "tensor")
    assert mantissas.tolist() == [0xC4, 0xA0] and exps.tolist() == [0]
    # b = 12 (split into 6-bit chunks internally): max 2 -> e = 1, i = 512, −1024
    # -> codes 2560, 1024 = 1010 0000 0000 0100 0000 0000
    mantissas, _ = bfp_encode(torch.tensor([1.0, -2.0]), 12, "tensor")
    assert mantissas.tolist() == [0xA0, 0x04, 0x00]
    # b = 9, three codes = 27 bits -> 4 bytes; i = 128, −128, 64 -> 384, 128, 320
    mantissas, _ = bfp_encode(torch.tensor([1.0, -1.0, 0.5]), 9, "tensor")
    stream = "".join(format(c, "09b") for c in (384, 128, 320)).ljust(32, "0")
    assert mantissas.tolist() == [int(stream[i : i + 8], 2) for i in range(0, 32, 8)]


def test_nbytes_on_lenet_shapes():
    """A Linear weight under "kernel" is one exponent per element, as in the authors' code."""
    assert bfp_nbytes((384, 1600), 8, "kernel") == 384 * 1600 * 2
    assert bfp_nbytes((384, 1600), 6, "kernel") == 384 * 1600 * 7 // 4
    assert bfp_nbytes((64, 3, 5, 5), 8, "kernel") == 64 * 3 * 25 + 64 * 3
    assert bfp_nbytes((64, 3, 5, 5), 6, "row") == 64 * 3 * 25 * 6 // 8 + 64
    assert bfp_nbytes((10, 192), 6, "tensor") == 10 * 192 * 6 // 8 + 1
    assert bfp_nbytes((7,), 5, "kernel") == 5 + 1 and bfp_nbytes((7,), 5, "row") == 5 + 1
    assert bfp_nbytes((7,), 5, "element") == 5 + 7
    assert block_layout((4, 3, 5), "kernel") == (12, 5) and block_layout((), "row") == (1, 1)


def test_decode_rejects_bad_streams():
    x = torch.randn(4, 3, 3, 3)
    mantissas, exps = bfp_encode(x, 6, "kernel")
    with pytest.raises(ValueError, match="bytes but shape"):
        bfp_decode(mantissas[:-1], exps, x.shape, 6, "kernel")
    with pytest.raises(ValueError, match="bytes but shape"):
        bfp_decode(np.append(mantissas, np.uint8(0)), exps, x.shape, 6, "kernel")
    with pytest.raises(ValueError, match="exponents but shape"):
        bfp_decode(mantissas, exps[:-1], x.shape, 6, "kernel")
    with pytest.raises(ValueError, match="exponents but shape"):
        bfp_decode(mantissas, exps, x.shape, 6, "row")
    wide = exps.astype(np.int16)
    for bad in (128, -129):
        wide[3] = bad
        with pytest.raises(ValueError, match=r"exponents must lie in \[-128, 127\]"):
            bfp_decode(mantissas, wide, x.shape, 6, "kernel")
    padded, _ = bfp_encode(torch.ones(3), 6, "tensor")  # 18 bits in 3 bytes: 6 padding bits
    padded[-1] |= 1
    with pytest.raises(ValueError, match="padding"):
        bfp_decode(padded, np.array([0], np.int8), (3,), 6, "tensor")
    with pytest.raises(ValueError, match="2\\^128"):
        bfp_decode(np.array([0], np.uint8), np.array([127], np.int8), (1,), 8, "tensor")
    with pytest.raises(TypeError):
        bfp_decode(mantissas.astype(np.int16), exps, x.shape, 6, "kernel")
    with pytest.raises(TypeError):
        bfp_decode(mantissas, exps.astype(np.float32), x.shape, 6, "kernel")


# -------------------------------------------------------------------- activations and errors
@pytest.mark.parametrize("stochastic", [False, True])
def test_act_err_quantizes_forward_and_backward_per_tensor(stochastic):
    x = (torch.randn(8, 5, 4, 4) * 3).requires_grad_()
    grad = torch.randn(8, 5, 4, 4) * 1e-3
    gen = torch.Generator().manual_seed(11)
    y = BFPActErr.apply(x, 6, 5, stochastic, gen)
    state = gen.get_state()
    y.backward(grad)
    check = torch.Generator().manual_seed(11)
    assert same_bits(y.detach(), bfp_quantize(x.detach(), 6, "tensor", stochastic, check))
    check.set_state(state)
    assert same_bits(x.grad, bfp_quantize(grad, 5, "tensor", stochastic, check))
    assert on_grid(y.detach(), 6, "tensor") and on_grid(x.grad, 5, "tensor")


def test_bfp_quant_module_in_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), BFPQuant(8, 8, stochastic=False))
    x = torch.randn(3, 6, requires_grad=True)
    out = net(x)
    assert same_bits(out.detach(), bfp_quantize(net[0](x).detach(), 8, "tensor"))
    out.square().sum().backward()
    err = bfp_quantize(2 * out.detach(), 8, "tensor")
    assert torch.allclose(x.grad, err @ net[0].weight.detach())
    passthrough = BFPQuant(None, None)
    z = torch.randn(5, requires_grad=True)
    passthrough(z).sum().backward()
    assert torch.equal(z.grad, torch.ones(5))
    assert "bits_act=8" in repr(net)


# ------------------------------------------------------------------------------------ on_grid
@pytest.mark.parametrize("bits", [2, 4, 6, 8, 12])
@pytest.mark.parametrize("block", BLOCKS)
def test_on_grid_after_quantize_and_not_before(block, bits):
    for k, shape in enumerate([(13,), (7, 9), (6, 3, 3, 3)]):
        x = hard_tensor(shape, bits, seed=k)
        for stochastic in (False, True):
            q = bfp_quantize(x, bits, block, stochastic, torch.Generator().manual_seed(k))
            assert on_grid(q, bits, block)
        generic = torch.randn(shape, generator=torch.Generator().manual_seed(k)) * 0.1
        assert not on_grid(generic, bits, block)
        stepped = q - 1e-3 * torch.randn(shape, generator=torch.Generator().manual_seed(k))
        assert not on_grid(stepped, bits, block)


def test_on_grid_is_representability_not_idempotence():
    """b = 4: −1.95 rounds to i = −8, i.e. −2 = −2^(e+1), so Q([−1.95, 0.3]) = [−2, 0.25] has max 2
    and a second Q uses e = 1, step 1/2, sending 0.25 to 0. Q is not idempotent there, yet the
    result is representable (e = 0), which is what "the weights lie on the grid" means."""
    q = bfp_quantize(torch.tensor([-1.95, 0.3]), 4, "tensor")
    assert q.tolist() == [-2.0, 0.25]
    assert bfp_quantize(q, 4, "tensor").tolist() == [-2.0, 0.0]
    assert on_grid(q, 4, "tensor")
    assert not on_grid(torch.tensor([2.0, 0.25]), 4, "tensor")  # +2 needs e = 1: 0.25 is off it
    assert on_grid(torch.zeros(3, 4), 4, "row") and on_grid(torch.zeros(0), 4, "tensor")
    assert not on_grid(torch.tensor([1.0, float("nan")]), 8, "tensor")
    assert on_grid(torch.tensor([F32_MAX]), 16, "tensor") is False  # needs 24 significant bits
    assert on_grid(torch.tensor([2.0**-149]), 2, "tensor") is False  # finer than e = −128 allows


# --------------------------------------------------------------------------------- validation
def test_bad_input_raises_naming_the_problem():
    x = torch.randn(4, 4)
    for bits in (1, 17, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"2\.\.16"):
            bfp_quantize(x, bits, "tensor")
    with pytest.raises(ValueError, match=r"2\.\.16"):
        BFPQuant(1, 8)
    with pytest.raises(ValueError, match="unknown block 'channel'"):
        bfp_quantize(x, 8, "channel")
    with pytest.raises(ValueError, match="unknown block"):
        bfp_nbytes((4, 4), 8, "Kernel")
    bad = x.clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("nan"), float("-inf")
    for fn in (bfp_quantize, bfp_encode):
        for block in BLOCKS:
            with pytest.raises(ValueError, match="2 NaN and 1 inf"):
                fn(bad, 8, block)
    with pytest.raises(ValueError, match="1 NaN and 0 inf"):
        BFPActErr.apply(torch.tensor([1.0, float("nan")]), 8, 8)
    with pytest.raises(TypeError):
        bfp_quantize(torch.arange(4), 8, "tensor")
    with pytest.raises(TypeError):
        bfp_quantize(np.ones(4), 8, "tensor")
    with pytest.raises(ValueError, match="non-negative"):
        bfp_nbytes((4, -1), 8, "tensor")
