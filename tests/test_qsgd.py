"""QSGD (Alistarh et al. 2017, arXiv:1610.02132) and the min–max scalar quantizer of QAFeL's FLSim
experiments (Ortega & Jafarkhani, arXiv:2410.00242): moments, wire round trips, byte counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver

from fp8fl.numerics.codec import packed_length
from fp8fl.numerics.qsgd import (
    QSGD_NORM_THRESHOLD,
    anchored_minmax_decode,
    anchored_minmax_encode,
    anchored_minmax_nbytes,
    anchored_minmax_quantize,
    minmax_decode,
    minmax_encode,
    minmax_nbytes,
    minmax_qparams,
    minmax_quantize,
    qsgd_code_bits,
    qsgd_decode,
    qsgd_encode,
    qsgd_levels,
    qsgd_nbytes,
    qsgd_norm_count,
    qsgd_quantize,
)

K_SIGMA = 5.0  # two-sided 5σ: a false failure has probability ~6e-7 per checked statistic


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exact_moments(v: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Per-element std of Q(v), and mean / variance of ‖Q(v) − v‖², from the Bernoulli law of ℓ."""
    flat = v.double().reshape(-1)
    norm = float(np.float32(flat.norm().item()))
    c = norm / levels  # one level step
    frac = flat.abs() * (levels / norm) - (flat.abs() * (levels / norm)).floor()
    var = c**2 * frac * (1 - frac)  # per element: error is −f·c w.p. 1−f and (1−f)·c w.p. f
    sq_lo, sq_hi = (frac * c) ** 2, ((1 - frac) * c) ** 2
    var_sq = (1 - frac) * sq_lo**2 + frac * sq_hi**2 - var**2  # Var of each squared error
    return var.sqrt(), flat, float(var.sum()), float(var_sq.sum())


@pytest.mark.parametrize("levels", [1, 7, 127])
def test_qsgd_unbiased_and_variance_within_lemma_3_1(levels: int) -> None:
    torch.manual_seed(0)
    v = torch.randn(8, 16) * torch.rand(8, 16)  # d = 128, mixed magnitudes
    n = 2500
    gen = _gen(1)
    samples = torch.stack([qsgd_quantize(v, levels, gen).double().reshape(-1) for _ in range(n)])
    std, flat, mse, var_sq = _exact_moments(v, levels)
    # unbiased: each coordinate's sample mean within 5σ/√n of v_i (σ_i from the Bernoulli law);
    # 1e-6·|v| covers the float32 rounding of each reconstructed value
    err = (samples.mean(0) - flat).abs()
    assert (err <= K_SIGMA * std / math.sqrt(n) + 1e-6 * flat.abs() + 1e-12).all()
    # E‖Q(v) − v‖² = Σ c² f(1−f) exactly; the sample mean of ‖Q − v‖² is within 5σ of it
    emp = float(((samples - flat) ** 2).sum(1).mean())
    assert abs(emp - mse) <= K_SIGMA * math.sqrt(var_sq / n) + 1e-6 * mse
    # and the exact value obeys Lemma 3.1: E‖Q(v) − v‖² ≤ min(d/s², √d/s)·‖v‖²
    d, norm_sq = flat.numel(), float(flat.norm() ** 2)
    assert mse <= min(d / levels**2, math.sqrt(d) / levels) * norm_sq
    assert emp <= min(d / levels**2, math.sqrt(d) / levels) * norm_sq * 1.05


def test_qsgd_values_on_the_grid_and_shape_kept() -> None:
    v = torch.randn(3, 4, 5)
    q = qsgd_quantize(v, 7, _gen(0))
    assert q.shape == v.shape and q.dtype == torch.float32
    norm = float(np.float32(v.double().norm().item()))
    ell = q.double().abs() * 7 / norm
    assert torch.allclose(ell, ell.round(), atol=1e-5)
    assert (ell.round() <= 7).all()
    assert ((q == 0) | (q.sign() == v.sign())).all()


def test_qsgd_tiny_norm_is_zero_and_generator_advances_the_same() -> None:
    tiny = torch.full((10,), QSGD_NORM_THRESHOLD / 10)
    g1, g2 = _gen(3), _gen(3)
    assert torch.equal(qsgd_quantize(tiny, 7, g1), torch.zeros(10))
    qsgd_quantize(torch.randn(10), 7, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    codes, norms = qsgd_encode(tiny, 7, _gen(0))
    assert norms.tolist() == [0.0] and not codes.any()
    assert torch.equal(qsgd_decode(codes, norms, 10, 7), torch.zeros(10))


def test_qsgd_bits_to_levels_mapping() -> None:
    assert [qsgd_levels(b) for b in (2, 4, 8)] == [1, 7, 127]
    assert [qsgd_code_bits(s) for s in (1, 7, 127, 8)] == [2, 4, 8, 5]
    with pytest.raises(ValueError):
        qsgd_levels(9)
    with pytest.raises(ValueError):
        qsgd_encode(torch.randn(4), 128, _gen(0))  # 9-bit codes do not fit pack_codes


@pytest.mark.parametrize("levels", [1, 3, 5, 7, 15, 127])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (4, 3, 3, 2)])
def test_qsgd_encode_decode_exact_and_nbytes(levels: int, shape: tuple[int, ...]) -> None:
    v = torch.randn(shape) * 3
    count = math.prod(shape)
    for bucket in (None, 1, 4, 512):
        codes, norms = qsgd_encode(v, levels, _gen(7), bucket)
        assert norms.dtype == np.float32 and codes.dtype == np.uint8
        assert norms.shape == (qsgd_norm_count(count, bucket),)
        assert codes.nbytes + norms.nbytes == qsgd_nbytes(count, levels, bucket)
        assert codes.nbytes == packed_length(count, qsgd_code_bits(levels))
        decoded = qsgd_decode(codes, norms, count, levels, bucket).view(shape)
        expected = qsgd_quantize(v, levels, _gen(7), bucket)
        assert torch.equal(decoded.view(torch.int32), expected.view(torch.int32))  # bit for bit


def test_qsgd_norm_counts() -> None:
    assert [qsgd_norm_count(n) for n in (0, 1, 10_000)] == [1, 1, 1]
    assert [qsgd_norm_count(n, 512) for n in (0, 1, 512, 513, 614_400)] == [0, 1, 1, 2, 1200]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="bucket"):
            qsgd_norm_count(10, bad)


@pytest.mark.parametrize("levels", [7, 127])
def test_bucketed_qsgd_is_unbiased_and_its_variance_obeys_the_bucket_bound(levels: int) -> None:
    """Each bucket is QSGD of its own: unbiased, and E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖² with the
    bucket's n, far below the whole tensor's bound."""
    torch.manual_seed(1)
    bucket, d = 16, 200  # 12 full buckets and one of 8
    v = torch.randn(d) * torch.rand(d) * 4
    n = 2000
    gen = _gen(2)
    samples = torch.stack([qsgd_quantize(v, levels, gen, bucket).double() for _ in range(n)])
    flat = v.double()
    pieces = [_exact_moments(flat[i : i + bucket], levels) for i in range(0, d, bucket)]
    std = torch.cat([p[0] for p in pieces])
    mse, var_sq = sum(p[2] for p in pieces), sum(p[3] for p in pieces)
    # unbiased per coordinate within 5σ/√n (σ from each bucket's Bernoulli law), as above
    assert (
        (samples.mean(0) - flat).abs() <= K_SIGMA * std / math.sqrt(n) + 1e-6 * flat.abs()
    ).all()
    emp = float(((samples - flat) ** 2).sum(1).mean())
    assert abs(emp - mse) <= K_SIGMA * math.sqrt(var_sq / n) + 1e-6 * mse
    bucket_bound = sum(
        min(len(b) / levels**2, math.sqrt(len(b)) / levels) * float(b.norm() ** 2)
        for b in flat.split(bucket)
    )
    assert mse <= bucket_bound
    # the whole tensor's exact error is larger: one norm for all makes each step coarser
    assert mse < _exact_moments(flat, levels)[2]


def test_bucketed_qsgd_keeps_a_tiny_bucket_at_zero_and_the_rest_unchanged() -> None:
    v = torch.cat([torch.full((4,), QSGD_NORM_THRESHOLD / 10), torch.randn(4)])
    codes, norms = qsgd_encode(v, 7, _gen(5), 4)
    assert norms[0] == 0 and norms[1] == np.float32(v[4:].double().norm().item())
    q = qsgd_decode(codes, norms, 8, 7, 4)
    assert torch.equal(q[:4], torch.zeros(4))
    assert torch.equal(q[4:], qsgd_quantize(v, 7, _gen(5), 4)[4:])


def test_qsgd_decode_rejects_corrupt_streams() -> None:
    codes, norm = qsgd_encode(torch.randn(6), 5, _gen(0))  # 4-bit codes, ℓ ≤ 5
    bad = codes.copy()
    bad[0] = 0x77  # ℓ = 7 > 5
    with pytest.raises(ValueError, match="level above"):
        qsgd_decode(bad, norm, 6, 5)
    bad[0] = 0x80  # sign bit with ℓ = 0
    with pytest.raises(ValueError, match="negative zero"):
        qsgd_decode(bad, norm, 6, 5)
    with pytest.raises(ValueError):
        qsgd_decode(codes[:-1], norm, 6, 5)
    with pytest.raises(ValueError, match="2 norms, 1 expected"):
        qsgd_decode(codes, np.array([1.0, 1.0], np.float32), 6, 5)
    with pytest.raises(ValueError, match="finite and non-negative"):
        qsgd_decode(codes, np.array([-1.0], np.float32), 6, 5)
    with pytest.raises(ValueError):
        qsgd_quantize(torch.tensor([1.0, float("nan")]), 7, _gen(0))


def _flsim_channel(v: torch.Tensor, bits: int) -> torch.Tensor:
    """FLSim's ScalarQuantizationChannel._quantize + dequantize (per tensor, affine), written out
    with torch's own observer and quantizer: the reference the min–max grid must match."""
    observer = MinMaxObserver(
        dtype=torch.qint8,
        qscheme=torch.per_tensor_affine,
        quant_min=-(2 ** (bits - 1)),
        quant_max=2 ** (bits - 1) - 1,
        reduce_range=False,
    )
    observer.reset_min_max_vals()
    observer(v)
    scale, zero_point = observer.calculate_qparams()
    return torch.quantize_per_tensor(v, float(scale), int(zero_point), dtype=torch.qint8)


def _battery(shape: tuple[int, ...], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Tensors of many kinds: Gaussian, heavy-tailed, sparse, one-signed, constant, tiny, huge."""
    g = torch.randn(shape, generator=gen)
    student = torch.distributions.StudentT(2.0).sample(shape)
    return {
        "gaussian": 0.02 * g + 0.003,
        "student-t(2)": 0.01 * student,
        "sparse": torch.where(torch.rand(shape, generator=gen) < 0.7, 0.0, g),
        "positive": g.abs() + 0.5,
        "negative": -g.abs() - 1e-3,
        "constant": torch.full(shape, -1.25),
        "constant positive": torch.full(shape, 3.0),
        "zeros": torch.zeros(shape),
        "tiny range": 1e-9 * g,  # scale clamped at float32 eps
        "huge": 1e30 * g,
        "uint-like": torch.randint(-9, 9, shape, generator=gen).float(),  # ties at half steps
    }


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(2, 1), (4, 6), (3, 3, 5), (16, 33), (8, 3, 5, 5)])
def test_minmax_is_flsim_scalar_quantization_bit_for_bit(bits: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(100 * bits + len(shape))
    quant_min, quant_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for kind, v in _battery(shape, _gen(bits)).items():
        reference = _flsim_channel(v, bits)
        codes = reference.int_repr()
        assert quant_min <= codes.min() and codes.max() <= quant_max, kind  # no end-of-range tie
        q = minmax_quantize(v, bits)
        assert torch.equal(q.view(torch.int32), reference.dequantize().view(torch.int32)), kind
        scale, zero_point = minmax_qparams(v, bits)
        assert (scale, zero_point) == (reference.q_scale(), reference.q_zero_point()), kind
        stream, sent_scale, sent_zero = minmax_encode(v, bits)
        assert stream.nbytes + 5 == minmax_nbytes(v.shape, bits), kind
        assert minmax_nbytes(v.shape, bits) == packed_length(v.numel(), bits) + 4 + 1
        decoded = minmax_decode(stream, sent_scale, sent_zero, v.shape, bits)
        assert torch.equal(decoded.view(torch.int32), q.view(torch.int32)), kind
        assert (decoded[v == 0] == 0).all(), kind  # the range includes 0 on the grid


def test_minmax_keeps_every_exact_zero_where_the_anchored_grid_loses_them() -> None:
    v = torch.randn(64, 52, generator=_gen(3))
    v[torch.rand(v.shape, generator=_gen(4)) < 0.7] = 0.0
    zeros = v == 0
    for bits in (2, 4, 8):
        assert (minmax_quantize(v, bits)[zeros] == 0).all()
        assert (anchored_minmax_quantize(v, bits)[zeros] == 0).sum() < zeros.sum()


def test_minmax_clamps_an_end_of_range_tie_that_torch_leaves_outside_the_n_bit_range() -> None:
    """scale = 1, zero point = −8 − round(−1.5) = −6; torch rounds 13.5 to 14 → code 8, which 4 bits
    cannot carry: it is clamped to 7 (the one documented deviation from torch's path)."""
    v = torch.tensor([[-1.5, 13.5]])
    assert _flsim_channel(v, 4).int_repr().tolist() == [[-8, 8]]
    assert minmax_qparams(v, 4) == (1.0, -6)
    assert minmax_quantize(v, 4).tolist() == [[-2.0, 13.0]]
    stream, scale, zero_point = minmax_encode(v, 4)
    assert minmax_decode(stream, scale, zero_point, v.shape, 4).tolist() == [[-2.0, 13.0]]


@pytest.mark.parametrize(
    "grid",
    [
        (minmax_quantize, minmax_encode, minmax_decode, minmax_nbytes),
        (
            anchored_minmax_quantize,
            anchored_minmax_encode,
            anchored_minmax_decode,
            anchored_minmax_nbytes,
        ),
    ],
)
def test_both_minmax_grids_keep_low_rank_tensors_fp32(grid) -> None:
    quantize, encode, decode, nbytes = grid
    for v in (torch.randn(17), torch.tensor(3.25), torch.zeros(0)):
        assert torch.equal(quantize(v, 4), v)
        codes, first, second = encode(v, 4)
        assert codes.nbytes == nbytes(v.shape, 4) == 4 * v.numel()
        assert torch.equal(decode(codes, first, second, v.shape, 4), v)


def test_minmax_rejects_bad_side_information() -> None:
    codes, scale, zero_point = minmax_encode(torch.randn(4, 4), 4)
    for bad_scale, bad_zero, match in ((0.0, 0, "scale"), (np.inf, 0, "scale"), (1.0, 8, "zero")):
        with pytest.raises(ValueError, match=match):
            minmax_decode(codes, bad_scale, bad_zero, (4, 4), 4)
    with pytest.raises(ValueError, match="bytes"):
        minmax_decode(codes[:-1], scale, zero_point, (4, 4), 4)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(4, 6), (3, 3, 5), (2, 1), (16, 33)])
def test_anchored_minmax_round_trip_and_error_bound(bits: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(bits)
    v = torch.randn(shape) * 2 + 0.5
    q = anchored_minmax_quantize(v, bits)
    codes, lo, hi = anchored_minmax_encode(v, bits)
    assert codes.nbytes == anchored_minmax_nbytes(v.shape, bits) - 8
    assert anchored_minmax_nbytes(v.shape, bits) == packed_length(v.numel(), bits) + 8
    assert lo == v.min().item() and hi == v.max().item()
    decoded = anchored_minmax_decode(codes, lo, hi, v.shape, bits)
    assert torch.equal(decoded.view(torch.int32), q.view(torch.int32))
    # round to nearest: |q − v| ≤ (max − min)/(2(2ⁿ − 1)) exactly, plus one float32 rounding
    # of the reconstruction (half an ulp of |q| ≤ max|v|, bounded by 2⁻²⁴·max|v|)
    bound = (hi - lo) / (2 * (2**bits - 1)) + 2.0**-24 * float(v.abs().max())
    assert float((q.double() - v.double()).abs().max()) <= bound
    assert q.min() >= lo and q.max() <= hi


def test_anchored_minmax_handles_constants() -> None:
    const = torch.full((3, 4), -1.5)
    assert torch.equal(anchored_minmax_quantize(const, 2), const)
    codes, lo, hi = anchored_minmax_encode(const, 2)
    assert torch.equal(anchored_minmax_decode(codes, lo, hi, const.shape, 2), const)


def test_anchored_minmax_is_deterministic_and_hits_the_endpoints() -> None:
    v = torch.randn(8, 8)
    q1, q2 = anchored_minmax_quantize(v, 3), anchored_minmax_quantize(v, 3)
    assert torch.equal(q1, q2)
    assert q1.min() == v.min() and q1.max() == v.max()
    assert q1.unique().numel() <= 8


def test_bucketed_qsgd_keeps_a_hidden_state_close_where_per_tensor_qsgd_runs_away() -> None:
    """QAFeL's error e = x − x̂ follows e ← v − Q(v), v = e + update, so E‖e‖² grows without bound
    when the relative variance ω ≥ 1 and settles at ω/(1 − ω)·‖update‖² when ω < 1. On a
    614,400-element tensor (LeNet's fc1) 8-bit per-tensor QSGD has ω up to √d/s ≈ 6.2; with buckets
    of 512, ω ≤ √512/127 ≈ 0.18, so ‖e‖/‖update‖ stays near √(ω/(1 − ω)) ≤ 0.47."""
    d, levels, gen = 614_400, qsgd_levels(8), _gen(0)
    ratios = {}
    for bucket in (None, 512):
        e = torch.zeros(d)
        for _ in range(30):
            update = 0.01 * torch.randn(d, generator=gen)
            e = (e + update) - qsgd_quantize(e + update, levels, gen, bucket)
        ratios[bucket] = float(e.norm() / update.norm())
    assert ratios[512] < 0.47
    assert ratios[None] > 100  # measured 905 (experiments/results/PEERS.md)
