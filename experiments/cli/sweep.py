"""``fp8fl-sweep``: run a grid of configurations, each through ``flwr run`` like any single run.

    fp8fl-sweep experiments/configs/lenet-cifar10.toml
    fp8fl-sweep experiments/configs/lenet-cifar10.toml --seeds 0 --set num-server-rounds=5 --dry-run
    fp8fl-sweep experiments/configs/lenet-cifar10-150-bytes.toml --seeds 1 2 --only 'iid-uq-context-*'

A sweep file (TOML) has three tables::

    [sweep]                      # name, results-dir (default results/sweeps/<name>), seeds
    [base]                       # run-config keys shared by every run
    [grid]                       # run-config keys with a list of values: the cartesian product

or, for several products, ``[[grid]]`` tables, each with optional ``seeds = [...]`` of its own.
``--seeds`` replaces every grid's seeds; ``--only`` keeps the runs whose names match one of its
shell-style patterns (e.g. the best configurations of a search, on more seeds).

Every configuration is validated before anything starts. Each run is ``fp8fl-flwr run .`` with
its run config (a TOML file) and a federation of ``num-clients`` virtual SuperNodes — the same
Flower simulation path as a single run, no private training loop. Its folder is
``<results-dir>/<grid values>-s<seed>/``; a run whose folder holds ``summary.json`` is finished and
skipped (if its recorded run config differs from the sweep file's, it is reported and kept, and
the sweep exits non-zero), and an unfinished one with a checkpoint continues from its last
completed round (``resume``), so an interrupted sweep resumes where it stopped. (An unfinished
folder without a checkpoint is kept, renamed ``…-incomplete-N``, and its run starts again.) A
failed run is reported and the sweep goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import itertools
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments.cli.run_outcome import reported_failure
from fp8fl.run.checkpoint import CHECKPOINT_FILE
from fp8fl.run.config import ConfigError, RunConfig, config_changes
from fp8fl.run.results import portable_path, read_rounds, resolve_results_dir, safe_name

__all__ = ["Sweep", "SweepRun", "load_sweep", "main", "run_sweep", "select_runs"]

PROJECT = Path(__file__).resolve().parents[2]
SECTIONS = ("sweep", "base", "grid")


@dataclass(frozen=True)
class SweepRun:
    name: str
    config: RunConfig

    def federation(self) -> str:
        return f"num-supernodes={self.config.num_clients} client-resources-num-cpus=1"


@dataclass(frozen=True)
class Sweep:
    name: str
    results_dir: Path
    runs: tuple[SweepRun, ...]


def load_sweep(
    path: Path, overrides: dict[str, Any] | None = None, seeds: list[int] | None = None
) -> Sweep:
    """Read a sweep file, apply ``--set`` overrides and ``--seeds``, and validate every run."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SystemExit(f"cannot read sweep file {path}: {err}") from None
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"{path}: unknown table(s) {unknown}; a sweep has {list(SECTIONS)}")
    meta, base, grid = (document.get(s, {}) for s in SECTIONS)
    name = meta.get("name") or Path(path).stem
    default_seeds = list(meta.get("seeds", [0]))
    base = {**base, **(overrides or {})}
    blocks = _grid_blocks(path, grid, default_seeds, seeds)
    results_dir = resolve_results_dir(meta.get("results-dir", f"results/sweeps/{name}"))
    runs, problems = [], []
    # seed-major: an unfinished sweep still compares every configuration
    for seed in sorted({s for _, block_seeds in blocks for s in block_seeds}):
        for block, block_seeds in blocks:
            if seed not in block_seeds:
                continue
            keys = list(block)
            for values in itertools.product(*(block[k] for k in keys)):
                run_name = "-".join([*(_name_part(v) for v in values), f"s{seed}"])
                mapping = {
                    **base,
                    **dict(zip(keys, values)),
                    "seed": seed,
                    "results-dir": portable_path(results_dir),
                    "run-name": run_name,
                }
                try:
                    runs.append(SweepRun(run_name, RunConfig.from_mapping(mapping)))
                except ConfigError as err:
                    problems.append(f"{run_name}: {err}")
    # the same point in two grids (e.g. after --seeds gave them one seed list) is one run
    unique: dict[str, SweepRun] = {}
    for run in runs:
        if unique.setdefault(run.name, run).config != run.config:
            problems.append(
                f"{run.name}: two grid points map to this run name; give the values distinct "
                "letters or digits"
            )
    if problems:
        raise SystemExit("invalid sweep:\n" + "\n".join(sorted(set(problems))))
    return Sweep(name, results_dir, tuple(unique.values()))


def select_runs(sweep: Sweep, patterns: list[str]) -> Sweep:
    """The runs of ``sweep`` whose names match one of the shell-style ``patterns``; a pattern that
    matches no run is refused, with the names it could have matched."""
    matches = {p: {r.name for r in sweep.runs if fnmatch.fnmatchcase(r.name, p)} for p in patterns}
    unmatched = [p for p, names in matches.items() if not names]
    if unmatched:
        names = ", ".join(r.name for r in sweep.runs)
        raise SystemExit(f"--only {' '.join(unmatched)}: no run of this sweep matches ({names})")
    chosen = set().union(*matches.values())
    return dataclasses.replace(sweep, runs=tuple(r for r in sweep.runs if r.name in chosen))


def _grid_blocks(
    path: Path, grid: dict | list, default_seeds: list[int], cli_seeds: list[int] | None
) -> list[tuple[dict[str, list], list[int]]]:
    """``[grid]`` is one cartesian product; ``[[grid]]`` several, each with optional ``seeds``
    (``--seeds`` replaces every seed list)."""
    blocks = []
    for raw in grid if isinstance(grid, list) else [grid]:
        block = dict(raw)
        seeds = block.pop("seeds", default_seeds)
        for key, values in block.items():
            if not isinstance(values, list) or not values:
                raise SystemExit(f"{path}: grid key {key!r} needs a non-empty list of values")
        blocks.append((block, list(cli_seeds if cli_seeds is not None else seeds)))
    return blocks


def _name_part(value: Any) -> str:
    """A grid value as part of a run (folder) name: no path separators or spaces."""
    return safe_name(str(value)) or "default"


def run_sweep(sweep: Sweep, console: Console | None = None) -> dict[str, str]:
    """Run every unfinished run of ``sweep`` in turn; return each run's status."""
    console = console or Console()
    sweep.results_dir.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, str] = {}
    with Progress(
        TextColumn("[bold]{task.fields[sweep]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("", total=len(sweep.runs), sweep=sweep.name)
        for run in sweep.runs:
            folder = sweep.results_dir / run.name
            if (folder / "summary.json").is_file():
                changed = recorded_changes(folder, run)
                statuses[run.name] = "differs" if changed else "done"
                if changed:
                    console.print(
                        f"[red]{run.name} finished with another run config[/] "
                        f"({'; '.join(changed)}): kept as it is; move its folder aside to run it "
                        "again with this sweep file's config",
                        soft_wrap=True,
                    )
                bar.advance(task)
                continue
            if (folder / CHECKPOINT_FILE).is_file():
                run = dataclasses.replace(
                    run, config=dataclasses.replace(run.config, resume=run.name)
                )
            elif folder.exists():
                _set_aside(folder)
            statuses[run.name] = _execute(run, sweep.results_dir, bar, task)
            if statuses[run.name] != "done":
                log = sweep.results_dir / f"{run.name}.log"
                cause = reported_failure(log) or "no cause in the log"
                console.print(f"[red]{run.name} failed[/]: {cause} (log: {log})", soft_wrap=True)
            bar.advance(task)
            _write_status(sweep, statuses)
    _write_status(sweep, statuses)
    return statuses


NOT_THE_RUN = frozenset({"resume", "run-name", "tracking", "results-dir"})
"""Run-config keys that say where and how a run is recorded, not what it computes."""


def recorded_changes(folder: Path, run: SweepRun) -> list[str]:
    """How the run config recorded in a finished ``folder`` differs from ``run``'s (empty when it
    is the same run): a sweep file edited after its runs finished must not pass them off as its
    own."""
    recorded = json.loads((folder / "config.json").read_text())["config"]
    return config_changes(recorded, run.config, NOT_THE_RUN)


def _execute(run: SweepRun, results_dir: Path, bar: Progress, task: Any) -> str:
    """One ``flwr run`` of ``run``, its output in ``<run>.log``; "done" or "failed"."""
    config_file = results_dir / f".{run.name}.run-config.toml"
    config_file.write_text(_to_toml(run.config.to_mapping()))
    command = [
        sys.executable,
        "-m",
        "experiments.cli.flwr_cli",
        "run",
        str(PROJECT),
        "--stream",
        "--verbose",  # the run's log file keeps Flower's whole log
        "--run-config",
        str(config_file),
        "--federation-config",
        run.federation(),
    ]
    rounds_dir = results_dir / run.name
    with open(results_dir / f"{run.name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            records = read_rounds(rounds_dir)
            last = records[-1] if records else {}
            acc = last.get("accuracy")
            bar.update(
                task,
                description=f"{run.name}: round {last.get('round', '-')}"
                f"/{run.config.num_server_rounds}"
                + ("" if acc is None else f", acc {100 * acc:.1f}%"),
            )
            time.sleep(2)
    config_file.unlink(missing_ok=True)
    return "done" if (rounds_dir / "summary.json").is_file() else "failed"


def _set_aside(folder: Path) -> None:
    """Keep an unfinished run's folder under a new name so that the run can start afresh."""
    for n in itertools.count(1):
        target = folder.with_name(f"{folder.name}-incomplete-{n}")
        if not target.exists():
            folder.rename(target)
            return


def _to_toml(mapping: dict[str, Any]) -> str:
    lines = []
    for key, value in mapping.items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars are valid TOML scalars
    return "\n".join(lines) + "\n"


def _write_status(sweep: Sweep, statuses: dict[str, str]) -> None:
    status = {
        "sweep": sweep.name,
        "runs": {r.name: statuses.get(r.name, "pending") for r in sweep.runs},
    }
    (sweep.results_dir / f"sweep-{sweep.name}.json").write_text(json.dumps(status, indent=2) + "\n")


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as TOML scalars (``lr=0.01``, ``method='uq'``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare word is a string
    return out


def _summary_table(sweep: Sweep, statuses: dict[str, str]) -> Table:
    table = Table(title=f"sweep {sweep.name}: {sweep.results_dir}")
    for column in ("run", "status", "final acc", "best acc", "MB sent"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for run in sweep.runs:
        summary_file = sweep.results_dir / run.name / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        final, best = summary.get("final_accuracy"), summary.get("best_accuracy")
        table.add_row(
            run.name,
            statuses.get(run.name, "pending"),
            "" if final is None else f"{100 * final:.2f}%",
            "" if best is None else f"{100 * best:.2f}%",
            "" if not summary else f"{summary['total_bytes'] / 1e6:.1f}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp8fl-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [base] run-config key (repeatable)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="replace the sweep's seeds")
    parser.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="run only the runs whose names match"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep_file, _parse_set(args.set), args.seeds)
    if args.only:
        sweep = select_runs(sweep, args.only)
    console = Console()
    if args.dry_run:
        for run in sweep.runs:
            folder = sweep.results_dir / run.name
            if (folder / "summary.json").is_file():
                changed = recorded_changes(folder, run)
                status = f"differs: {'; '.join(changed)}" if changed else "done"
            else:
                status = "to run"
            console.print(f"{run.name:40s} {status}", soft_wrap=True)
        return
    statuses = run_sweep(sweep, console)
    console.print(_summary_table(sweep, statuses))
    failed = [name for name, status in statuses.items() if status == "failed"]
    differs = [name for name, status in statuses.items() if status == "differs"]
    problems = [
        f"{len(names)} run(s) {what}: {', '.join(names)}"
        for names, what in ((failed, "failed"), (differs, "finished with another run config"))
        if names
    ]
    if problems:
        raise SystemExit("; ".join(problems))


if __name__ == "__main__":
    main()
