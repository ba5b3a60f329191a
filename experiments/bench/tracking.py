"""What experiment tracking costs a round: ``python -m experiments.bench tracking <run folder>``.

Replays a finished run's round records (``rounds.jsonl``, ``config.json``) through each tracker of
``strategies.tracking`` into a scratch folder, timing its start, every ``log_round`` and its
``finish``, and prints the cost per round — (start + finish) / rounds + the mean ``log_round`` — as a
share of that run's mean round time (``wall_s``). Measure on a default run (``fp8fl-flwr run .``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fp8fl.run.config import TRACKERS, RunConfig
from fp8fl.run.results import read_rounds
from strategies.tracking import TRACKER_TYPES


def time_tracker(name: str, config: RunConfig, rounds: list[dict], scratch: Path) -> dict:
    """Seconds to start ``name``, per logged round (mean), and to finish it."""
    run_dir = scratch / name / "run"
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    tracker = TRACKER_TYPES[name](config, run_dir)
    start_s = time.perf_counter() - started
    per_round = []
    for record in rounds:
        t = time.perf_counter()
        tracker.log_round(record)
        per_round.append(time.perf_counter() - t)
    t = time.perf_counter()
    tracker.finish({"rounds": len(rounds) - 1, "final_accuracy": 0.0}, rounds)
    return {
        "start": start_s,
        "round": sum(per_round) / len(per_round),
        "finish": time.perf_counter() - t,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench tracking")
    parser.add_argument("run_dir", type=Path, help="a finished run's folder (a default run)")
    parser.add_argument("--trackers", default=",".join(TRACKERS))
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    config = RunConfig.from_mapping(
        json.loads((args.run_dir / "config.json").read_text())["config"]
    )
    rounds = read_rounds(args.run_dir)
    trained = [r["wall_s"] for r in rounds if r["round"] > 0]
    round_s = sum(trained) / len(trained)
    table = Table(
        title=f"tracking cost per round of {args.run_dir.name} (mean round {round_s:.2f} s)"
    )
    for column in ("tracker", "start s", "log_round ms", "finish s", "per round ms", "% of round"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.trackers.split(","):
            cost = time_tracker(name, config, rounds, Path(scratch))
            per_round = (cost["start"] + cost["finish"]) / len(trained) + cost["round"]
            table.add_row(
                name,
                f"{cost['start']:.2f}",
                f"{1000 * cost['round']:.2f}",
                f"{cost['finish']:.2f}",
                f"{1000 * per_round:.1f}",
                f"{100 * per_round / round_s:.2f}",
            )
    Console().print(table)
