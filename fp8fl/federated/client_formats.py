"""Mixed-precision clients: the run-config key ``client-formats`` gives fractions of the partitions
their own number format, e.g. ``"fp32:0.3,e4m3:0.5,e2m1:0.2"``.

Devices differ in the low-precision formats they support (Wang et al. 2024, arXiv:2407.02610,
Introduction and §3.3). In a run of the FP8 family with ``client-formats``, the client of a
partition assigned a minifloat format trains with QAT in that format and exchanges the model in it
(both directions, with the run's ``qat`` and ``wire`` roundings); a partition assigned ``fp32``
trains the plain FP32 model and exchanges float32 weights, as an FP32 FedAvg client does. The
server keeps one FP32 global model (with α/β, calibrated and evaluated in the run's own
``format``) and aggregates every decoded update in FP32 with the run's aggregator.

Formats are assigned to partitions from the run's seed alone (``assign_formats``): exact counts by
largest remainder, then a seeded permutation, so server and clients agree without a message.
``fp8fl.run.client_formats.client_config`` is the run as the clients of one format see it
(``partition_config``: as one partition's client sees it); both ends build that client's model,
codecs and protocol fields from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fp8fl.federated.seams import RunView
from fp8fl.federated.seeds import derive_seed
from fp8fl.numerics.formats import FloatFormat

__all__ = [
    "FP32",
    "FormatShare",
    "assign_formats",
    "client_formats_problems",
    "format_counts",
    "parse_client_formats",
]


FP32 = "fp32"
TOLERANCE = 1e-6
"""How far the fractions' sum may be from 1 (decimal fractions such as 0.1 are not exact)."""


@dataclass(frozen=True)
class FormatShare:
    """One entry of ``client-formats``: a format (``fp32`` or a minifloat's normalised name such
    as ``e4m3``) and the fraction of the partitions that use it."""

    name: str
    fraction: float


def _parse(value: str) -> tuple[tuple[FormatShare, ...], list[str]]:
    """The shares of ``value`` and every problem found in it."""
    if not value.strip():
        return (), []
    shares: list[FormatShare] = []
    problems: list[str] = []
    for item in value.split(","):
        name, sep, fraction = item.partition(":")
        if not sep or ":" in fraction:
            problems.append(f"client-formats: expected 'format:fraction', got {item.strip()!r}")
            continue
        name = name.strip().lower()
        if name != FP32:
            try:
                name = FloatFormat.from_name(name).name
            except ValueError as err:
                problems.append(f"client-formats: {err} (or fp32)")
                name = ""
        try:
            share = float(fraction)
        except ValueError:
            problems.append(f"client-formats: the fraction of {item.strip()!r} is not a number")
            continue
        if not (math.isfinite(share) and 0 < share <= 1):
            problems.append(f"client-formats: the fraction of {name or item!r} must be in (0, 1]")
        elif name:
            if any(s.name == name for s in shares):
                problems.append(f"client-formats names {name} twice")
            shares.append(FormatShare(name, share))
    total = sum(s.fraction for s in shares)
    if not problems and abs(total - 1) > TOLERANCE:
        problems.append(f"client-formats: the fractions sum to {total:.6g}, not 1")
    if not problems and all(s.name == FP32 for s in shares):
        problems.append(
            "client-formats names no minifloat format: for FP32 only, use method = fp32"
        )
    return tuple(shares), problems


def parse_client_formats(value: str) -> tuple[FormatShare, ...]:
    """The shares of a ``client-formats`` value (``""``: none, every client uses the run's own
    format); raises ``ValueError`` listing every problem."""
    shares, problems = _parse(value)
    if problems:
        raise ValueError("; ".join(problems))
    return shares


def format_counts(shares: tuple[FormatShare, ...], num_clients: int) -> dict[str, int]:
    """Partitions per format, summing to ``num_clients``: each share's quota ``fraction · N``
    rounded down, the partitions left over going to the largest remainders (Hamilton's method;
    ties to the format listed first)."""
    total = sum(s.fraction for s in shares)
    quotas = [s.fraction / total * num_clients for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: num_clients - sum(counts)]:
        counts[i] += 1
    return {s.name: c for s, c in zip(shares, counts)}


def assign_formats(shares: tuple[FormatShare, ...], num_clients: int, seed: int) -> tuple[str, ...]:
    """The format of every partition (index = partition id): ``format_counts`` of each format, on
    partitions drawn by a permutation seeded with (seed, "client-formats")."""
    order = np.random.default_rng(derive_seed(seed, "client-formats")).permutation(num_clients)
    formats = [""] * num_clients
    start = 0
    for name, count in format_counts(shares, num_clients).items():
        for pid in order[start : start + count].tolist():
            formats[pid] = name
        start += count
    return tuple(formats)


def client_formats_problems(value: str, qat: str, run: RunView) -> list[str]:
    """What is wrong with a ``client-formats`` value in a run of the FP8 family with ``qat``."""
    shares, problems = _parse(value)
    if not shares and not problems:
        return []
    if qat == "none":
        problems.append(
            "client-formats needs QAT (qat = nearest or stochastic): the minifloat clients train "
            f"with the α/β of a QAT global model, which method {run.method!r} does not have"
        )
    if not problems and run.num_clients >= 1:
        empty = [n for n, c in format_counts(shares, run.num_clients).items() if c == 0]
        if empty:
            problems.append(
                f"client-formats: with num-clients = {run.num_clients}, no partition gets "
                f"{', '.join(empty)}: raise its fraction or num-clients"
            )
    return problems
