"""The paper's Tables 1–3 and the per-run listing, as markdown and CSV.

Table 1 has FP32, UQ, UQ+ and BQ: final accuracy mean ± std over seeds / communication gain vs
FP32 (see ``experiments.reporting.gain``); Table 2 QAT without quantized communication; Table 3
deterministic vs stochastic communication. A table is written only where its methods ran.

Beside the measured rows of CIFAR10 · LeNet (i.i.d., or Dirichlet with the paper's α = 0.3) a
``paper`` row gives the numbers Wang et al. 2024 report for that setting (``PAPER``), which ran
1000 rounds × 5 local epochs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.reporting.gain import Gain
from experiments.reporting.runs import (
    METHOD_LABELS,
    MODEL_NAMES,
    TASK_NAMES,
    Found,
    MethodResult,
    Setting,
)

__all__ = [
    "PAPER",
    "TABLES",
    "PaperCell",
    "TableSpec",
    "csv_table",
    "gain_text",
    "markdown_table",
    "run_rows",
    "write_csv",
]


@dataclass(frozen=True)
class TableSpec:
    """A paper table: its columns (method, header), the methods that make a setting one of its
    rows, and whether cells carry the communication gain."""

    name: str
    title: str
    columns: tuple[tuple[str, str], ...]
    row_methods: tuple[str, ...]
    gains: bool


TABLES = (
    TableSpec(
        "table1",
        "Table 1: final test accuracy (%, mean ± std over seeds) / communication "
        "gain vs FP32 FedAvg",
        tuple((m, METHOD_LABELS[m]) for m in ("fp32", "uq", "uq+", "bq")),
        ("fp32", "uq", "uq+", "bq"),
        True,
    ),
    TableSpec(
        "table2",
        "Table 2: final test accuracy (%, mean ± std over seeds) for "
        "deterministic/stochastic QAT without quantized communication",
        (
            ("fp32", METHOD_LABELS["fp32"]),
            ("qat-fp32wire", "det. QAT"),
            ("randqat-fp32wire", "rand. QAT"),
        ),
        ("qat-fp32wire", "randqat-fp32wire"),
        False,
    ),
    TableSpec(
        "table3",
        "Table 3: final test accuracy (%, mean ± std over seeds) / communication "
        "gain for deterministic (BQ) and stochastic (UQ) quantized communication (CQ)",
        (("fp32", METHOD_LABELS["fp32"]), ("bq", "det. CQ"), ("uq", "rand. CQ")),
        ("bq",),
        True,
    ),
)


@dataclass(frozen=True)
class PaperCell:
    """A number the paper prints: final accuracy (%, mean ± std over 3 seeds) and its gain."""

    mean: float
    std: float
    gain: float | None = None


# Wang et al. 2024 (arXiv:2407.02610), CIFAR10 with LeNet, E4M3, K = 100 clients, C = 0.1,
# R = 1000 rounds × 5 local epochs (§5.1). Table 1: "Final test accuracy and communication gain
# compared to FP32 FedAvg" (no BQ column). Table 3: deterministic (det. CQ = BQ) vs stochastic
# (rand. CQ = UQ) quantized communication, i.i.d. only, accuracy only: it prints no gains.
PAPER: dict[tuple[str, str, str, str], dict[str, PaperCell]] = {
    ("table1", "cifar10", "lenet", "iid"): {
        "fp32": PaperCell(82.1, 0.1, 1.0),
        "uq": PaperCell(82.0, 0.1, 4.1),
        "uq+": PaperCell(82.2, 0.3, 4.7),
    },
    ("table1", "cifar10", "lenet", "dirichlet"): {  # Dir(0.3)
        "fp32": PaperCell(77.1, 0.4, 1.0),
        "uq": PaperCell(77.3, 0.9, 3.9),
        "uq+": PaperCell(77.7, 0.5, 3.9),
    },
    ("table3", "cifar10", "lenet", "iid"): {
        "fp32": PaperCell(82.1, 0.1),
        "bq": PaperCell(80.1, 0.1),
        "uq": PaperCell(82.0, 0.1),
    },
}
PAPER_ALPHA = 0.3
PAPER_FORMAT = "e4m3"
PAPER_RUN = "1000 rounds × 5 local epochs"
PAPER_NOTE = (
    "paper: Wang et al. 2024 (arXiv:2407.02610), {table}, with E4M3, 100 clients at 10 % "
    f"participation and {PAPER_RUN} per client: not the rounds and local epochs of the "
    "measured rows; — where the paper's table has no such number."
)

GAIN_NOTE = (
    "Gain: bytes FP32 FedAvg sent until it first reached acc* ÷ bytes the method sent "
    "until it first reached acc*, where acc* is the lower of the two best accuracies, "
    "on seed-mean curves; — where undefined."
)


def _rows_and_columns(
    spec: TableSpec, settings: Sequence[Setting]
) -> tuple[list[Setting], list[tuple[str, str]]]:
    """The settings that are rows of ``spec``, and its columns whose method ran in one of them."""
    rows = [s for s in settings if any(m in s.methods for m in spec.row_methods)]
    columns = [(m, h) for m, h in spec.columns if any(m in s.methods for s in rows)]
    return rows, columns


def _accuracy_cell(result: MethodResult | None) -> str:
    if result is None or result.mean is None:
        return "—"
    spread = "(n=1)" if result.std is None else f"± {result.std:.1f}"
    return f"{result.mean:.1f} {spread}"


def gain_text(gain: Gain | None) -> str:
    """A gain as ``4.0×``; ``—`` where undefined (tables and Fig. 4 legends alike)."""
    return "—" if gain is None else f"{gain.value:.1f}×"


def _seeds_cell(setting: Setting, columns: Sequence[tuple[str, str]]) -> str:
    counts = [setting.methods[m].n for m, _ in columns if m in setting.methods]
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}–{high}"


def markdown_table(spec: TableSpec, settings: Sequence[Setting]) -> str | None:
    """``spec`` as a markdown table (title, table, an average-gain row and the gain's definition
    for gain tables); None when none of its row methods ran."""
    rows, columns = _rows_and_columns(spec, settings)
    if not rows:
        return None
    with_extras = any(s.extras for s in rows)
    header = [
        "Task",
        "Model",
        "Split",
        *(["Setting"] if with_extras else []),
        "Rounds",
        "Seeds",
        *(h for _, h in columns),
    ]
    lines = []
    for s in rows:
        lines.append(
            [
                TASK_NAMES.get(s.get("task"), s.get("task")),
                MODEL_NAMES.get(s.get("model"), s.get("model")),
                s.split_label,
                *([s.extras_label] if with_extras else []),
                str(s.get("num-server-rounds", "")),
                _seeds_cell(s, columns),
                *(_cell(spec, s.methods.get(m)) for m, _ in columns),
            ]
        )
        paper = paper_cells(spec, s)
        if paper is not None:
            lines.append(
                [
                    "paper",
                    "",
                    s.split_label,
                    *([""] if with_extras else []),
                    "1000 (× 5 local epochs)",
                    "3",
                    *(_paper_cell(spec, paper.get(m)) for m, _ in columns),
                ]
            )
    if spec.gains:
        lines.append(
            [
                "Average gain",
                "",
                "",
                *([""] if with_extras else []),
                "",
                "",
                *(_average_gain(rows, m) for m, _ in columns),
            ]
        )
    text = [
        f"**{spec.title}**",
        "",
        _markdown_row(header),
        _markdown_row(["---"] * len(header)),
        *(_markdown_row(line) for line in lines),
    ]
    notes = [GAIN_NOTE] if spec.gains else []
    if any(paper_cells(spec, s) is not None for s in rows):
        notes.append(PAPER_NOTE.format(table=_paper_table(spec)))
    return "\n".join(text + [x for note in notes for x in ("", note)]) + "\n"


def _paper_table(spec: TableSpec) -> str:
    return spec.name.replace("table", "Table ")


def paper_cells(spec: TableSpec, setting: Setting) -> dict[str, PaperCell] | None:
    """The paper's numbers for ``setting``'s row of ``spec``: only where its task, model, split
    (Dirichlet α) and format are the paper's and the paper's table has that row."""
    key = (spec.name, setting.get("task"), setting.get("model"), setting.get("split"))
    if setting.get("split") == "dirichlet" and setting.get("dirichlet-alpha") != PAPER_ALPHA:
        return None
    if setting.get("format", PAPER_FORMAT) != PAPER_FORMAT:
        return None
    return PAPER.get(key)


def _paper_cell(spec: TableSpec, cell: PaperCell | None) -> str:
    if cell is None:
        return "—"
    accuracy = f"{cell.mean:.1f} ± {cell.std:.1f}"
    if not spec.gains:
        return accuracy
    return f"{accuracy} / {'—' if cell.gain is None else f'{cell.gain:.1f}×'}"


def _cell(spec: TableSpec, result: MethodResult | None) -> str:
    accuracy = _accuracy_cell(result)
    if not spec.gains or result is None:
        return accuracy
    return f"{accuracy} / {gain_text(result.gain)}"


def _average_gain(rows: Sequence[Setting], method: str) -> str:
    gains = [
        s.methods[method].gain.value
        for s in rows
        if method in s.methods and s.methods[method].gain is not None
    ]
    return f"{np.mean(gains):.1f}×" if gains else "—"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def csv_table(spec: TableSpec, settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """``spec``'s rows for CSV: the setting's keys, then per method n, accuracy mean and std in %
    (and the gain with its acc* in % for gain tables); empty where not applicable."""
    rows, columns = _rows_and_columns(spec, settings)
    out = []
    for s in rows:
        row: dict[str, Any] = {
            "setting": s.label,
            "task": s.get("task"),
            "model": s.get("model"),
            "split": s.get("split"),
            "dirichlet_alpha": s.get("dirichlet-alpha", ""),
            "num_clients": s.get("num-clients", ""),
            "format": s.get("format", ""),
            "rounds": s.get("num-server-rounds", ""),
        }
        for method, _ in columns:
            row.update(_csv_cells(method, s.methods.get(method), spec.gains))
        if any(key[0] == spec.name for key in PAPER):
            row.update(_paper_csv_cells(spec, s, columns))
        out.append(row)
    return out


def _paper_csv_cells(
    spec: TableSpec, setting: Setting, columns: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """The paper's numbers for the row (empty where it has none) and where they come from."""
    paper = paper_cells(spec, setting)
    source = f"Wang et al. 2024 {_paper_table(spec)}, {PAPER_RUN}" if paper else ""
    cells: dict[str, Any] = {"paper_source": source}
    for method, _ in columns:
        cell = (paper or {}).get(method)
        cells[f"paper_{method}_acc_mean_pct"] = _number(cell.mean if cell else None)
        cells[f"paper_{method}_acc_std_pct"] = _number(cell.std if cell else None)
        if spec.gains:
            cells[f"paper_{method}_gain"] = _number(cell.gain if cell else None)
    return cells


def _csv_cells(method: str, result: MethodResult | None, gains: bool) -> dict[str, Any]:
    gain = result.gain if result else None
    cells = {
        f"{method}_n": result.n if result else 0,
        f"{method}_acc_mean_pct": _number(result.mean if result else None),
        f"{method}_acc_std_pct": _number(result.std if result else None),
    }
    if gains:
        cells[f"{method}_gain"] = _number(gain.value if gain else None)
        cells[f"{method}_gain_acc_pct"] = _number(100 * gain.target if gain else None)
    return cells


def _number(value: float | None) -> Any:
    return "" if value is None else round(value, 4)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_rows(found: Found, settings: Sequence[Setting], base: Path) -> list[dict[str, Any]]:
    """One row per finished run; a duplicate says which run counts instead. Paths are relative to
    ``base`` (the folder given to ``fp8fl-report``), so that the file holds no path of this
    machine."""

    def where(path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()

    labels: dict[Path, list[str]] = {}
    for setting in settings:
        for result in setting.methods.values():
            for run in result.runs:
                labels.setdefault(run.path, []).append(setting.label)
    notes = {
        run.path: f"not counted: same setting, method and seed as {where(kept.path)}"
        for run, kept in found.duplicates
    }
    rows = []
    for run in sorted(
        [*found.runs, *(d for d, _ in found.duplicates)],
        key=lambda r: (r.method, r.seed, r.started, str(r.path)),
    ):
        s = run.summary
        rows.append(
            {
                "run_id": run.run_id,
                "setting": "; ".join(labels.get(run.path, [])),
                "method": run.method,
                "seed": run.seed,
                "final_accuracy_pct": _number(_percent(s.get("final_accuracy"))),
                "best_accuracy_pct": _number(_percent(s.get("best_accuracy"))),
                "best_round": s.get("best_round", ""),
                "rounds": s.get("rounds", ""),
                "total_bytes": s.get("total_bytes", ""),
                "bytes_up": s.get("bytes_up", ""),
                "bytes_down": s.get("bytes_down", ""),
                "wall_s": _number(s.get("wall_s")),
                "cpu": "; ".join(run.cpus),
                "path": where(run.path),
                "note": notes.get(run.path, ""),
            }
        )
    return rows


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value
