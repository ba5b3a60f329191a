"""``fp8fl-report``: the paper's Tables 1–3 and Fig. 4 from finished runs' results folders.

    fp8fl-report results/sweeps/lenet-cifar10 --out reports/lenet-cifar10
    python -m experiments.reporting.report results /tmp/more-results --out /tmp/report

Finds the finished runs below the given folders and groups them into settings
(``experiments.reporting.runs``, which says what a setting is and which runs are left out), then
writes to ``--out``:

* ``table1.md/.csv``, ``table2`` and ``table3`` where their methods ran
  (``experiments.reporting.tables``), and ``runs.csv``, one row per finished run, its path
  relative to the folder given (with several, to the folder that holds them all);
* ``messages.md/.csv``: bytes and bits per weight of one message per direction, final accuracy
  (mean ± std) and the gain over FP32 on total and on uplink bytes
  (``experiments.reporting.messages``);
* ``milestones.md/.csv``: the round and the bytes at which each method's seed-mean curve first
  reaches each of some accuracies (``--milestones``; ``experiments.reporting.milestones``);
* ``fig4-<setting>.png/.svg``: accuracy against cumulative bytes (``experiments.reporting.plots``);
* ``frontier-<setting>.png/.svg``: each run's final accuracy against its bits per weight, up + down
  (``experiments.reporting.frontier``);
* where BQ and UQ both ran, ``rounding-gap-<setting>.png/.svg/.csv``, and where cq4-det and cq4
  did, ``rounding-gap-cq4-<setting>``: the gap of deterministic rounding behind stochastic
  (``experiments.reporting.rounding``);
* where a buffered method (FedBuff, QAFeL) ran, ``uploads-<setting>.md/.csv`` and
  ``uplink-<setting>.png/.svg``: uploads and MB to a fixed accuracy
  (``experiments.reporting.uploads``; ``--target`` sets it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from experiments.reporting.frontier import plot_frontier
from experiments.reporting.messages import write_messages
from experiments.reporting.milestones import THRESHOLDS, write_milestones
from experiments.reporting.plots import plot_setting
from experiments.reporting.rounding import write_rounding_gaps
from experiments.reporting.runs import Found, find_runs, group_settings
from experiments.reporting.tables import TABLES, csv_table, markdown_table, run_rows, write_csv
from experiments.reporting.uploads import write_uploads

__all__ = ["main", "write_report"]


def write_report(
    dirs: Sequence[Path],
    out_dir: Path,
    console: Console | None = None,
    target: float | None = None,
    milestones: Sequence[float] = THRESHOLDS,
) -> list[Path]:
    """Read the runs below ``dirs`` and write the tables, ``runs.csv`` and the figures to
    ``out_dir``; print the tables. ``target`` (a fraction) fixes the accuracy of the uploads
    tables, ``milestones`` (percentages) the accuracies of the rounds-to-accuracy table. Raises
    SystemExit when no finished run is found."""
    console = console or Console()
    for d in dirs:
        if not Path(d).is_dir():
            raise SystemExit(f"not a folder: {d}")
    found = find_runs(dirs)
    _print_found(found, console)
    if not found.runs:
        raise SystemExit(
            "no finished run (a run folder with summary.json) below "
            + ", ".join(str(d) for d in dirs)
        )
    settings = group_settings(found.runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in TABLES:
        text = markdown_table(spec, settings)
        if text is None:
            continue
        (out_dir / f"{spec.name}.md").write_text(text)
        write_csv(out_dir / f"{spec.name}.csv", csv_table(spec, settings))
        written += [out_dir / f"{spec.name}.md", out_dir / f"{spec.name}.csv"]
        console.print(Markdown(text))
    write_csv(out_dir / "runs.csv", run_rows(found, settings, report_base(dirs)))
    written.append(out_dir / "runs.csv")
    message_files, _ = write_messages(settings, out_dir)
    written += message_files
    milestone_files, _ = write_milestones(settings, out_dir, milestones)
    written += milestone_files
    for setting in settings:
        written += plot_setting(setting, out_dir) + plot_frontier(setting, out_dir)
    gap_files, gap_lines = write_rounding_gaps(settings, out_dir)
    written += gap_files
    if gap_lines:
        console.print(
            Markdown(
                "**Rounding gap (deterministic − stochastic rounding)**\n\n"
                + "\n".join(f"- {x}" for x in gap_lines)
            )
        )
    upload_files, upload_tables = write_uploads(settings, out_dir, target)
    written += upload_files
    for text in upload_tables:
        console.print(Markdown(text))
    console.print(
        f"{len(found.runs)} runs in {len(settings)} setting(s); wrote "
        f"{len(written)} files to {out_dir}"
    )
    return written


def report_base(dirs: Sequence[Path]) -> Path:
    """The folder that the report's paths are relative to: the one given, or the folder that
    holds all of those given."""
    return Path(os.path.commonpath([Path(d).resolve() for d in dirs]))


def _print_found(found: Found, console: Console) -> None:
    for folder in found.unfinished:
        console.print(f"[yellow]left out, unfinished (no summary.json):[/] {folder}")
    for folder, reason in found.unreadable:
        console.print(f"[red]left out, unreadable:[/] {folder}: {reason}")
    for run, kept in found.duplicates:
        console.print(
            f"[yellow]left out, same setting, method and seed as {kept.path}:[/] {run.path}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp8fl-report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results_dirs",
        nargs="+",
        type=Path,
        metavar="RESULTS_DIR",
        help="a results folder, a sweep folder or a run folder",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for tables and figures")
    parser.add_argument(
        "--target",
        type=float,
        metavar="PERCENT",
        help="test accuracy (%%) of the uploads-to-target tables of asynchronous runs "
        "(default: the highest every method of the setting reaches, floored to a whole percent)",
    )
    parser.add_argument(
        "--milestones",
        type=float,
        nargs="+",
        default=list(THRESHOLDS),
        metavar="PERCENT",
        help="test accuracies (%%) of the rounds-to-accuracy table "
        f"(default: {' '.join(f'{t:g}' for t in THRESHOLDS)})",
    )
    args = parser.parse_args(argv)
    bad = [p for p in [args.target, *args.milestones] if p is not None and not 0 < p <= 100]
    if bad:
        parser.error(f"--target and --milestones take percentages in (0, 100], got {bad}")
    target = None if args.target is None else args.target / 100
    write_report(args.results_dirs, args.out, target=target, milestones=args.milestones)


if __name__ == "__main__":
    main()
