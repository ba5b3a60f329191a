"""The symmetric clipped grid (issue 34; Bozorgasl & Chen, arXiv:2405.13365) beside the two's-complement
one: levels, odd symmetry, the nearest level by brute force, unbiased stochastic rounding on all
of [−s, s], OCTAV's noise term and the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fp8fl.numerics.codec import pack_codes, packed_length
from fp8fl.numerics.uniform import (
    decode_uniform,
    dequantize_uniform,
    encode_uniform,
    octav_clip,
    quantize_uniform,
    uniform_code_range,
    uniform_step,
)

ALL_BITS = [2, 3, 4, 5, 6, 7, 8]
SYM, TWOS = "symmetric", "twos-complement"
K_SIGMA = 5.0  # two-sided 5σ (CLT): a false failure has probability ~6e-7 per checked mean


def _top(bits: int) -> int:
    return 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", ALL_BITS)
def test_the_symmetric_grid_has_2_to_the_b_minus_1_levels_from_minus_s_to_s(bits):
    s = 0.7  # not a power of two: the step s/(2^(B−1) − 1) is no exact scaling
    assert uniform_code_range(bits, SYM) == (-_top(bits), _top(bits))
    assert uniform_code_range(bits, TWOS) == (-_top(bits) - 1, _top(bits))
    codes = torch.arange(-_top(bits), _top(bits) + 1, dtype=torch.int16)
    values = dequantize_uniform(codes, s, bits, SYM)
    assert torch.unique(values).numel() == 2**bits - 1
    assert float(values.max()) == float(np.float32(s)) and torch.equal(values, -values.flip(0))
    assert uniform_step(s, bits, SYM) == s / _top(bits)
    assert uniform_step(s, bits, TWOS) == s * 2.0 ** (1 - bits)
    steps = values.double().diff()
    assert float((steps - s / _top(bits)).abs().max()) <= 2**-23 * s  # float32 roundings only


def nearest_by_brute_force(x: torch.Tensor, s: float, bits: int) -> np.ndarray:
    """The code of the nearest of the 2^B − 1 levels c·s/k (k = 2^(B−1) − 1), ties to the even
    code: it compares |x·k − c·s|, exact in float64 near the nearest levels (float32 x and s)."""
    codes = np.arange(-_top(bits), _top(bits) + 1)
    distance = np.abs(x.double().numpy()[:, None] * _top(bits) - codes[None, :] * s)
    nearest = distance == distance.min(axis=1, keepdims=True)
    rank = np.where(nearest, np.where(codes % 2 == 0, 0, 1), 2)
    return codes[np.argmin(rank, axis=1)]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_nearest_rounding_is_the_nearest_level_and_odd(bits):
    s = float(np.float32(0.7))
    gen = torch.Generator().manual_seed(bits)
    j = torch.arange(-_top(bits) - 2, _top(bits) + 2, dtype=torch.float64)
    x = torch.cat(
        [
            (torch.rand(20_000, generator=gen, dtype=torch.float64) * 3 - 1.5) * s,
            (j + 0.5) * s / _top(bits),  # near-ties (float32 rounds them off the midpoint)
            torch.tensor([-s, s, -s - 1e-3, s + 1e-3, 0.0], dtype=torch.float64),
        ]
    ).float()
    codes, values = quantize_uniform(x, s, bits, stochastic=False, grid=SYM)
    assert np.array_equal(codes.numpy(), nearest_by_brute_force(x, s, bits))
    minus_codes, minus_values = quantize_uniform(-x, s, bits, stochastic=False, grid=SYM)
    assert torch.equal(minus_codes, -codes) and torch.equal(minus_values, -values)  # Q(−x) = −Q(x)
    exact_ties = torch.tensor([0.5, 1.5, -0.5, -2.5]) * 3.0  # s = 3·(2^(B−1) − 1): Δ = 3
    tie_codes = quantize_uniform(exact_ties, 3.0 * _top(bits), bits, False, grid=SYM)[0]
    expected = [max(-_top(bits), min(_top(bits), c)) for c in (0, 2, 0, -2)]  # to even, clamped
    assert tie_codes.tolist() == expected
    twos_codes = quantize_uniform(-x, s, bits, stochastic=False, grid=TWOS)[0]
    plus_codes = quantize_uniform(x, s, bits, stochastic=False, grid=TWOS)[0]
    assert not torch.equal(twos_codes, -plus_codes)  # the old grid is not odd: +s is missing


@pytest.mark.parametrize("bits", [2, 4])
def test_stochastic_rounding_is_unbiased_on_all_of_the_clip(bits):
    """Each point x is rounded n times; its error is (1 − p)·Δ w.p. p and −p·Δ otherwise
    (p = frac(x/Δ)), so the mean error has mean 0 and sd √(p(1 − p))·Δ/√n ≤ (Δ/2)/√n: the
    tolerance is K_SIGMA of that. The two's-complement grid has no +s, so above its top level
    s − Δ' every value is at most s − Δ' and the bias is at least x − (s − Δ'), beyond the
    tolerance at the points used."""
    s, n = 1.0, 200_000
    delta = uniform_step(s, bits, SYM)
    points = [-s, -s + 0.3 * delta, -0.37 * s, 0.0, 0.21 * s, s - 0.6 * delta, s - 0.25 * delta, s]
    gen = torch.Generator().manual_seed(34)
    tolerance = K_SIGMA * (delta / 2) / math.sqrt(n)
    for x0 in points:
        x = torch.full((n,), x0, dtype=torch.float32)
        values = quantize_uniform(x, s, bits, stochastic=True, generator=gen, grid=SYM)[1]
        assert abs(float(values.double().mean()) - float(x[0])) <= tolerance, x0
        top_old = s - uniform_step(s, bits, TWOS)  # the old grid's top level
        if x0 > top_old:
            old = quantize_uniform(x, s, bits, stochastic=True, generator=gen, grid=TWOS)[1]
            assert float(old.max()) == top_old  # +s is missing: every value is <= s − Δ
            assert float(old.double().mean()) - x0 <= top_old - x0 < -tolerance, x0


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_octav_noise_follows_the_grids_step(bits):
    """The fixed point satisfies s = E[|w|·1{|w|>s}] / (c·P(|w|≤s) + P(|w|>s)) with c·s² = Δ²/12
    for each grid's own step Δ."""
    w = torch.randn(100_000, generator=torch.Generator().manual_seed(bits))
    a = w.double().abs()
    clips = {}
    for grid in (SYM, TWOS):
        s = octav_clip(w, bits, tol=1e-12, max_iter=200, grid=grid)
        c = (uniform_step(s, bits, grid) / s) ** 2 / 12
        above = a > s
        update = float(a[above].sum()) / (c * float((~above).sum()) + float(above.sum()))
        assert update == pytest.approx(s, rel=1e-10)
        clips[grid] = s
    # Δ/s is larger on the symmetric grid (1/(2^(B−1) − 1) against 2^(1−B)): the rounding noise
    # grows faster with s, so the best clip is smaller
    assert clips[SYM] < clips[TWOS]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_the_wire_carries_b_bits_and_refuses_the_unused_code(bits):
    x = torch.randn(1001, generator=torch.Generator().manual_seed(bits))
    codes, values = quantize_uniform(x, 1.5, bits, True, torch.Generator().manual_seed(1), SYM)
    stream = encode_uniform(codes, bits, SYM)
    assert stream.nbytes == packed_length(1001, bits) == math.ceil(1001 * bits / 8)
    decoded = decode_uniform(stream, 1001, bits, SYM)
    assert np.array_equal(decoded, codes.numpy())
    assert torch.equal(dequantize_uniform(torch.from_numpy(decoded), 1.5, bits, SYM), values)
    bottom = np.array([-_top(bits) - 1], dtype=np.int16)  # the two's-complement bottom code
    with pytest.raises(ValueError, match="symmetric grid"):
        encode_uniform(bottom, bits, SYM)
    zero_field = pack_codes(np.zeros(3, dtype=np.uint8), bits)  # offset 0 = code −2^(B−1)
    with pytest.raises(ValueError, match="below"):
        decode_uniform(zero_field, 3, bits, SYM)
    assert decode_uniform(zero_field, 3, bits, TWOS).tolist() == [-_top(bits) - 1] * 3
    with pytest.raises(ValueError, match="grid must be one of"):
        quantize_uniform(x, 1.5, bits, False, grid="midtread")
