"""Communication gain of a method over FP32 FedAvg, as defined in §5.3 of the paper.

The paper does not fix one accuracy threshold for all methods: each method is compared with FP32
"at the maximum accuracy reached by both". For a method M and the FP32 baseline B:

* ``acc* = min(best accuracy of B, best accuracy of M)`` — the lower of the two bests, so both
  curves reach it: a method that never reaches FP32's best is compared at its own best, and a
  method better than FP32 is compared at FP32's best;
* ``bytes_X(acc*)`` = the cumulative bytes sent (up + down, ``cum_bytes``) at the **first**
  evaluated round whose accuracy is ≥ acc* (the first crossing, not the best round, so a
  non-monotone curve counts from when it first got there);
* ``gain = bytes_B(acc*) / bytes_M(acc*)``.

"≥ acc*" allows 1e-9 of float round-off (``TOLERANCE``): the mean of three seeds at 0.7 is
0.6999999999999998. Two different accuracies on a test set of N examples differ by at least 1/N.

Rounds that were not evaluated (``accuracy`` null, see ``eval-every``) are skipped. The gain is
undefined (``None``) for a missing or empty curve, and when either curve reaches acc* before any
byte was sent (round 0): a curve that never rises above its initial accuracy has learnt nothing
to compare, and the ratio would be 0 or ∞.

Several seeds: the gain is computed on the **seed-mean curves** — at each round evaluated in
every seed, the mean accuracy and the mean cumulative bytes over the seeds (bytes are the same
for every seed of a method; the mean is taken to be safe): one gain per setting and method, as
in Table 1. The alternative — a gain per seed (each seed's method run against the FP32 run, at
their own acc*) and then the mean of those gains — is not what is computed here; it lets one
seed's lucky or unlucky best move acc*, and needs the seeds paired.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOLERANCE = 1e-9

__all__ = [
    "TOLERANCE",
    "Curve",
    "Gain",
    "Series",
    "Uplink",
    "accuracy_range",
    "align",
    "communication_gain",
    "curve_from_rounds",
    "first_reach",
    "mean_curve",
    "series_from_rounds",
    "uplink_from_rounds",
]


@dataclass(frozen=True)
class Curve:
    """Accuracy against cumulative bytes at the evaluated rounds of one run (or a seed mean)."""

    rounds: np.ndarray
    cum_bytes: np.ndarray
    accuracy: np.ndarray

    def __len__(self) -> int:
        return len(self.rounds)


EMPTY = Curve(np.zeros(0, dtype=int), np.zeros(0), np.zeros(0))


@dataclass(frozen=True)
class Gain:
    """acc*, the bytes each side needed to first reach it, and their ratio."""

    target: float
    baseline_bytes: float
    method_bytes: float

    @property
    def value(self) -> float:
        return self.baseline_bytes / self.method_bytes


@dataclass(frozen=True)
class Series:
    """One per-round value of a run (e.g. ``unchanged_codes``) at the rounds that recorded it."""

    rounds: np.ndarray
    values: np.ndarray


EMPTY_SERIES = Series(EMPTY.rounds, EMPTY.accuracy)


@dataclass(frozen=True)
class Uplink:
    """What the clients sent, at the evaluated rounds of one run: cumulative updates received
    (``uploads`` of a buffered server step, ``clients_ok`` of a synchronous round), cumulative
    uplink bytes and accuracy; and every update's staleness (empty for synchronous rounds)."""

    rounds: np.ndarray
    cum_uploads: np.ndarray
    cum_bytes_up: np.ndarray
    accuracy: np.ndarray
    staleness: np.ndarray


EMPTY_UPLINK = Uplink(EMPTY.rounds, EMPTY.accuracy, EMPTY.accuracy, EMPTY.accuracy, EMPTY.rounds)


def _recorded(records: Iterable[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """The records with a finite ``key``, by round (a round recorded twice, as a resumed run may,
    counts once with its last record)."""
    by_round = {int(r["round"]): r for r in records}
    return [
        by_round[n]
        for n in sorted(by_round)
        if by_round[n].get(key) is not None and math.isfinite(by_round[n][key])
    ]


def curve_from_rounds(records: Iterable[Mapping[str, Any]]) -> Curve:
    """The evaluated rounds of ``rounds.jsonl`` records (null or non-finite accuracy skipped)."""
    rows = _recorded(records, "accuracy")
    return Curve(
        np.asarray([int(r["round"]) for r in rows], dtype=int),
        np.asarray([float(r["cum_bytes"]) for r in rows], dtype=float),
        np.asarray([float(r["accuracy"]) for r in rows], dtype=float),
    )


def series_from_rounds(records: Iterable[Mapping[str, Any]], key: str) -> Series:
    """``key`` of ``rounds.jsonl`` records at the rounds where it is a finite number (absent or
    null skipped)."""
    rows = _recorded(records, key)
    return Series(
        np.asarray([int(r["round"]) for r in rows], dtype=int),
        np.asarray([float(r[key]) for r in rows], dtype=float),
    )


def uplink_from_rounds(records: Iterable[Mapping[str, Any]]) -> Uplink:
    """The uplink ledger of ``rounds.jsonl`` records at their evaluated rounds."""
    by_round = {int(r["round"]): r for r in records}
    ordered = [by_round[n] for n in sorted(by_round)]
    uploads = np.cumsum([int(r.get("uploads", r.get("clients_ok", 0))) for r in ordered])
    evaluated = {int(r["round"]) for r in _recorded(ordered, "accuracy")}
    rows = [(r, n) for r, n in zip(ordered, uploads, strict=True) if int(r["round"]) in evaluated]
    return Uplink(
        np.asarray([int(r["round"]) for r, _ in rows], dtype=int),
        np.asarray([n for _, n in rows], dtype=float),
        np.asarray([float(r["cum_bytes_up"]) for r, _ in rows], dtype=float),
        np.asarray([float(r["accuracy"]) for r, _ in rows], dtype=float),
        np.asarray([s for r in ordered for s in r.get("staleness", [])], dtype=int),
    )


def align(rounds: Sequence[np.ndarray], *values: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The rounds present in every one of ``rounds`` (at least one), and for each sequence of
    ``values`` (one array per entry of ``rounds``) the (entries × common rounds) matrix there."""
    common = sorted(set.intersection(*(set(r.tolist()) for r in rounds)))
    picks = [np.searchsorted(r, common) for r in rounds]
    return np.asarray(common, dtype=int), *(
        np.stack([v[p] for v, p in zip(vs, picks, strict=True)]) for vs in values
    )


def _aligned(curves: Sequence[Curve]) -> tuple[np.ndarray, ...]:
    """The rounds evaluated in every curve (at least one), and the (seeds × rounds) bytes and
    accuracies there."""
    return align(
        [c.rounds for c in curves], [c.cum_bytes for c in curves], [c.accuracy for c in curves]
    )


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """Seed-mean curve: mean accuracy and mean bytes at the rounds evaluated in every seed."""
    if not curves:
        return EMPTY
    rounds, cum_bytes, accuracy = _aligned(curves)
    return Curve(rounds, cum_bytes.mean(axis=0), accuracy.mean(axis=0))


def accuracy_range(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """Per-round minimum and maximum accuracy over seeds, at ``mean_curve``'s rounds."""
    if not curves:
        return EMPTY.accuracy, EMPTY.accuracy
    _, _, accuracy = _aligned(curves)
    return accuracy.min(axis=0), accuracy.max(axis=0)


def first_reach(curve: Curve, target: float) -> float | None:
    """Cumulative bytes at the first evaluated round with accuracy ≥ ``target`` (up to
    ``TOLERANCE``); None if never."""
    hits = np.flatnonzero(curve.accuracy >= target - TOLERANCE)
    return float(curve.cum_bytes[hits[0]]) if hits.size else None


def communication_gain(baseline: Curve | None, method: Curve | None) -> Gain | None:
    """The §5.3 gain of ``method`` over ``baseline`` (FP32); None where it is undefined."""
    if baseline is None or method is None or not len(baseline) or not len(method):
        return None
    target = float(min(baseline.accuracy.max(), method.accuracy.max()))
    baseline_bytes, method_bytes = first_reach(baseline, target), first_reach(method, target)
    if not baseline_bytes or not method_bytes:  # reached before any byte was sent
        return None
    return Gain(target, baseline_bytes, method_bytes)
