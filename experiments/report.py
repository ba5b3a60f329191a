"""``fp8fl-report``: the paper's Tables 1–3 and Fig. 4 from finished runs' results folders.

    fp8fl-report results/sweeps/lenet-cifar10 --out reports/lenet-cifar10
    python -m experiments.report results /tmp/more-results --out /tmp/report

Every folder below the given ones that holds ``config.json`` is a run; it is finished when it also
holds ``summary.json``, and unfinished runs are left out (and listed). ``*-incomplete-N`` folders,
which ``fp8fl-sweep`` sets aside, are skipped.

Runs are grouped by *setting* and method, and aggregated over seeds. A setting is every run-config
key that changes what is trained or measured (task, model, split, the Dirichlet α of a Dirichlet
split, num-clients, format, num-server-rounds, lr, …) — not the method's switches, the seed, or
where and how the run was executed. A key that a method does not use is not part of its setting:
FP32 FedAvg (``qat = none``) uses no ``format`` or ``calibration-samples`` and only UQ+
(``server-opt = mse``) uses the ``server-opt-*`` keys, so one FP32 baseline serves every format.
When two finished runs share setting, method and seed, the one started last counts.

Written to ``--out``: ``table1.md/.csv`` (FP32, UQ, UQ+ and BQ: final accuracy mean ± std over
seeds / communication gain vs FP32, see ``experiments.gain``), ``table2`` (QAT without quantized
communication) and ``table3`` (deterministic vs stochastic communication) where those methods ran,
``runs.csv`` (one row per finished run) and ``fig4-<setting>.png/.svg`` (accuracy against
cumulative bytes).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.markdown import Markdown

from experiments.gain import (Curve, Gain, accuracy_range, communication_gain,
                              curve_from_rounds, mean_curve)

__all__ = ["Run", "Found", "MethodResult", "Setting", "TableSpec", "TABLES", "find_runs",
           "group_settings", "markdown_table", "csv_table", "plot_setting", "write_report",
           "main"]

Key = tuple[tuple[str, Any], ...]

BASELINE = "fp32"
METHOD_LABELS = {
    "fp32": "FP32 FedAvg", "uq": "FP8FedAvg-UQ", "uq+": "FP8FedAvg-UQ+", "bq": "BQ (det. comm.)",
    "qat-fp32wire": "det. QAT, FP32 comm.", "randqat-fp32wire": "rand. QAT, FP32 comm.",
}
METHOD_COLORS = {"fp32": "black", "uq": "tab:blue", "uq+": "tab:green", "bq": "tab:red",
                 "qat-fp32wire": "tab:purple", "randqat-fp32wire": "tab:brown"}
OTHER_COLORS = ("tab:orange", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
TASK_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "speechcommands": "SpeechCommands",
              "fsdd": "FSDD"}
MODEL_NAMES = {"lenet": "LeNet", "resnet18": "ResNet18", "matchboxnet": "MatchboxNet",
               "kwt1": "KWT-1"}
SPLIT_ORDER = ("iid", "dirichlet", "speaker")
# run-config keys that say how or where a run was executed, or which method it is: not a setting
NOT_SETTING = frozenset({"method", "qat", "wire", "server-opt", "seed", "eval-every",
                         "eval-batch-size", "results-dir", "run-name", "data-root", "device",
                         "resume"})
SERVER_OPT_KEYS = frozenset({"server-opt-steps", "server-opt-lrs", "server-opt-grid"})
LABELLED_KEYS = frozenset({"task", "model", "split", "dirichlet-alpha"})
INCOMPLETE = re.compile(r"-incomplete-\d+$")


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One finished run: its folder, run config, summary and accuracy-vs-bytes curve."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    curve: Curve
    started: str

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def method(self) -> str:
        """The run-config method; a ``custom`` one is told apart by its three switches."""
        method = self.config["method"]
        if method != "custom":
            return method
        switches = "/".join(str(self.config.get(k)) for k in ("qat", "wire", "server-opt"))
        return f"custom({switches})"

    @property
    def key(self) -> Key:
        """The setting keys this run uses, with their values (see the module docstring)."""
        unused = set(NOT_SETTING)
        if self.config.get("split") != "dirichlet":
            unused.add("dirichlet-alpha")
        if self.config.get("qat") == "none":
            unused |= {"format", "calibration-samples"}
        if self.config.get("server-opt") != "mse":
            unused |= SERVER_OPT_KEYS
        return tuple(sorted((k, _hashable(v)) for k, v in self.config.items() if k not in unused))

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")


@dataclass(frozen=True)
class Found:
    """What ``find_runs`` saw: finished runs, unfinished folders, unreadable folders and the
    runs left out as duplicates (with the run that counts instead)."""

    runs: list[Run]
    unfinished: list[Path]
    unreadable: list[tuple[Path, str]]
    duplicates: list[tuple[Run, Run]]


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value)


def _run_folders(root: Path) -> Iterator[Path]:
    """Folders at or below ``root`` holding ``config.json``, except set-aside incomplete ones."""
    for config_file in sorted(root.rglob("config.json")):
        parts = config_file.parent.relative_to(root).parts
        if not any(INCOMPLETE.search(part) for part in parts):
            yield config_file.parent.resolve()


def _read_run(folder: Path) -> Run:
    """A finished run folder (raises ValueError or OSError when a file cannot be read)."""
    document = json.loads((folder / "config.json").read_text())
    if not isinstance(document.get("config"), dict) or "method" not in document["config"]:
        raise ValueError("config.json has no run config")
    summary = json.loads((folder / "summary.json").read_text())
    lines = (folder / "rounds.jsonl").read_text().splitlines()
    curve = curve_from_rounds(json.loads(line) for line in lines if line.strip())
    return Run(folder, document["config"], summary, curve, str(document.get("started", "")))


def find_runs(dirs: Sequence[Path]) -> Found:
    """Read every run folder at or below ``dirs``; keep the latest run of each setting, method
    and seed."""
    folders = sorted({f for d in dirs for f in _run_folders(Path(d))})
    runs: list[Run] = []
    unfinished: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for folder in folders:
        if not (folder / "summary.json").is_file():
            unfinished.append(folder)
            continue
        try:
            runs.append(_read_run(folder))
        except (OSError, ValueError, KeyError, TypeError) as err:
            unreadable.append((folder, f"{type(err).__name__}: {err}"))
    latest: dict[tuple[Key, str, int], Run] = {}
    duplicates: list[tuple[Run, Run]] = []
    for run in sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True):
        kept = latest.setdefault((run.key, run.method, run.seed), run)
        if kept is not run:
            duplicates.append((run, kept))
    return Found(sorted(latest.values(), key=lambda r: (r.method, r.seed, r.run_id)), unfinished,
                 unreadable, duplicates)


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MethodResult:
    """A method's runs in one setting, its seed-mean curve and its gain over FP32."""

    method: str
    runs: tuple[Run, ...]
    curve: Curve
    gain: Gain | None

    @property
    def accuracies(self) -> np.ndarray:
        """Final test accuracies in %, one per seed that evaluated at least one round."""
        return 100 * np.asarray([r.final_accuracy for r in self.runs
                                 if r.final_accuracy is not None], dtype=float)

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float | None:
        return float(self.accuracies.mean()) if self.n else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1) over seeds; None for fewer than two."""
        return float(self.accuracies.std(ddof=1)) if self.n >= 2 else None

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)


@dataclass(frozen=True)
class Setting:
    """One setting: its keys, the keys that tell it apart from the others, and its methods."""

    key: Key
    extras: Key
    methods: dict[str, MethodResult]

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.key).get(name, default)

    @property
    def split_label(self) -> str:
        split = self.get("split")
        if split == "dirichlet":
            return f"Dir({self.get('dirichlet-alpha'):g})"
        return {"iid": "i.i.d.", "speaker": "speaker-id"}.get(split, str(split))

    @property
    def extras_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.extras)

    @property
    def label(self) -> str:
        parts = [TASK_NAMES.get(self.get("task"), self.get("task")),
                 MODEL_NAMES.get(self.get("model"), self.get("model")), self.split_label]
        return " · ".join(str(p) for p in parts if p) + (
            f" ({self.extras_label})" if self.extras else "")

    @property
    def slug(self) -> str:
        split = self.get("split") + (f"{self.get('dirichlet-alpha'):g}"
                                     if self.get("split") == "dirichlet" else "")
        parts = [self.get("task"), self.get("model"), split,
                 *(f"{k}{v}" for k, v in self.extras)]
        return re.sub(r"[^A-Za-z0-9.+=-]+", "_", "-".join(str(p) for p in parts))


def _method_order(method: str) -> tuple[int, str]:
    names = list(METHOD_LABELS)
    return (names.index(method) if method in names else len(names), method)


def _results(runs: Sequence[Run]) -> dict[str, MethodResult]:
    """Per method (FP32 first): its runs by seed, seed-mean curve and gain over FP32."""
    by_method: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        by_method.setdefault(run.method, []).append(run)
    curves = {m: mean_curve([r.curve for r in rs]) for m, rs in by_method.items()}
    baseline = curves.get(BASELINE)
    return {m: MethodResult(m, tuple(by_method[m]), curves[m],
                            communication_gain(baseline, curves[m]))
            for m in sorted(by_method, key=_method_order)}


def _sort_key(key: Key) -> tuple[Any, ...]:
    values = dict(key)
    split = values.get("split")
    return (str(values.get("task")), str(values.get("model")),
            SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), repr(key))


def group_settings(runs: Sequence[Run]) -> list[Setting]:
    """Group runs into settings. A setting is a maximal key; a run belongs to every setting whose
    keys include all of its own (so an FP32 run, without ``format``, is in every format's)."""
    keys = {run.key for run in runs}
    maximal = sorted((k for k in keys if not any(set(k) < set(other) for other in keys)),
                     key=_sort_key)
    values: dict[str, set[Any]] = {}
    for key in maximal:
        for name, value in key:
            values.setdefault(name, set()).add(value)
    distinguishing = {name for name, seen in values.items()
                      if len(seen) > 1 and name not in LABELLED_KEYS}
    return [Setting(key, tuple((k, v) for k, v in key if k in distinguishing),
                    _results([r for r in runs if set(r.key) <= set(key)]))
            for key in maximal]


# ---------------------------------------------------------------------------- tables
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
    TableSpec("table1", "Table 1: final test accuracy (%, mean ± std over seeds) / communication "
              "gain vs FP32 FedAvg",
              (("fp32", "FP32 FedAvg"), ("uq", "FP8FedAvg-UQ"), ("uq+", "FP8FedAvg-UQ+"),
               ("bq", "BQ (det. comm.)")), ("fp32", "uq", "uq+", "bq"), True),
    TableSpec("table2", "Table 2: final test accuracy (%, mean ± std over seeds) for "
              "deterministic/stochastic QAT without quantized communication",
              (("fp32", "FP32 FedAvg"), ("qat-fp32wire", "det. QAT"),
               ("randqat-fp32wire", "rand. QAT")), ("qat-fp32wire", "randqat-fp32wire"), False),
    TableSpec("table3", "Table 3: final test accuracy (%, mean ± std over seeds) / communication "
              "gain for deterministic (BQ) and stochastic (UQ) quantized communication (CQ)",
              (("fp32", "FP32 FedAvg"), ("bq", "det. CQ"), ("uq", "rand. CQ")), ("bq",), True),
)
GAIN_NOTE = ("Gain: bytes FP32 FedAvg sent until it first reached acc* ÷ bytes the method sent "
             "until it first reached acc*, where acc* is the lower of the two best accuracies, "
             "on seed-mean curves; — where undefined.")


def _rows_and_columns(spec: TableSpec, settings: Sequence[Setting]
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


def _gain_text(gain: Gain | None) -> str:
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
    header = ["Task", "Model", "Split", *(["Setting"] if with_extras else []), "Rounds", "Seeds",
              *(h for _, h in columns)]
    lines = [[TASK_NAMES.get(s.get("task"), s.get("task")),
              MODEL_NAMES.get(s.get("model"), s.get("model")), s.split_label,
              *([s.extras_label] if with_extras else []), str(s.get("num-server-rounds", "")),
              _seeds_cell(s, columns),
              *(_cell(spec, s.methods.get(m)) for m, _ in columns)] for s in rows]
    if spec.gains:
        lines.append(["Average gain", "", "", *([""] if with_extras else []), "", "",
                      *(_average_gain(rows, m) for m, _ in columns)])
    text = [f"**{spec.title}**", "", _markdown_row(header),
            _markdown_row(["---"] * len(header)), *(_markdown_row(line) for line in lines)]
    return "\n".join(text + (["", GAIN_NOTE] if spec.gains else [])) + "\n"


def _cell(spec: TableSpec, result: MethodResult | None) -> str:
    accuracy = _accuracy_cell(result)
    if not spec.gains or result is None:
        return accuracy
    return f"{accuracy} / {_gain_text(result.gain)}"


def _average_gain(rows: Sequence[Setting], method: str) -> str:
    gains = [s.methods[method].gain.value for s in rows
             if method in s.methods and s.methods[method].gain is not None]
    return f"{np.mean(gains):.1f}×" if gains else "—"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def csv_table(spec: TableSpec, settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """``spec``'s rows for CSV: the setting's keys, then per method n, accuracy mean and std in %
    (and the gain with its acc* in % for gain tables); empty where not applicable."""
    rows, columns = _rows_and_columns(spec, settings)
    out = []
    for s in rows:
        row: dict[str, Any] = {"setting": s.label, "task": s.get("task"), "model": s.get("model"),
                               "split": s.get("split"),
                               "dirichlet_alpha": s.get("dirichlet-alpha", ""),
                               "num_clients": s.get("num-clients", ""),
                               "format": s.get("format", ""),
                               "rounds": s.get("num-server-rounds", "")}
        for method, _ in columns:
            row.update(_csv_cells(method, s.methods.get(method), spec.gains))
        out.append(row)
    return out


def _csv_cells(method: str, result: MethodResult | None, gains: bool) -> dict[str, Any]:
    gain = result.gain if result else None
    cells = {f"{method}_n": result.n if result else 0,
             f"{method}_acc_mean_pct": _number(result.mean if result else None),
             f"{method}_acc_std_pct": _number(result.std if result else None)}
    if gains:
        cells[f"{method}_gain"] = _number(gain.value if gain else None)
        cells[f"{method}_gain_acc_pct"] = _number(100 * gain.target if gain else None)
    return cells


def _number(value: float | None) -> Any:
    return "" if value is None else round(value, 4)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_rows(found: Found, settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """One row per finished run; a duplicate says which run counts instead."""
    labels: dict[Path, list[str]] = {}
    for setting in settings:
        for result in setting.methods.values():
            for run in result.runs:
                labels.setdefault(run.path, []).append(setting.label)
    notes = {run.path: f"not counted: same setting, method and seed as {kept.path}"
             for run, kept in found.duplicates}
    rows = []
    for run in sorted([*found.runs, *(d for d, _ in found.duplicates)],
                      key=lambda r: (r.method, r.seed, r.started, str(r.path))):
        s = run.summary
        rows.append({
            "run_id": run.run_id, "setting": "; ".join(labels.get(run.path, [])),
            "method": run.method, "seed": run.seed,
            "final_accuracy_pct": _number(_percent(s.get("final_accuracy"))),
            "best_accuracy_pct": _number(_percent(s.get("best_accuracy"))),
            "best_round": s.get("best_round", ""), "rounds": s.get("rounds", ""),
            "total_bytes": s.get("total_bytes", ""), "bytes_up": s.get("bytes_up", ""),
            "bytes_down": s.get("bytes_down", ""), "wall_s": _number(s.get("wall_s")),
            "path": str(run.path), "note": notes.get(run.path, "")})
    return rows


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


# ---------------------------------------------------------------------------- Fig. 4
def _colors(methods: Sequence[str]) -> dict[str, str]:
    """The paper's methods keep one color in every figure; others take the spare colors."""
    others = [m for m in methods if m not in METHOD_COLORS]
    spare = {m: OTHER_COLORS[i % len(OTHER_COLORS)] for i, m in enumerate(others)}
    return {m: METHOD_COLORS.get(m) or spare[m] for m in methods}


def plot_setting(setting: Setting, out_dir: Path) -> list[Path]:
    """Fig. 4 for one setting: seed-mean test accuracy against cumulative bytes (log x), a
    min–max band over seeds, and an arrow at acc* from FP32's bytes to each method's with its
    gain. Writes ``fig4-<slug>.png`` and ``.svg``; nothing when no method has a curve."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = _colors(list(setting.methods))
    plotted = 0
    for method, result in setting.methods.items():
        curve = result.curve
        sent = curve.cum_bytes > 0  # round 0 sent nothing: off a log axis
        if not sent.any():
            continue
        color = colors[method]
        low, high = accuracy_range([r.curve for r in result.runs])
        gain = ("" if method == BASELINE or result.gain is None
                else f", gain {_gain_text(result.gain)}")
        ax.plot(curve.cum_bytes[sent], 100 * curve.accuracy[sent], color=color,
                marker="o" if sent.sum() <= 30 else None, markersize=3,
                label=f"{result.label} (n={len(result.runs)}{gain})")
        if len(result.runs) > 1:
            ax.fill_between(curve.cum_bytes[sent], 100 * low[sent], 100 * high[sent],
                            color=color, alpha=0.15, linewidth=0)
        if method != BASELINE and result.gain is not None:
            _gain_arrow(ax, result.gain, color)
        plotted += 1
    if not plotted:
        return []
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication, up + down (bytes, log scale)")
    ax.set_ylabel("server test accuracy (%)")
    ax.set_title(f"{setting.label}, {setting.get('num-server-rounds')} rounds\n"
                 "mean over seeds, shaded: min–max over seeds; "
                 "arrows: bytes to first reach acc*, FP32 → method",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    paths = [out_dir / f"fig4-{setting.slug}.{ext}" for ext in ("png", "svg")]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text
        for path in paths:
            fig.savefig(path, dpi=150)
    return paths


def _gain_arrow(ax: Any, gain: Gain, color: str) -> None:
    """An arrow at acc* from the bytes FP32 needed to the bytes the method needed (its value is
    in the legend: labels on nearly level arrows would overlap)."""
    y = 100 * gain.target
    ax.annotate("", xy=(gain.method_bytes, y), xytext=(gain.baseline_bytes, y),
                arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.2})


# ---------------------------------------------------------------------------- the report
def write_report(dirs: Sequence[Path], out_dir: Path, console: Console | None = None
                 ) -> list[Path]:
    """Read the runs below ``dirs`` and write the tables, ``runs.csv`` and the figures to
    ``out_dir``; print the tables. Raises SystemExit when no finished run is found."""
    console = console or Console()
    for d in dirs:
        if not Path(d).is_dir():
            raise SystemExit(f"not a folder: {d}")
    found = find_runs(dirs)
    _print_found(found, console)
    if not found.runs:
        raise SystemExit("no finished run (a run folder with summary.json) below "
                         + ", ".join(str(d) for d in dirs))
    settings = group_settings(found.runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in TABLES:
        text = markdown_table(spec, settings)
        if text is None:
            continue
        (out_dir / f"{spec.name}.md").write_text(text)
        _write_csv(out_dir / f"{spec.name}.csv", csv_table(spec, settings))
        written += [out_dir / f"{spec.name}.md", out_dir / f"{spec.name}.csv"]
        console.print(Markdown(text))
    _write_csv(out_dir / "runs.csv", _run_rows(found, settings))
    written.append(out_dir / "runs.csv")
    for setting in settings:
        written += plot_setting(setting, out_dir)
    console.print(f"{len(found.runs)} runs in {len(settings)} setting(s); wrote "
                  f"{len(written)} files to {out_dir}")
    return written


def _print_found(found: Found, console: Console) -> None:
    for folder in found.unfinished:
        console.print(f"[yellow]left out, unfinished (no summary.json):[/] {folder}")
    for folder, reason in found.unreadable:
        console.print(f"[red]left out, unreadable:[/] {folder}: {reason}")
    for run, kept in found.duplicates:
        console.print(f"[yellow]left out, same setting, method and seed as {kept.path}:[/] "
                      f"{run.path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp8fl-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dirs", nargs="+", type=Path, metavar="RESULTS_DIR",
                        help="a results folder, a sweep folder or a run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for tables and figures")
    args = parser.parse_args(argv)
    write_report(args.results_dirs, args.out)


if __name__ == "__main__":
    main()
