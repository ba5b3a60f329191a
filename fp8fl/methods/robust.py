"""Robust aggregation around any aggregator: each client's change bounded, entry by entry.

Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963)
clips each client's change relative to the global model, Δ_k = w_k − w, to a bound M before the
average: w_k ← w + Δ_k · min(1, M / ‖Δ_k‖). Here it is applied

* per state entry: every quantized weight tensor, every α and β, every dense tensor. One float32 α
  scales its whole decoded tensor, so under one model-wide bound an attacker could spend all of it
  on a single α (or β); per entry, each range parameter has a bound of its own, on the scale of
  honest changes of that range;
* with M = ``robust-norm-factor`` × the median of the round's ‖Δ_k‖ for that entry, so that one
  setting fits every method and format (honest changes include the wire's quantization noise,
  which differs by orders of magnitude between FP32, FP8 and 2-bit codes). The bound holds while
  fewer than half of the round's clients are hostile;
* to the codec's side information too (the clipped-uniform codec's per-layer quantization MSE,
  which sets a client's weight in the inverse-MSE average): it has no global value, so each
  client's is bounded around the clients' median to the factor × their median deviation.

Why norm bounding rather than a coordinate-wise median or trimmed mean (Yin et al. 2018,
arXiv:1803.01498): the bounded updates go into the method's own aggregator (n_k or inverse-MSE
weights, ServerOptimize's α search, a moving average), where a coordinate-wise rule would replace
it; an update inside its bound passes bit for bit, so a stochastically rounded honest update stays
an unbiased estimate, whereas the median or trimmed mean of a coordinate's few grid values is
biased towards the grid points and drops the tails stochastic rounding relies on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fp8fl.federated.seams import (
    Aggregate,
    Aggregator,
    ClientUpdate,
    State,
)

__all__ = ["RULES", "ClipReport", "NormBound", "bound_updates", "factor_problem", "robust_from"]

RULES = ("none", "norm-bound")


def factor_problem(value: float) -> str | None:
    """The check of ``robust-norm-factor``."""
    if math.isfinite(value) and value >= 1.0:
        return None
    return f"robust-norm-factor must be >= 1 (below 1 it clips the median client too), got {value}"


@dataclass(frozen=True)
class ClipReport:
    """What the rule clipped of one update: ``clipped`` of its ``of`` entries, the largest change
    ``max_ratio`` × its bound (None: the bound was 0), in entry ``worst``."""

    clipped: int
    of: int
    max_ratio: float | None
    worst: str


@dataclass(frozen=True)
class _Bounded:
    """One entry across the round's clients: the bounded values and each client's ‖Δ‖ / M."""

    values: list[torch.Tensor]
    ratios: list[float]


def _bound(values: list[torch.Tensor], reference: torch.Tensor, factor: float) -> _Bounded:
    """Clip each value's distance from ``reference`` to factor × the median distance; a value
    within the bound is returned as it is (bit for bit)."""
    deltas = [v.double() - reference.double() for v in values]
    norms = [float(torch.linalg.vector_norm(d)) for d in deltas]
    bound = factor * float(np.median(norms))
    out, ratios = [], []
    for value, delta, norm in zip(values, deltas, norms):
        ratios.append(norm / bound if bound > 0 else (math.inf if norm > 0 else 0.0))
        if norm <= bound:
            out.append(value)
        else:
            scale = bound / norm
            out.append((reference.double() + delta * scale).to(value.dtype))
    return _Bounded(out, ratios)


def bound_updates(
    global_state: State, updates: Sequence[ClientUpdate], factor: float
) -> tuple[list[ClientUpdate], dict[str, dict[str, Any]]]:
    """Every update with each floating-point entry's change from ``global_state`` (and each side
    entry's deviation from the clients' median) bounded; and, per partition whose update was
    clipped, how many entries were, of how many, and the largest ‖Δ‖ / M with its entry."""
    states: list[State] = [dict(u.state) for u in updates]
    sides: list[State] = [dict(u.side) for u in updates]
    clipped: list[list[tuple[float, str]]] = [[] for _ in updates]
    entries = [
        (n, global_state[n], states) for n, v in global_state.items() if v.is_floating_point()
    ]
    if updates:
        for name in updates[0].side:
            values = torch.stack([u.side[name].double() for u in updates])
            entries.append((name, values.quantile(0.5, dim=0), sides))
    for name, reference, target in entries:
        bounded = _bound([t[name] for t in target], reference, factor)
        for k, (value, ratio) in enumerate(zip(bounded.values, bounded.ratios)):
            target[k][name] = value
            if ratio > 1.0:
                clipped[k].append((ratio, name))
    report = {
        str(u.partition): ClipReport(len(c), len(entries), _significant(max(c)[0]), max(c)[1])
        for u, c in zip(updates, clipped)
        if c
    }
    bounded_updates = [
        dataclasses.replace(u, state=s, side=side) for u, s, side in zip(updates, states, sides)
    ]
    return bounded_updates, report


def _significant(ratio: float) -> float | None:
    """``ratio`` to 4 significant digits for the record; None where the bound M was 0."""
    return float(f"{ratio:.4g}") if math.isfinite(ratio) else None


@dataclass
class NormBound:
    """Norm bounding per entry (``bound_updates``) in front of ``inner``; the round record gets
    what was clipped under ``clipped`` (keyed by partition)."""

    inner: Aggregator
    factor: float
    name: ClassVar[str] = "norm-bound"

    def __post_init__(self) -> None:
        problem = factor_problem(self.factor)
        if problem:
            raise ValueError(problem)

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        bounded, report = bound_updates(global_state, updates, self.factor)
        result = self.inner.aggregate(global_state, bounded, server_round)
        return Aggregate(result.state, {**result.metrics, "clipped": report})

    def state_dict(self) -> State:
        return self.inner.state_dict()

    def load_state_dict(self, state: State) -> None:
        self.inner.load_state_dict(state)


def robust_from(rule: str, factor: float, inner: Aggregator) -> Aggregator:
    """``inner`` behind the robust ``rule`` (``robust-aggregation``), or ``inner`` itself."""
    if rule == "none":
        return inner
    return NormBound(inner, factor)
