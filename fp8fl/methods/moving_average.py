"""A server-side moving average of the global model around any aggregator.

Li et al., "Low Precision Local Training is Enough for Federated Learning" (NeurIPS 2024), keep one
FP32 model w̄ on the server: w̄ ← λ·w̄ + (1 − λ)·w_agg after each round's aggregate w_agg, with
w̄ = w_agg in the first aggregated round (FedAvg with a server learning rate of 1 − λ). The wrapper
returns w̄ as the new global model (what is evaluated and broadcast) and keeps it in its state, so
that a resumed run continues bit for bit. The run-config key ``moving-average`` (λ, 0 = off)
offers it to every method whose components read it; the LPT-FL presets use ``lpt-ma-lambda``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from fp8fl.federated.seams import Aggregate, Aggregator, ClientUpdate, State

__all__ = ["MovingAverage", "lambda_problem"]

AVERAGE_PREFIX, INNER_PREFIX = "moving_average.", "inner."


def lambda_problem(key: str, value: float) -> str | None:
    """λ must lie in [0, 1): 0 switches the moving average off, 1 would never move."""
    if math.isfinite(value) and 0.0 <= value < 1.0:
        return None
    return f"{key} must be in [0, 1) (0 = no moving average), got {value}"


@dataclass
class MovingAverage:
    """w̄ ← λ·w̄ + (1 − λ)·w_agg around ``inner`` (float32, per entry; w̄ = w_agg at first)."""

    inner: Aggregator
    lam: float
    average: State = field(default_factory=dict)
    name: ClassVar[str] = "moving-average"

    def __post_init__(self) -> None:
        problem = lambda_problem("λ", self.lam)
        if problem:
            raise ValueError(problem)

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        result = self.inner.aggregate(global_state, updates, server_round)
        new = result.state
        if self.average:
            lam = self.lam
            new = {
                k: lam * self.average[k] + (1.0 - lam) * v if v.is_floating_point() else v
                for k, v in new.items()
            }
        self.average = {k: v.detach().clone() for k, v in new.items()}
        return Aggregate({k: v.clone() for k, v in new.items()}, result.metrics)

    def state_dict(self) -> State:
        inner = {INNER_PREFIX + k: v for k, v in self.inner.state_dict().items()}
        return {AVERAGE_PREFIX + k: v.clone() for k, v in self.average.items()} | inner

    def load_state_dict(self, state: State) -> None:
        unknown = [k for k in state if not k.startswith((AVERAGE_PREFIX, INNER_PREFIX))]
        if unknown:
            raise ValueError(f"aggregator {self.name!r} did not write {sorted(unknown)}")
        self.average = {
            k.removeprefix(AVERAGE_PREFIX): v.clone()
            for k, v in state.items()
            if k.startswith(AVERAGE_PREFIX)
        }
        self.inner.load_state_dict(
            {
                k.removeprefix(INNER_PREFIX): v
                for k, v in state.items()
                if k.startswith(INNER_PREFIX)
            }
        )
