"""The frontier: a setting's final test accuracy against total bits per weight (up + down), one
point per run, one marker per method family, FP32's seed-mean final accuracy as the reference line.

Bits per weight of a run: the mean bytes of one uplink and one downlink message
(``Run.message_bytes``: every byte Flower carried, lossless tables and α/β included) over the
model's conv and linear weights (``messages.weight_count``), summed, so FP32 sits near 64. The
x axis is log2: each halving of the message is one step. Drawn as ``plots.save_figure`` draws,
so the same runs give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from experiments.reporting.messages import weight_count
from experiments.reporting.plots import colors_for, place_legend, save_figure
from experiments.reporting.runs import BASELINE, Run, Setting
from fp8fl.methods.family import Family
from fp8fl.methods.registry import family_of

__all__ = ["plot_frontier", "total_bits_per_weight"]


def total_bits_per_weight(run: Run, weights: int) -> float | None:
    """Bits of one uplink plus one downlink message per quantizable weight (None: not sent)."""
    up, down = run.message_bytes
    return None if up is None or down is None else 8 * (up + down) / weights


def _family(run: Run) -> Family[Any] | None:
    """The family of the run's method (its marker and label); None for a method the registry
    does not know."""
    try:
        return family_of(run.config["method"])
    except KeyError:
        return None


def plot_frontier(setting: Setting, out_dir: Path) -> list[Path]:
    """``frontier-<slug>.png/.svg`` for one setting; nothing when no run has both a final
    accuracy and message sizes, or the model's weight count is unknown."""
    weights = weight_count(setting.get("model"), setting.get("task"))
    if not weights:
        return []
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = colors_for(list(setting.methods))
    plotted = 0
    for method, result in setting.methods.items():
        points = [
            (bits, 100 * run.final_accuracy, _family(run))
            for run in result.runs
            if run.final_accuracy is not None
            and (bits := total_bits_per_weight(run, weights)) is not None
        ]
        if not points:
            continue
        x, y, families = zip(*points)
        family = families[0]
        marker = family.marker if family else "o"
        label = f"{result.label} ({family.label if family else 'unknown'}, n={len(points)})"
        ax.scatter(
            x, y, color=colors[method], marker=marker, s=36, alpha=0.75, label=label, zorder=3
        )
        if method == BASELINE and result.mean is not None:
            ax.axhline(result.mean, color=colors[method], linestyle="--", linewidth=1, zorder=1)
        plotted += 1
    if not plotted:
        return []
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight per round trip, up + down (log2 scale)")
    ax.set_ylabel("final server test accuracy (%)")
    ax.set_title(
        f"{setting.label}, {setting.get('num-server-rounds')} rounds: accuracy against bytes\n"
        "one point per run; marker: method family; dashed: FP32's seed-mean final accuracy",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    place_legend(fig, ax, "lower right")
    ax.set_xlim(*_limits(ax.get_xlim()))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    return save_figure(fig, out_dir / f"frontier-{setting.slug}")


def _limits(current: tuple[float, float]) -> tuple[float, float]:
    """Whole powers of two around the points, so that the ticks read 1, 2, 4, ... 64."""
    low, high = current
    return float(2 ** np.floor(np.log2(low))), float(2 ** np.ceil(np.log2(high)))
