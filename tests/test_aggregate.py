"""Server maths: the weighted average, the exact ServerOptimize objective, and ServerOptimize."""

import math

import numpy as np
import pytest
import torch

from fp8fl.federated.aggregation import average_objective, server_optimize, weighted_average
from fp8fl.numerics.formats import E2M3, E3M2, E4M3
from fp8fl.numerics.gridtables import grid_tables
from fp8fl.numerics.kernels import expected_squared_error
from fp8fl.numerics.quant import Rounding, quantize


def test_weighted_average_matches_float64_numpy():
    rng = np.random.default_rng(0)
    states = [
        {
            "w": torch.from_numpy(rng.normal(size=(4, 5)).astype(np.float32)),
            "b": torch.from_numpy(rng.normal(size=3).astype(np.float32)),
        }
        for _ in range(3)
    ]
    n = [10, 30, 60]
    avg = weighted_average(states, n)
    for key in ("w", "b"):
        expected = sum(s[key].double().numpy() * (k / 100) for s, k in zip(states, n))
        assert avg[key].dtype == torch.float32
        assert np.array_equal(avg[key].numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("stochastic", [False, True])
def test_expected_squared_error_is_exact(stochastic):
    """Closed form vs a Monte Carlo mean over R draws: the draws' total squared error has standard
    deviation at most sqrt(Σ_i s_i^4 / 16)·(small), so 5 standard errors of the mean bound it."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2000, generator=gen) * 0.5
    target = w + torch.randn(2000, generator=gen) * 0.01
    alpha = 1.2
    tables = grid_tables(E4M3, float(np.float32(alpha)))
    exact = expected_squared_error(w, target, tables, stochastic)
    if not stochastic:
        direct = (quantize(w, alpha).double() - target.double()).pow(2).sum()
        assert math.isclose(exact, float(direct), rel_tol=1e-12)
        return
    draws = torch.stack(
        [
            (quantize(w, alpha, stochastic=True, generator=gen) - target).double().pow(2).sum()
            for _ in range(400)
        ]
    )
    assert abs(draws.mean().item() - exact) < 5 * draws.std().item() / math.sqrt(400)


def _clients(seed: int, count: int = 5, size: int = 4000):
    """Client updates as the server decodes them: each on its own grid (α_k)."""
    rng = torch.Generator().manual_seed(seed)
    center = torch.randn(size, generator=rng) * 0.1
    states, alphas = [], torch.linspace(0.35, 0.6, count)
    for k in range(count):
        w = center + torch.randn(size, generator=rng) * 0.02
        a = float(alphas[k])
        states.append(
            {
                "fc.weight": quantize(w, a, stochastic=True, generator=rng),
                "fc.weight_alpha": torch.tensor(a),
            }
        )
    return states, [100 + 10 * k for k in range(count)]


@pytest.mark.parametrize(("fmt", "stochastic"), [(E4M3, True), (E4M3, False), (E3M2, True)])
def test_server_optimize_is_never_worse_than_the_average_and_reports_truthfully(fmt, stochastic):
    states, n = _clients(1)
    avg = weighted_average(states, n)
    before = average_objective(avg, states, n, ("fc.weight",), Rounding(fmt, stochastic))
    result = server_optimize(
        avg,
        states,
        n,
        ("fc.weight",),
        Rounding(fmt, stochastic),
        steps=5,
        lrs=(0.01, 0.1, 1.0),
        grid=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert math.isclose(result.objective_before, before, rel_tol=1e-12)
    assert result.objective_after <= result.objective_before
    # the reported objective is F at the returned (w, α): spread + E‖Q(w; α) − w̄‖²
    w_bar = avg["fc.weight"]
    spread = sum(
        float((s["fc.weight"].double() - w_bar.double()).pow(2).sum()) * k / sum(n)
        for s, k in zip(states, n)
    )
    alpha = float(result.state["fc.weight_alpha"])
    direct = spread + expected_squared_error(
        result.state["fc.weight"], w_bar, grid_tables(fmt, alpha), stochastic
    )
    assert math.isclose(result.objective_after, direct, rel_tol=1e-12)
    alphas = [float(s["fc.weight_alpha"]) for s in states]
    assert min(alphas) - 1e-6 <= alpha <= max(alphas) + 1e-6


def test_server_optimize_improves_when_a_smaller_alpha_fits_better():
    """With few exponent bits (E2M3: four binades) the grid below α/8 is uniform with step
    α/60, so small weights under the mean α of mostly coarse clients round badly; the grid search
    must find a smaller α that more than halves the part of F that (w, α) can change.
    (In E4M3 the same setting gains little: its 16 binades keep small weights normal.)"""
    gen = torch.Generator().manual_seed(5)
    base = (torch.randn(5000, generator=gen) * 0.03).clamp(-0.19, 0.19)
    states = [
        {
            "fc.weight": quantize(base, a, E2M3, stochastic=True, generator=gen),
            "fc.weight_alpha": torch.tensor(a),
        }
        for a in (0.2, 3.0, 3.0, 3.0)
    ]
    n = [1, 1, 1, 1]
    avg = weighted_average(states, n)
    spread = sum(
        float((s["fc.weight"].double() - avg["fc.weight"].double()).pow(2).sum()) / 4
        for s in states
    )
    result = server_optimize(
        avg,
        states,
        n,
        ("fc.weight",),
        Rounding(E2M3, True),
        5,
        (0.01, 0.1, 1.0),
        50,
        torch.Generator().manual_seed(0),
    )
    assert result.tensors_improved == 1
    assert result.objective_after - spread < 0.5 * (result.objective_before - spread)
    assert float(result.state["fc.weight_alpha"]) < float(avg["fc.weight_alpha"])


def test_server_optimize_leaves_other_entries_alone():
    states, n = _clients(2)
    for s in states:
        s["bias"] = torch.randn(7)
    avg = weighted_average(states, n)
    result = server_optimize(
        avg,
        states,
        n,
        ("fc.weight",),
        Rounding(E4M3, True),
        2,
        (0.1,),
        5,
        torch.Generator().manual_seed(0),
    )
    assert torch.equal(result.state["bias"], avg["bias"])
