"""quantize / fake_quant against the mathematics: brute force, exact rationals, statistics, FD."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fp8fl.numerics.formats import E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FloatFormat
from fp8fl.numerics.gridtables import grid_tables
from fp8fl.numerics.kernels import draw_key, round_to_grid, uniform_stream
from fp8fl.numerics.quant import fake_quant, quantize
from tests.numerics_reference import brute_force_nearest, hard_inputs

NAMED = [E4M3, E5M2, E3M4, E2M3, E3M2, E2M1]
ALPHAS = [1.0, 0.1, 480.0, 3.75e-3, 7.0, 12345.678]  # 480 = 15·32 makes every midpoint a float32


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("fmt", "alpha"),
    [
        (f, a)
        for f in [*NAMED, FloatFormat(1, 6), FloatFormat(7, 0)]
        for a in ALPHAS
        if a >= f.min_alpha()
    ],  # e7m0's finest step underflows float32 below alpha = 1
    ids=str,
)
def test_nearest_equals_brute_force_search(fmt, alpha):
    alpha32 = float(np.float32(alpha))
    x = hard_inputs(fmt, alpha32, random_count=50_000, seed=hash((fmt, alpha)) % 2**32)
    assert x.numel() >= 100_000
    expected = brute_force_nearest(x, fmt, alpha32)
    got = quantize(x, alpha, fmt)
    mismatches = (got != expected).sum().item()
    assert mismatches == 0, f"{mismatches} of {x.numel()} differ from the brute-force nearest"


def test_ties_round_half_to_even():
    # alpha = 480 is the float8_e4m3fn scale: grid 2^-9 ... 448, 480; 17 lies between 16 and 18
    assert quantize(torch.tensor([17.0, 19.0, -17.0, 0.5 * 2**-9]), 480.0).tolist() == [
        16.0,
        20.0,
        -16.0,
        0.0,
    ]


@pytest.mark.parametrize("fmt", NAMED, ids=str)
def test_numba_and_torch_backends_are_bit_identical(fmt):
    x = hard_inputs(fmt, 2.5, random_count=20_000, seed=3)
    tables = grid_tables(fmt, 2.5)
    for stochastic in (False, True):
        fast = round_to_grid(x, tables, stochastic, key=99, want_codes=True, want_values=True)
        ref = round_to_grid(
            x, tables, stochastic, key=99, want_codes=True, want_values=True, force_torch=True
        )
        assert torch.equal(fast.codes, ref.codes)
        assert torch.equal(fast.values.view(torch.int32), ref.values.view(torch.int32))
        # values alone take the nearest kernel's own path (bit patterns, no code formed)
        only = round_to_grid(x, tables, stochastic, key=99, want_codes=False, want_values=True)
        assert only.nonfinite == ref.nonfinite
        assert torch.equal(only.values.view(torch.int32), ref.values.view(torch.int32))


@pytest.fixture
def one_thread():
    """A one-CPU process, as a Ray actor is: the kernels that run on the calling thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt", NAMED, ids=str)
def test_one_thread_nearest_values_and_gradients_match_the_other_kernels(fmt, one_thread):
    from fp8fl.numerics.kernels import fake_quant_grads

    x = hard_inputs(fmt, 2.5, random_count=20_000, seed=4)
    tables = grid_tables(fmt, 2.5)
    fast = round_to_grid(x, tables, False, key=0, want_codes=False, want_values=True)
    ref = round_to_grid(
        x, tables, False, key=0, want_codes=False, want_values=True, force_torch=True
    )
    assert fast.nonfinite == ref.nonfinite
    assert torch.equal(fast.values.view(torch.int32), ref.values.view(torch.int32))
    finite = x[torch.isfinite(x)]
    q, g = quantize(finite, 2.5, fmt), torch.randn(finite.shape, generator=seeded(6))
    gx, ga = fake_quant_grads(g, finite, q, 2.5)
    gx_ref, ga_ref = fake_quant_grads(g, finite, q, 2.5, force_torch=True)
    assert torch.equal(gx, gx_ref)
    # the same float32 terms summed in float64 in another order: |Δ| <= 2·n·2^-53·Σ|terms|
    bound = 2 * finite.numel() * 2.0**-53 * float((g.double() * (q - finite).double()).abs().sum())
    assert abs(ga - ga_ref) <= bound + 2 * finite.numel() * 2.0**-53 * float(g.abs().sum())
    with pytest.raises(ValueError, match="non-finite"):
        quantize(torch.tensor([1.0, float("nan")]), 2.5, fmt)


def test_uniform_stream_torch_matches_kernel_and_is_uniform():
    from fp8fl.numerics.kernels import _uniform24

    key = draw_key(seeded(5))
    u = uniform_stream(key, 200_000)
    assert [u[i].item() for i in (0, 1, 77, 199_999)] == [
        _uniform24(np.uint64(key), i) for i in (0, 1, 77, 199_999)
    ]
    assert torch.all((u >= 0) & (u < 1)) and torch.all(u * 2**24 == torch.round(u * 2**24))
    # mean 1/2, variance 1/12: standard errors 0.00065 and 0.00019 at n = 2e5; allow 5 sigma
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / u.numel())


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1], ids=str)
def test_stochastic_rounding_is_exactly_s_floor_x_over_s_plus_u(fmt):
    """Check every result against s·floor(x/s + u) in exact rational arithmetic, with the very
    draws u_i the quantizer used (same generator seed ⇒ same stream key)."""
    alpha = 3.3
    x = hard_inputs(fmt, float(np.float32(alpha)), random_count=1500, seed=11)
    q = quantize(x, alpha, fmt, stochastic=True, generator=seeded(42))
    u = uniform_stream(draw_key(seeded(42)), x.numel())
    mags = [Fraction(float(v)) for v in fmt.magnitudes(alpha)]
    top = mags[-1]
    for xi, qi, ui in zip(x.tolist(), q.tolist(), u.tolist()):
        ax = abs(Fraction(xi))
        if ax >= top:
            expected = top
        else:
            c = max(i for i, g in enumerate(mags) if g <= ax)
            lo, hi = mags[c], mags[c + 1]
            f = (ax - lo) / (hi - lo)
            # x > 0: floor(R + f + u) = R + 1 iff f + u >= 1; x < 0: floor(-R - f + u) = -R - 1 iff u < f
            up = (f + Fraction(ui) >= 1) if xi >= 0 else (Fraction(ui) < f)
            expected = hi if up else lo
        assert Fraction(abs(qi)) == expected, (xi, qi, ui)


def test_stochastic_lands_on_the_two_neighbours_with_the_right_probabilities():
    alpha, n = 1.0, 400_000
    mags = E4M3.magnitudes(alpha).astype(np.float64)
    for c, f in [(3, 0.25), (60, 0.5), (100, 0.9), (126, 0.1)]:
        lo, hi = mags[c], mags[c + 1]
        x0 = np.float32(lo + f * (hi - lo))
        f_exact = (float(x0) - lo) / (hi - lo)
        for sign in (1.0, -1.0):
            q = quantize(
                torch.full((n,), sign * float(x0)), alpha, stochastic=True, generator=seeded(c)
            )
            values = set(torch.unique(q.abs()).tolist())
            assert values <= {float(np.float32(lo)), float(np.float32(hi))}
            p_up = (q.abs() == float(np.float32(hi))).double().mean().item()
            # binomial standard error sqrt(f(1-f)/n) <= 0.0008; 5 sigma plus the 2^-24 lattice of u
            assert abs(p_up - f_exact) < 5 * math.sqrt(f_exact * (1 - f_exact) / n) + 2**-24


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E3M4], ids=str)
def test_stochastic_rounding_is_unbiased(fmt):
    """Mean over n draws of Q(x) for fixed x: E[Q] = x; Var[Q] = s²f(1-f) <= s²/4, so the standard
    error of the mean is at most s/(2·sqrt(n)). Tolerance: 5 standard errors, plus the 2^-24·s
    resolution of u."""
    alpha, n = 2.0, 200_000
    rng = np.random.default_rng(0)
    mags = fmt.magnitudes(alpha).astype(np.float64)
    for trial in range(12):
        c = int(rng.integers(1, len(mags) - 1))
        x0 = float(np.float32(rng.uniform(mags[c], mags[c + 1]) * rng.choice([-1, 1])))
        s = mags[c + 1] - mags[c]
        q = quantize(torch.full((n,), x0), alpha, fmt, stochastic=True, generator=seeded(trial))
        bias = q.double().mean().item() - x0
        assert abs(bias) < 5 * s / (2 * math.sqrt(n)) + 2**-24 * s, (c, x0, bias, s)


def test_stochastic_keeps_grid_points_and_clamps():
    grid = E4M3.grid(0.75)
    assert torch.equal(quantize(grid, 0.75, stochastic=True, generator=seeded(0)), grid)
    big = torch.tensor([5.0, -5.0, 0.75, -0.75])
    assert quantize(big, 0.75, stochastic=True).tolist() == [0.75, -0.75, 0.75, -0.75]


def test_generator_controls_the_draws():
    x = torch.randn(10_000, generator=seeded(0))
    a = quantize(x, 3.0, stochastic=True, generator=seeded(1))
    b = quantize(x, 3.0, stochastic=True, generator=seeded(1))
    c = quantize(x, 3.0, stochastic=True, generator=seeded(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_quantize_keeps_shape_and_does_not_track_gradients():
    x = torch.randn(3, 4, 5, requires_grad=True)
    q = quantize(x, 2.0)
    assert q.shape == x.shape and q.dtype == torch.float32 and not q.requires_grad


def test_fake_quant_forward_equals_quantize():
    x = torch.randn(2000, generator=seeded(0)) * 2
    alpha = torch.tensor(1.5, requires_grad=True)
    assert torch.equal(fake_quant(x, alpha), quantize(x, 1.5))
    assert torch.equal(
        fake_quant(x, alpha, stochastic=True, generator=seeded(3)),
        quantize(x, 1.5, stochastic=True, generator=seeded(3)),
    )


def test_fake_quant_straight_through_mask():
    x = torch.tensor([-3.0, -1.5, -0.2, 0.0, 0.7, 1.5, 2.0], requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    upstream = torch.arange(1.0, 8.0)
    fake_quant(x, alpha).backward(upstream)
    inside = (x.abs() <= 1.5).float()
    assert torch.equal(x.grad, upstream * inside)


def _alpha_grad(x: torch.Tensor, weights: torch.Tensor, alpha: float, fmt: FloatFormat) -> float:
    a = torch.tensor(alpha, requires_grad=True)
    (fake_quant(x, a, fmt) * weights).sum().backward()
    return a.grad.item()


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E3M2], ids=str)
def test_alpha_gradient_in_the_clip_region_matches_central_differences(fmt):
    """Where every |x| > α the function is q = sign(x)·α: differentiable, dL/dα = Σ w·sign(x)."""
    alpha, h = 1.25, 1e-3
    x = torch.empty(5000).uniform_(1.5, 3.0, generator=seeded(0)) * torch.sign(
        torch.randn(5000, generator=seeded(1))
    )
    w = torch.randn(5000, generator=seeded(2))

    def loss(a: float) -> float:
        return float((quantize(x, a, fmt).double() * w.double()).sum())

    fd = (loss(alpha + h) - loss(alpha - h)) / (2 * h)
    # float32 rounding of α±h perturbs each term by <= 2^-24·α/h relative
    assert math.isclose(_alpha_grad(x, w, alpha, fmt), fd, rel_tol=1e-3)


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E3M2], ids=str)
def test_alpha_gradient_inside_the_range(fmt):
    """Inside [-α, α] the staircase's own derivative (where it exists) is q/α; the STE gradient is
    (q − x)/α. Check both with central differences:
    1. of the true function at points where no element changes its rounding or exponent;
    2. of Kuzmin's surrogate built from the paper's formulas in float64 — exponent
       c = max(floor(log2|x| + b(α0)), 1) frozen, s(α) = 2^(c − b(α) − m), round linearised."""
    alpha, h = 1.25, 1e-3
    m = fmt.man_bits
    x = torch.empty(20_000).uniform_(-0.95 * alpha, 0.95 * alpha, generator=seeded(3))
    w = torch.randn(20_000, generator=seeded(4))
    xd, wd = x.double().numpy(), w.double().numpy()
    b0 = fmt.bias(alpha)
    c = np.maximum(np.floor(np.log2(np.abs(xd)) + b0), 1)

    def scale(a: float) -> np.ndarray:
        return 2.0 ** (c - fmt.bias(a) - m)

    # 1. true function, on elements whose rounding and exponent are the same at α ± h
    q_plus, q_minus = (quantize(x, a, fmt).double().numpy() for a in (alpha + h, alpha - h))
    steady = (
        (np.round(q_plus / scale(alpha + h)) == np.round(q_minus / scale(alpha - h)))
        & (c == np.maximum(np.floor(np.log2(np.abs(xd)) + fmt.bias(alpha + h)), 1))
        & (c == np.maximum(np.floor(np.log2(np.abs(xd)) + fmt.bias(alpha - h)), 1))
    )
    assert steady.mean() > 0.8
    keep = torch.from_numpy(steady)
    q0 = quantize(x, alpha, fmt).double().numpy()
    fd_true = float(((q_plus - q_minus)[steady] * wd[steady]).sum() / (2 * h))
    assert math.isclose(fd_true, float((q0 * wd)[steady].sum() / alpha), rel_tol=1e-3)
    ste = _alpha_grad(x[keep], w[keep], alpha, fmt)
    straight_through_term = float((xd * wd)[steady].sum() / alpha)
    assert math.isclose(ste, fd_true - straight_through_term, rel_tol=1e-3, abs_tol=1e-3)

    # 2. Kuzmin's surrogate: q~(a) = s(a)·(x/s(a) + offset), offset = round(x/s0) − x/s0 frozen
    offset = q0 / scale(alpha) - xd / scale(alpha)

    def surrogate(a: float) -> float:
        return float((wd * scale(a) * (xd / scale(a) + offset)).sum())

    fd_surrogate = (surrogate(alpha + h) - surrogate(alpha - h)) / (2 * h)
    assert math.isclose(_alpha_grad(x, w, alpha, fmt), fd_surrogate, rel_tol=1e-4)


def test_fake_quant_with_float_alpha_gives_only_an_input_gradient():
    x = torch.randn(100, requires_grad=True)
    fake_quant(x, 1.0).sum().backward()
    assert x.grad is not None


def test_fake_quant_gradients_agree_between_backends():
    from fp8fl.numerics.kernels import fake_quant_grads

    x = torch.randn(50_000, generator=seeded(0)) * 2
    q = quantize(x, 1.5)
    g = torch.randn(50_000, generator=seeded(1))
    gx_fast, ga_fast = fake_quant_grads(g, x, q, 1.5)
    gx_ref, ga_ref = fake_quant_grads(g, x, q, 1.5, force_torch=True)
    assert torch.equal(gx_fast, gx_ref)
    assert math.isclose(ga_fast, ga_ref, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (
            torch.tensor([1.0, float("nan"), float("nan"), float("inf")]),
            ValueError,
            r"3 non-finite value\(s\) \(2 NaN, 1 inf\)",
        ),
        (
            torch.tensor([1.0, float("-inf")]),
            ValueError,
            r"1 non-finite value\(s\) \(0 NaN, 1 inf\)",
        ),
        (torch.ones(3, dtype=torch.float64), TypeError, "float32"),
        (torch.ones(3, dtype=torch.float16), TypeError, "float32"),
        (np.ones(3, np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_are_rejected(x, error, message):
    with pytest.raises(error, match=message):
        quantize(x, 1.0)
    with pytest.raises(error, match=message):
        fake_quant(x, 1.0)


@pytest.mark.parametrize("alpha", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_alpha_is_rejected_by_the_quantizers(alpha):
    with pytest.raises(ValueError, match="alpha"):
        quantize(torch.ones(3), alpha)
    with pytest.raises(ValueError, match="alpha"):
        fake_quant(torch.ones(3), torch.tensor(alpha))


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_fake_quant_keeps_a_channels_last_layout_and_its_values(stochastic):
    x = torch.randn(4, 6, 5, 5, generator=seeded(8)) * 2
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.clone().requires_grad_()
    a_cl, a_ref = (torch.tensor(1.5, requires_grad=True) for _ in range(2))
    q_cl = fake_quant(x_cl, a_cl, stochastic=stochastic, generator=seeded(9))
    q_ref = fake_quant(x_ref, a_ref, stochastic=stochastic, generator=seeded(9))
    assert q_cl.is_contiguous(memory_format=torch.channels_last)
    # the same values: stochastic draws follow the logical element order in both layouts
    assert torch.equal(q_cl, q_ref)
    g = torch.randn(x.shape, generator=seeded(10))
    q_cl.backward(g)
    q_ref.backward(g)
    assert torch.equal(x_cl.grad, x_ref.grad)
    # dL/dα sums the same float32 terms (|term| <= |g|) in float64 in another order, |Δ| <=
    # 2·n·2^-53·Σ|g|, then rounds to float32 (half an ulp each, 2^-24 relative)
    ref = a_ref.grad.item()
    bound = 2 * x.numel() * 2.0**-53 * g.abs().sum().item() + 2.0**-23 * abs(ref)
    assert abs(a_cl.grad.item() - ref) <= bound
