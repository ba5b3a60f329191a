"""Fig. 4: a setting's test accuracy against cumulative bytes sent, one curve per method.

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot, so no GUI backend and no global figure
state): PNG goes through Agg, SVG keeps its text as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from experiments.reporting.gain import Gain, accuracy_range
from experiments.reporting.runs import BASELINE, Setting
from experiments.reporting.tables import gain_text
from fp8fl.methods.registry import METHODS

__all__ = [
    "METHOD_COLORS",
    "colors_for",
    "draw_band",
    "place_legend",
    "plot_setting",
    "save_figure",
]

METHOD_COLORS = {name: spec.color for name, spec in METHODS.items()}


def _spare_colors() -> tuple[str, ...]:
    """Colors no registered method has (Dark2's, then tab20's light shades), so that a variant
    (a changed key, a lossless mode, layer formats) never shares a color with a method."""
    taken = {matplotlib.colors.to_hex(c) for c in METHOD_COLORS.values()}
    palette = (*matplotlib.colormaps["Dark2"].colors, *matplotlib.colormaps["tab20"].colors[1::2])
    hexes = dict.fromkeys(matplotlib.colors.to_hex(c) for c in palette)
    return tuple(c for c in hexes if c not in taken)


OTHER_COLORS = _spare_colors()


def colors_for(methods: Sequence[str]) -> dict[str, str]:
    """A registered method keeps its color in every figure; others take the spare colors, in
    order (distinct up to ``len(OTHER_COLORS)`` of them, then repeating)."""
    others = [m for m in methods if m not in METHOD_COLORS]
    spare = {m: OTHER_COLORS[i % len(OTHER_COLORS)] for i, m in enumerate(others)}
    return {m: METHOD_COLORS.get(m) or spare[m] for m in methods}


def plot_setting(setting: Setting, out_dir: Path) -> list[Path]:
    """Fig. 4 for one setting: seed-mean test accuracy against cumulative bytes (log x), a
    min–max band over seeds, and an arrow at acc* from FP32's bytes to each method's with its
    gain. Writes ``fig4-<slug>.png`` and ``.svg``; nothing when no method has a curve."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = colors_for(list(setting.methods))
    plotted = 0
    for method, result in setting.methods.items():
        curve = result.curve
        sent = curve.cum_bytes > 0  # round 0 sent nothing: off a log axis
        if not sent.any():
            continue
        color = colors[method]
        low, high = accuracy_range([r.curve for r in result.runs])
        gain = (
            "" if method == BASELINE or result.gain is None else f", gain {gain_text(result.gain)}"
        )
        draw_band(
            ax,
            curve.cum_bytes[sent],
            (100 * curve.accuracy[sent], 100 * low[sent], 100 * high[sent]),
            color,
            f"{result.label} (n={len(result.runs)}{gain})",
            band=len(result.runs) > 1,
        )
        if method != BASELINE and result.gain is not None:
            _gain_arrow(ax, result.gain, color)
        plotted += 1
    if not plotted:
        return []
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication, up + down (bytes, log scale)")
    ax.set_ylabel("server test accuracy (%)")
    ax.set_title(
        f"{setting.label}, {setting.get('num-server-rounds')} rounds\n"
        "mean over seeds, shaded: min–max over seeds; "
        "arrows: bytes to first reach acc*, FP32 → method",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    place_legend(fig, ax, "lower right")
    return save_figure(fig, out_dir / f"fig4-{setting.slug}")


INSIDE_ENTRIES = 6
"""A legend of up to this many entries sits inside the axes; a longer one would cover data."""


def place_legend(fig: Figure, ax: Any, loc: str) -> None:
    """The legend at ``loc`` inside the axes for a few entries; beside them, on a figure
    widened by half, for more than ``INSIDE_ENTRIES``."""
    if len(ax.get_legend_handles_labels()[1]) <= INSIDE_ENTRIES:
        ax.legend(loc=loc, fontsize=9)
        return
    fig.set_figwidth(1.5 * fig.get_figwidth())
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def draw_band(
    ax: Any,
    x: np.ndarray,
    lines: tuple[np.ndarray, np.ndarray, np.ndarray],
    color: str,
    label: str,
    *,
    band: bool = True,
) -> None:
    """A mean line (markers where there are few points) and, with ``band``, its shaded min–max;
    ``lines`` is (mean, min, max)."""
    mean, low, high = lines
    ax.plot(x, mean, color=color, marker="o" if len(x) <= 30 else None, markersize=3, label=label)
    if band:
        ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg`` (text kept as text). Both files
    carry no date and the SVG's ids are salted by its name, so the same runs give the same
    bytes and a regenerated report shows in a diff only where a figure changed."""
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "svg")]
    metadata = {"png": {"Software": None}, "svg": {"Date": None}}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": stem.name}):
        for path in paths:
            fig.savefig(path, dpi=150, metadata=metadata[path.suffix[1:]])
    return paths


def _gain_arrow(ax: Any, gain: Gain, color: str) -> None:
    """An arrow at acc* from the bytes FP32 needed to the bytes the method needed (its value is
    in the legend: labels on nearly level arrows would overlap)."""
    y = 100 * gain.target
    ax.annotate(
        "",
        xy=(gain.method_bytes, y),
        xytext=(gain.baseline_bytes, y),
        arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.2},
    )
