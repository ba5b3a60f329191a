"""Milestones: the round, and the bytes, at which each method first reaches given accuracies.

For every setting and method, on its seed-mean curve (``gain.mean_curve``: mean accuracy and mean
bytes at the rounds evaluated in every seed): the first evaluated round whose accuracy is ≥ each
threshold (up to ``gain.TOLERANCE``, as the gain counts it) and the bytes sent both ways until then;
"—" where the curve never gets there. Beside them, the rounds at which the seeds themselves first
got there (first–last), since a seed-mean crossing hides how far apart the seeds cross, and how
many seeds did. The paper's budget is read against rounds to 70, 75 and 80 %; the default
thresholds reach down to 50 % for the shorter settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.reporting.gain import TOLERANCE, Curve
from experiments.reporting.runs import MethodResult, Setting
from experiments.reporting.tables import write_csv

__all__ = ["THRESHOLDS", "first_round", "milestone_rows", "write_milestones"]

THRESHOLDS = (50.0, 60.0, 70.0, 75.0, 80.0)
"""Default accuracies (%) whose first crossing is reported."""


def first_round(curve: Curve, target: float) -> tuple[int, float] | None:
    """(round, cumulative bytes) at the first evaluated round with accuracy ≥ ``target`` (a
    fraction); None if the curve never gets there."""
    hits = np.flatnonzero(curve.accuracy >= target - TOLERANCE)
    return (int(curve.rounds[hits[0]]), float(curve.cum_bytes[hits[0]])) if hits.size else None


def _rows(setting: Setting, result: MethodResult, thresholds: Sequence[float]) -> list[dict]:
    rows = []
    for percent in thresholds:
        reached = first_round(result.curve, percent / 100)
        seeds = [first_round(run.curve, percent / 100) for run in result.runs]
        seed_rounds = [hit[0] for hit in seeds if hit is not None]
        rows.append(
            {
                "setting": setting.label,
                "method": result.method,
                "label": result.label,
                "seeds": len(result.runs),
                "threshold_pct": percent,
                "round": None if reached is None else reached[0],
                "total_bytes": None if reached is None else reached[1],
                "seeds_reaching": len(seed_rounds),
                "first_seed_round": min(seed_rounds, default=None),
                "last_seed_round": max(seed_rounds, default=None),
            }
        )
    return rows


def milestone_rows(setting: Setting, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """One row per method of ``setting`` and threshold (%), in the setting's method order."""
    return [row for r in setting.methods.values() for row in _rows(setting, r, thresholds)]


def _cell(row: dict[str, Any]) -> str:
    gigabytes = None if row["round"] is None else row["total_bytes"] / 1e9
    reached = "—" if gigabytes is None else f"r{row['round']}, {gigabytes:.2f} GB"
    if row["seeds"] < 2 or not row["seeds_reaching"]:
        return reached
    spread = f"{row['first_seed_round']}–{row['last_seed_round']}"
    if row["seeds_reaching"] < row["seeds"]:
        spread += f", {row['seeds_reaching']} of {row['seeds']} seeds"
    return f"{reached} [{spread}]"


def _markdown(setting: Setting, rows: Sequence[dict], thresholds: Sequence[float]) -> str:
    header = " | ".join(f"{t:g} %" for t in thresholds)
    lines = [
        f"### {setting.label}: rounds to accuracy",
        "",
        f"| method | seeds | {header} |",
        "|---|---|" + "---|" * len(thresholds),
    ]
    for label in dict.fromkeys(r["label"] for r in rows):
        cells = [r for r in rows if r["label"] == label]
        lines.append(f"| {label} | {cells[0]['seeds']} | " + " | ".join(map(_cell, cells)) + " |")
    notes = (
        "Each cell: the first evaluated round at which the seed-mean test accuracy reached the "
        "threshold, and the bytes sent both ways until then; in brackets, the first and the "
        "last seed's own first round there (and how many seeds got there, if not all)."
    )
    return "\n".join([*lines, "", notes]) + "\n"


def write_milestones(
    settings: Sequence[Setting], out_dir: Path, thresholds: Sequence[float] = THRESHOLDS
) -> tuple[list[Path], str]:
    """``milestones.md`` and ``milestones.csv`` over all settings; returns them and the markdown."""
    tables, rows = [], []
    for setting in settings:
        setting_rows = milestone_rows(setting, thresholds)
        tables.append(_markdown(setting, setting_rows, thresholds))
        rows += setting_rows
    text = "\n".join(tables)
    (out_dir / "milestones.md").write_text(text)
    write_csv(out_dir / "milestones.csv", rows)
    return [out_dir / "milestones.md", out_dir / "milestones.csv"], text
