"""The rounding gap: how far deterministic rounding falls behind stochastic rounding.

Two pairs of presets differ only in that: FP8's BQ and UQ (Wang et al. 2024, arXiv:2407.02610,
Table 3) and the clipped-uniform cq4-det and cq4 (Bozorgasl & Chen, arXiv:2405.13365). For a
setting where both of a pair ran, runs are paired by seed (a seed that only one method ran is left
out). At each round evaluated in every paired run of both methods, each seed's gap is the
deterministic method's test accuracy minus the stochastic one's, in percentage points; the curve
is the mean over seeds with its min and max. Beside it, the fraction of weight codes the clients
left unchanged from downlink to uplink (``unchanged_codes`` of each round record; rounds without
it are skipped, and the clipped-uniform methods, with their FP32 downlink, record none): rounding
to nearest loses the small updates that stochastic rounding keeps on average, so BQ leaves more
unchanged.

``write_rounding_gaps`` writes ``<pair stem>-<slug>.png/.svg/.csv`` (``rounding-gap-…`` for BQ −
UQ, ``rounding-gap-cq4-…`` for cq4-det − cq4) and returns a markdown summary line per setting and
pair: the gap at the last common round and from when the deterministic method stays ≥ 2 points
behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments.reporting.gain import TOLERANCE, align
from experiments.reporting.plots import METHOD_COLORS, draw_band, save_figure
from experiments.reporting.runs import METHOD_LABELS, Run, Setting
from experiments.reporting.tables import write_csv

__all__ = [
    "BEHIND",
    "PAIRS",
    "Band",
    "RoundingGap",
    "RoundingPair",
    "falls_behind",
    "gap_rows",
    "gap_summary",
    "plot_rounding_gap",
    "rounding_gap",
    "write_rounding_gaps",
]

BEHIND = -2.0
"""Points by which the deterministic method is behind when the summary says it "falls behind"."""


@dataclass(frozen=True)
class RoundingPair:
    """Two presets that differ only in rounding to nearest or stochastically, and the stem of
    their figure and CSV."""

    deterministic: str
    stochastic: str
    stem: str

    @property
    def methods(self) -> tuple[str, str]:
        return self.deterministic, self.stochastic

    @property
    def names(self) -> tuple[str, str]:
        """The two methods as the text names them: ``BQ``, ``UQ``, ``cq4-det``, ``cq4``."""
        det, stoch = self.methods
        return SHORT_NAMES.get(det, det), SHORT_NAMES.get(stoch, stoch)

    @property
    def title(self) -> str:
        return " − ".join(self.names)


SHORT_NAMES = {"bq": "BQ", "uq": "UQ"}
PAIRS = (
    RoundingPair("bq", "uq", "rounding-gap"),
    RoundingPair("cq4-det", "cq4", "rounding-gap-cq4"),
)


@dataclass(frozen=True)
class Band:
    """A per-round mean over seeds with its min and max over seeds."""

    rounds: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class RoundingGap:
    """A setting's paired seeds, deterministic − stochastic accuracy gap (points) and
    unchanged-code fractions per method."""

    pair: RoundingPair
    seeds: tuple[int, ...]
    gap: Band
    unchanged: dict[str, Band]


def _band(rounds: np.ndarray, values: np.ndarray) -> Band:
    """Mean, min and max over the rows (seeds) of ``values`` at ``rounds``."""
    return Band(rounds, values.mean(axis=0), values.min(axis=0), values.max(axis=0))


def _paired(setting: Setting, pair: RoundingPair) -> dict[str, list[Run]]:
    """The pair's runs of the seeds both ran, in seed order; empty lists if none."""
    by_seed = {m: {r.seed: r for r in setting.methods[m].runs} for m in pair.methods}
    seeds = sorted(set.intersection(*(set(runs) for runs in by_seed.values())))
    return {m: [by_seed[m][s] for s in seeds] for m in pair.methods}


def _unchanged(runs: Sequence[Run]) -> Band:
    """Seed mean, min and max of ``unchanged_codes`` at the rounds every run recorded it."""
    rounds, values = align([r.unchanged.rounds for r in runs], [r.unchanged.values for r in runs])
    return _band(rounds, values)


def rounding_gap(setting: Setting, pair: RoundingPair = PAIRS[0]) -> RoundingGap | None:
    """The rounding gap of ``setting``; None unless the pair shares a seed and an evaluated
    round."""
    if not all(m in setting.methods for m in pair.methods):
        return None
    paired = _paired(setting, pair)
    det, stoch = paired[pair.deterministic], paired[pair.stochastic]
    if not det:
        return None
    curves = [r.curve for r in (*det, *stoch)]
    rounds, accuracy = align([c.rounds for c in curves], [c.accuracy for c in curves])
    if not len(rounds):
        return None
    gap = 100 * (accuracy[: len(det)] - accuracy[len(det) :])
    return RoundingGap(
        pair,
        tuple(r.seed for r in det),
        _band(rounds, gap),
        {m: _unchanged(runs) for m, runs in paired.items()},
    )


def falls_behind(gap: Band, threshold: float = BEHIND) -> int | None:
    """The first evaluated round from which the mean gap is ≤ ``threshold`` at every later one;
    None if the last one is above it."""
    above = np.flatnonzero(gap.mean > threshold + TOLERANCE)
    start = above[-1] + 1 if above.size else 0
    return int(gap.rounds[start]) if start < len(gap.rounds) else None


def _points(value: float) -> str:
    return f"{value:.1f}".replace("-", "−")


def gap_summary(setting: Setting, result: RoundingGap) -> str:
    """One markdown line: the gap at the last common round and when the deterministic method
    stays behind."""
    gap, n, pair = result.gap, len(result.seeds), result.pair
    r0 = falls_behind(gap)
    behind = ": never" if r0 is None else f" from round {r0}"
    return (
        f"{setting.label}: {pair.title} at round {gap.rounds[-1]}: {_points(gap.mean[-1])} points "
        f"({_points(gap.low[-1])}…{_points(gap.high[-1])} over {n} seed{'s' * (n != 1)}); "
        f"{pair.names[0]} falls ≥ {-BEHIND:g} points behind{behind}"
    )


def _at(band: Band) -> dict[int, tuple[float, ...]]:
    """Round → (mean, min, max)."""
    return {
        int(r): tuple(float(v[i]) for v in (band.mean, band.low, band.high))
        for i, r in enumerate(band.rounds)
    }


def gap_rows(result: RoundingGap) -> list[dict[str, Any]]:
    """CSV rows, one per round with a gap or an unchanged fraction; empty cells where none."""
    gap = _at(result.gap)
    unchanged = {m: _at(band) for m, band in result.unchanged.items()}
    rounds = sorted(set(gap).union(*unchanged.values()))

    def cell(values: dict[int, tuple[float, ...]], r: int, i: int) -> Any:
        return round(values[r][i], 6) if r in values else ""

    return [
        {
            "round": r,
            "gap_mean": cell(gap, r, 0),
            "gap_min": cell(gap, r, 1),
            "gap_max": cell(gap, r, 2),
            "n_seeds": len(result.seeds),
            **{f"{m}_unchanged_mean": cell(unchanged[m], r, 0) for m in result.pair.methods},
        }
        for r in rounds
    ]


def _draw(ax: Any, band: Band, method: str, label: str, scale: float = 1.0) -> None:
    """``band`` as a line in ``method``'s colour with its min–max shaded."""
    lines = (scale * band.mean, scale * band.low, scale * band.high)
    draw_band(ax, band.rounds, lines, METHOD_COLORS[method], label)


def plot_rounding_gap(setting: Setting, result: RoundingGap, out_dir: Path) -> list[Path]:
    """Top: deterministic − stochastic accuracy (points) against round with a zero line; below,
    where the runs recorded it, the fraction of unchanged weight codes of both. Writes
    ``<stem>-<slug>.png`` and ``.svg``."""
    codes = {m: band for m, band in result.unchanged.items() if len(band.rounds)}
    fig = Figure(figsize=(7.5, 6.5 if codes else 4.0), layout="constrained")
    axes = fig.subplots(2 if codes else 1, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    n, pair = len(result.seeds), result.pair
    top.axhline(0, color="black", linewidth=0.8)
    _draw(top, result.gap, pair.deterministic, f"{pair.title}, mean over seeds (n={n})")
    top.set_ylabel(f"{pair.title} test accuracy (points)")
    top.legend(loc="lower left", fontsize=9)
    if codes:
        bottom = axes[1]
        for method, band in codes.items():
            _draw(bottom, band, method, METHOD_LABELS[method], scale=100)
        bottom.set_ylabel("weight codes unchanged,\ndownlink → uplink (%)")
        bottom.legend(loc="best", fontsize=9)
    axes[-1].set_xlabel("round")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    top.set_title(
        f"{setting.label}, {setting.get('num-server-rounds')} rounds\n"
        "rounding gap, paired by seed; shaded: min–max over seeds",
        fontsize=10,
    )
    return save_figure(fig, out_dir / f"{pair.stem}-{setting.slug}")


def write_rounding_gaps(settings: Sequence[Setting], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Figures and CSV for every setting and pair with a rounding gap; the files and the summary
    lines."""
    written: list[Path] = []
    lines: list[str] = []
    for setting in settings:
        for pair in PAIRS:
            result = rounding_gap(setting, pair)
            if result is None:
                continue
            written += plot_rounding_gap(setting, result, out_dir)
            csv_path = out_dir / f"{pair.stem}-{setting.slug}.csv"
            write_csv(csv_path, gap_rows(result))
            written.append(csv_path)
            lines.append(gap_summary(setting, result))
    return written, lines
