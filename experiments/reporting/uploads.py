"""Uploads and uplink bytes to a fixed accuracy, for settings with asynchronous (buffered) runs.

QAFeL (Ortega & Jafarkhani, arXiv:2410.00242) reports, per method, the client uploads and the MB
uploaded until the server model first reaches a target accuracy; this module writes that table
for every setting in which a buffered method (FedBuff, QAFeL) ran, next to the synchronous
methods of the same setting. A synchronous round of n clients counts n uploads, a buffered server
step its K. The target is one accuracy for the whole setting: by default the highest that every
method's seed-mean curve reaches, floored to a whole percent (so each method has a figure), or
``--target``. "Reached" is the first evaluated round at or above it, as in the communication gain
(``experiments.reporting.gain``). Downlink bytes are given too: a buffered server's broadcast goes
to every client (``strategies.buffered_loop``), a synchronous round's model only to its sample.

Writes ``uploads-<setting>.md/.csv`` and ``uplink-<setting>.png/.svg`` (accuracy against
cumulative uplink bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments.reporting.gain import TOLERANCE, Uplink, align
from experiments.reporting.plots import colors_for, draw_band, place_legend, save_figure
from experiments.reporting.runs import MethodResult, Setting
from experiments.reporting.tables import write_csv

__all__ = ["ToTarget", "setting_target", "to_target", "write_uploads"]

MB = 1e6
REFERENCE = "fedbuff"


@dataclass(frozen=True)
class ToTarget:
    """One method's seed-mean uplink ledger at the first evaluated round reaching the target."""

    method: str
    label: str
    seeds: int
    final: float | None
    round: int | None
    uploads: float | None
    bytes_up: float | None
    bytes_total: float | None
    staleness: np.ndarray


def _ledgers(result: MethodResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rounds evaluated in every seed, and there the (seeds × rounds) cumulative uploads, uplink
    bytes and accuracies."""
    ledgers: list[Uplink] = [r.uplink for r in result.runs if len(r.uplink.rounds)]
    if not ledgers:
        empty = np.zeros((1, 0))  # no rounds: the means are empty too
        return np.zeros(0, dtype=int), empty, empty, empty
    return align(
        [u.rounds for u in ledgers],
        [u.cum_uploads for u in ledgers],
        [u.cum_bytes_up for u in ledgers],
        [u.accuracy for u in ledgers],
    )


def setting_target(setting: Setting) -> float | None:
    """The highest accuracy every method's seed-mean curve reaches, floored to a whole percent."""
    bests = [float(r.curve.accuracy.max()) for r in setting.methods.values() if len(r.curve)]
    return math.floor(100 * min(bests) + TOLERANCE) / 100 if bests else None


def to_target(result: MethodResult, target: float) -> ToTarget:
    """``result``'s uploads and bytes when its seed-mean accuracy first reaches ``target``."""
    rounds, *per_seed = _ledgers(result)
    uploads, up, accuracy = (values.mean(axis=0) for values in per_seed)
    hits = np.flatnonzero(accuracy >= target - TOLERANCE)
    at = int(hits[0]) if hits.size else None
    total = None
    if at is not None:
        # total bytes (up + down) at that round, from the seed-mean accuracy curve's ledger
        index = np.flatnonzero(result.curve.rounds == rounds[at])
        total = float(result.curve.cum_bytes[index[0]]) if index.size else None
    staleness = np.concatenate([r.uplink.staleness for r in result.runs])
    return ToTarget(
        result.method,
        result.label,
        len(result.runs),
        result.mean,
        None if at is None else int(rounds[at]),
        None if at is None else float(uploads[at]),
        None if at is None else float(up[at]),
        total,
        staleness,
    )


def _mb(value: float | None) -> str:
    return "not reached" if value is None else f"{value / MB:,.1f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return "" if value is None or not reference else f"{reference / value:.2f}×"


def _staleness(values: np.ndarray) -> str:
    return f"{np.median(values):g} / {values.max()}" if values.size else "0 (synchronous)"


def _table(setting: Setting, target: float, rows: Sequence[ToTarget]) -> str:
    reference = next((r.bytes_up for r in rows if r.method == REFERENCE), None)
    lines = [
        f"### {setting.label}: uploads and MB to {100 * target:g} % test accuracy",
        "",
        "| method | seeds | final acc. (%) | round | uploads | MB up | uplink vs FedBuff "
        "| MB up + down | staleness median / max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        final = "" if r.final is None else f"{r.final:.2f}"
        uploads = "not reached" if r.uploads is None else f"{r.uploads:,.0f}"
        lines.append(
            f"| {r.label} | {r.seeds} | {final} | {r.round if r.round is not None else ''} "
            f"| {uploads} | {_mb(r.bytes_up)} | {_ratio(r.bytes_up, reference)} "
            f"| {_mb(r.bytes_total)} | {_staleness(r.staleness)} |"
        )
    return "\n".join(lines) + "\n"


def _csv_rows(setting: Setting, target: float, rows: Sequence[ToTarget]) -> list[dict[str, Any]]:
    return [
        {
            "setting": setting.label,
            "target_acc_pct": round(100 * target, 4),
            "method": r.method,
            "seeds": r.seeds,
            "final_accuracy_pct": "" if r.final is None else round(r.final, 4),
            "round": "" if r.round is None else r.round,
            "uploads": "" if r.uploads is None else r.uploads,
            "bytes_up": "" if r.bytes_up is None else r.bytes_up,
            "bytes_total": "" if r.bytes_total is None else r.bytes_total,
            "staleness_median": float(np.median(r.staleness)) if r.staleness.size else 0,
            "staleness_max": int(r.staleness.max()) if r.staleness.size else 0,
        }
        for r in rows
    ]


def _plot(setting: Setting, target: float, out_dir: Path) -> list[Path]:
    """Seed-mean accuracy against cumulative uplink bytes (log x), min–max band over seeds."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = colors_for(list(setting.methods))
    for method, result in setting.methods.items():
        _, _, up, accuracy = _ledgers(result)
        if not up.size:
            continue
        sent = up.mean(axis=0) > 0
        draw_band(
            ax,
            up.mean(axis=0)[sent],
            tuple(100 * a[sent] for a in (accuracy.mean(0), accuracy.min(0), accuracy.max(0))),
            colors[method],
            f"{result.label} (n={len(result.runs)})",
            band=len(accuracy) > 1,
        )
    ax.axhline(100 * target, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink (bytes, log scale)")
    ax.set_ylabel("server test accuracy (%)")
    ax.set_title(
        f"{setting.label}\nmean over seeds, shaded: min–max; dotted: the target {100 * target:g} %",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    place_legend(fig, ax, "best")
    return save_figure(fig, out_dir / f"uplink-{setting.slug}")


def write_uploads(
    settings: Sequence[Setting], out_dir: Path, target: float | None = None
) -> tuple[list[Path], list[str]]:
    """For each setting with a buffered method: the uploads table (markdown, CSV) and the uplink
    plot. Returns the files written and the markdown tables."""
    written: list[Path] = []
    texts: list[str] = []
    for setting in settings:
        if not any(r.identity.asynchronous for r in setting.methods.values()):
            continue
        level = target if target is not None else setting_target(setting)
        if level is None:
            continue
        rows = [to_target(result, level) for result in setting.methods.values()]
        text = _table(setting, level, rows)
        markdown, table = (out_dir / f"uploads-{setting.slug}.{ext}" for ext in ("md", "csv"))
        markdown.write_text(text)
        write_csv(table, _csv_rows(setting, level, rows))
        written += [markdown, table]
        written += _plot(setting, level, out_dir)
        texts.append(text)
    return written, texts
