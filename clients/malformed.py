"""A corpus of malformed client updates: each a named mutation of a valid (arrays, n_k, metrics),
with a fragment of the reason the server must give when it rejects it.

Written for the FP8 methods' three-array message (codes, α/β scales, dense tensors). Used by the
hostile ClientApp of a deployment (``attack = "malformed"``: ``clients/hostile_client.py``), by
the unit tests of the server's checks, and by the simulation tests, which make one client send a
mutated update through the real Flower stack.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Update = tuple[list[np.ndarray], int, dict]
Mutation = Callable[[Update], Update]


def _arrays(fn: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Mutation:
    return lambda u: (fn([a.copy() for a in u[0]]), u[1], dict(u[2]))


def _set(i: int, index: int, value: float) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    def mutate(arrays: list[np.ndarray]) -> list[np.ndarray]:
        arrays[i][index] = value
        return arrays

    return mutate


def _replace(
    i: int, fn: Callable[[np.ndarray], np.ndarray]
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    def mutate(arrays: list[np.ndarray]) -> list[np.ndarray]:
        arrays[i] = fn(arrays[i])
        return arrays

    return mutate


def _metric(key: str, value: object) -> Mutation:
    def mutate(u: Update) -> Update:
        metrics = dict(u[2])
        if value is None:
            metrics.pop(key, None)
        else:
            metrics[key] = value
        return u[0], u[1], metrics

    return mutate


def _n(value: object) -> Mutation:
    return lambda u: (u[0], value, u[2])  # type: ignore[return-value]


ARRAY_PROBLEMS = (
    "weights-",
    "alpha-",
    "beta-",
    "scales-",
    "dense-",
    "missing-array",
    "extra-array",
    "reordered-arrays",
)
"""Names (prefixes) of the mutations that a ``StateLayout.unpack`` alone must catch."""

MUTATIONS: dict[str, tuple[Mutation, str]] = {
    # name: (mutation, a fragment of the reason the server must give)
    "weights-wrong-dtype": (_arrays(_replace(0, lambda a: a.astype(np.float32))), "dtype"),
    "weights-truncated": (_arrays(_replace(0, lambda a: a[:-10])), "truncated"),
    "weights-oversized": (_arrays(_replace(0, lambda a: np.append(a, a[:3]))), "oversized"),
    "weights-2d": (_arrays(_replace(0, lambda a: a.reshape(1, -1))), "1-D"),
    "alpha-nan": (_arrays(_set(1, 0, np.nan)), "positive and finite"),
    "alpha-inf": (_arrays(_set(1, 0, np.inf)), "positive and finite"),
    "alpha-zero": (_arrays(_set(1, 0, 0.0)), "positive and finite"),
    "beta-negative": (_arrays(_set(1, -1, -0.5)), "positive and finite"),
    "scales-truncated": (_arrays(_replace(1, lambda a: a[:-1])), "truncated"),
    "dense-nan": (_arrays(_set(2, 0, np.nan)), "non-finite"),
    "dense-inf": (_arrays(_set(2, -1, -np.inf)), "non-finite"),
    "dense-oversized": (_arrays(_replace(2, lambda a: np.append(a, a[:1]))), "oversized"),
    "missing-array": (_arrays(lambda a: a[:2]), "expected 3 arrays"),
    "extra-array": (_arrays(lambda a: [*a, np.zeros(3, np.float32)]), "expected 3 arrays"),
    "reordered-arrays": (_arrays(lambda a: [a[2], a[1], a[0]]), "dtype"),
    "n-zero": (_n(0), "num_examples"),
    "n-negative": (_n(-50), "num_examples"),
    "n-absurd": (_n(10**12), "num_examples"),
    "n-not-integer": (_n(12.5), "num_examples"),
    "wrong-format": (_metric("format", "e5m2"), "format"),
    "wrong-wire-version": (_metric("wire-version", 99), "wire-version"),
    "wrong-fp8fl-version": (_metric("fp8fl-version", "0.0.1"), "come from fp8fl 0.0.1"),
    "wrong-method": (_metric("method", "bq"), "method = 'bq'"),
    "wrong-wire-rounding": (_metric("wire", "nearest"), "wire"),
    "missing-partition-id": (_metric("partition-id", None), "partition-id"),
    "foreign-partition-id": (
        lambda u: _metric("partition-id", u[2]["partition-id"] + 1)(u),
        "claims partition",
    ),
}
