"""Server-side maths: the n_k-weighted average (Alg. 3, lines 8-11) and ServerOptimize (Alg. 2).

ServerOptimize (UQ+, Wang et al. 2024, arXiv:2407.02610 eq. 7-8) looks for the global weights w and
clipping values α that
minimise, per quantized tensor,

    F(w, α) = Σ_k n_k/m · E‖Q(w; α) − Q(w_k; α_k)‖²
            = E‖Q(w; α) − w̄‖² + Σ_k n_k/m ‖Q(w_k; α_k) − w̄‖²,

where w̄ is the weighted average of the decoded client weights and Q the quantizer of the wire
(stochastic for UQ+: then E‖Q(w) − w̄‖² = ‖clamp(w) − w̄‖² + Σ (|w|−lo)(hi−|w|), computed exactly).
For each step size η in ``lrs`` it takes ``steps`` gradient steps on w from w̄ with α = ᾱ, the
gradient 2·(Q(w; α) − w̄)·1{|w| <= α} passing the rounding straight through (STE); then it searches
α over ``grid`` points evenly spaced in [min_k α_k, max_k α_k]. The plain average (w̄, ᾱ) is always
a candidate, and the objective is separable across tensors, so each tensor keeps its best candidate:
the result is never worse than the average.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fp8fl.models.qat import alpha_name
from fp8fl.numerics.formats import as_alpha
from fp8fl.numerics.gridtables import grid_tables
from fp8fl.numerics.kernels import expected_squared_error
from fp8fl.numerics.quant import Rounding

__all__ = ["ServerOptResult", "average_objective", "server_optimize", "weighted_average"]


def weighted_average(
    states: list[dict[str, torch.Tensor]], weights: list[int]
) -> dict[str, torch.Tensor]:
    """Σ_k n_k/m · state_k for every entry, accumulated in float64, returned as float32."""
    if not states or len(states) != len(weights):
        raise ValueError("need one weight per state and at least one state")
    total = float(sum(weights))
    return {
        name: sum(s[name].double() * (n / total) for s, n in zip(states, weights)).float()
        for name in states[0]
    }


@dataclass(frozen=True)
class ServerOptResult:
    state: dict[str, torch.Tensor]
    objective_before: float  # Σ over quantized tensors of F(w̄, ᾱ)
    objective_after: float  # the same at the chosen (w, α)
    tensors_improved: int


def server_optimize(
    average: dict[str, torch.Tensor],
    client_states: list[dict[str, torch.Tensor]],
    weights: list[int],
    quantized: tuple[str, ...],
    rounding: Rounding | Mapping[str, Rounding],
    steps: int,
    lrs: tuple[float, ...],
    grid: int,
    generator: torch.Generator,
) -> ServerOptResult:
    """ServerOptimize over the quantized tensors of ``average`` (the plain weighted average),
    each in its ``rounding`` (one for all, or one per tensor); other entries (β, dense tensors)
    are returned unchanged."""
    state = dict(average)
    before = after = 0.0
    improved = 0
    roundings = rounding
    for name in quantized:
        rounding = _tensor_rounding(roundings, name)
        w_bar, a_name = average[name], alpha_name(name)
        spread = _spread(name, average, client_states, weights)
        alphas = [float(s[a_name]) for s in client_states]
        alpha_bar = float(average[a_name])
        base = spread + _objective(w_bar, w_bar, alpha_bar, rounding)
        best = (base, w_bar, alpha_bar)
        for lr in lrs:
            w = _descend(w_bar, alpha_bar, rounding, steps, lr, generator)
            for alpha in np.linspace(min(alphas), max(alphas), grid):
                value = spread + _objective(w, w_bar, float(alpha), rounding)
                if value < best[0]:
                    best = (value, w, float(alpha))
        before += base
        after += best[0]
        improved += best[0] < base
        state[name] = best[1]
        state[a_name] = torch.tensor(as_alpha(best[2], rounding.fmt), dtype=torch.float32)
    return ServerOptResult(state, before, after, improved)


def average_objective(
    average: dict[str, torch.Tensor],
    client_states: list[dict[str, torch.Tensor]],
    weights: list[int],
    quantized: tuple[str, ...],
    rounding: Rounding | Mapping[str, Rounding],
) -> float:
    """Σ over quantized tensors of F(w̄, ᾱ): the objective of ServerOptimize at the plain average
    (``rounding``: one for all tensors, or one per tensor)."""
    return sum(
        _spread(name, average, client_states, weights)
        + _objective(
            average[name],
            average[name],
            float(average[alpha_name(name)]),
            _tensor_rounding(rounding, name),
        )
        for name in quantized
    )


def _tensor_rounding(rounding: Rounding | Mapping[str, Rounding], name: str) -> Rounding:
    return rounding if isinstance(rounding, Rounding) else rounding[name]


def _spread(
    name: str,
    average: dict[str, torch.Tensor],
    client_states: list[dict[str, torch.Tensor]],
    weights: list[int],
) -> float:
    """Σ_k n_k/m ‖w_k − w̄‖², the part of F that no choice of (w, α) changes."""
    total = float(sum(weights))
    w_bar = average[name].double()
    return sum(
        float((s[name].double() - w_bar).pow(2).sum()) * (n / total)
        for s, n in zip(client_states, weights)
    )


def _objective(w: torch.Tensor, target: torch.Tensor, alpha: float, rounding: Rounding) -> float:
    tables = grid_tables(rounding.fmt, as_alpha(alpha, rounding.fmt))
    return expected_squared_error(w, target, tables, rounding.stochastic)


def _descend(
    w_bar: torch.Tensor,
    alpha: float,
    rounding: Rounding,
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``steps`` STE gradient steps on ‖Q(w; α) − w̄‖² from w = w̄."""
    w = w_bar.clone()
    inside = w_bar.abs() <= alpha
    for _ in range(steps):
        q = rounding.quantize(w, alpha, generator)
        w = w - lr * 2.0 * (q - w_bar) * inside
        inside = w.abs() <= alpha
    return w
