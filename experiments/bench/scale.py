"""Scale benchmark: start-up time and peak memory of a simulation with many virtual clients.

    python -m experiments.bench scale --clients 2112 --per-round 21 --rounds 2
    python -m experiments.bench scale --local-steps 1 --rounds 6 --trivial

With ``--trivial`` it then runs ``experiments.bench.trivial_app`` in the same federation (clients,
clients per round, rounds, Ray resources) and prints the median round without its evaluation
against the median round of that app, and the start-up without the initial evaluation against
that app's launch to its first round: what fp8fl adds to Flower's own cost.

The simulation runs in a child process (``experiments.cli.simulate``: the same ServerApp, ClientApp
and Ray engine as ``flwr run``) while this process samples the memory of its whole process tree (Ray's
raylet, workers and actors included) every 0.5 s from /proc: the sum of RSS, which counts shared
pages (the memory-mapped data set, libraries) once per process, and the sum of PSS, which splits
them between the processes that share them — the memory the run really occupies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def tree_memory(root: int) -> tuple[int, int]:
    """(Σ RSS, Σ PSS) in bytes over ``root`` and all its descendants."""
    table = subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        pid, ppid = (int(v) for v in line.split())
        children.setdefault(ppid, []).append(pid)
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss, pss


def trivial_app(clients: int, per_round: int, rounds: int) -> tuple[float, list[float]]:
    """(start-up, round wall times) of the trivial Flower app in the same federation, in its own
    process; the start-up runs from the launch to the beginning of its first round."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "times.json"
        launched_at = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.bench.trivial_app",
                *(str(v) for v in (clients, per_round, rounds, out)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times = json.loads(out.read_text())
        return times["first_round_at"] - launched_at, times["rounds"]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench scale")
    parser.add_argument("--clients", type=int, default=2112)
    parser.add_argument("--per-round", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--task", default="cifar10")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--method", default="uq")
    parser.add_argument(
        "--trivial", action="store_true", help="also time a trivial Flower app's rounds"
    )
    args = parser.parse_args(argv)
    results = Path(tempfile.mkdtemp(prefix="fp8fl-scale-"))
    config = {
        "task": args.task,
        "model": args.model,
        "method": args.method,
        "num-clients": args.clients,
        "clients-per-round": args.per_round,
        "num-server-rounds": args.rounds,
        "local-steps": args.local_steps,
        "results-dir": str(results),
        "run-name": "scale",
    }
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli.simulate", json.dumps(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak_rss = peak_pss = 0
    first_round_at = None
    rounds_file = results / "scale" / "rounds.jsonl"
    while child.poll() is None:
        rss, pss = tree_memory(child.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        if first_round_at is None and rounds_file.is_file() and rounds_file.read_text():
            first_round_at = time.perf_counter() - started
        time.sleep(0.5)
    total = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"simulation failed with exit code {child.returncode}")
    rounds = [json.loads(line) for line in rounds_file.read_text().splitlines()]
    table = Table(
        title=f"{args.clients} virtual clients, {args.per_round} per round, "
        f"{args.rounds} rounds ({args.task}/{args.model}/{args.method})"
    )
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("start-up (launch to round 0 written)", f"{first_round_at:.1f} s")
    table.add_row("  of which initial evaluation", f"{rounds[0]['eval_s']:.1f} s")
    for record in rounds[1:]:
        table.add_row(f"round {record['round']} wall", f"{record['wall_s']:.1f} s")
    table.add_row("whole run", f"{total:.1f} s")
    table.add_row("peak Σ RSS of the process tree", f"{peak_rss / 2**30:.2f} GiB")
    table.add_row("peak Σ PSS of the process tree", f"{peak_pss / 2**30:.2f} GiB")
    if args.trivial:
        fit = statistics.median(r["wall_s"] - r["eval_s"] for r in rounds[1:])
        trivial_start, trivial_rounds = trivial_app(args.clients, args.per_round, args.rounds)
        trivial = statistics.median(trivial_rounds)
        start = first_round_at - rounds[0]["eval_s"]
        table.add_row("start-up without the initial evaluation", f"{start:.1f} s")
        table.add_row(
            "start-up of a trivial Flower app (launch to round 1)", f"{trivial_start:.1f} s"
        )
        table.add_row("start-up / trivial app's", f"{start / trivial_start:.2f}×")
        table.add_row("median round without evaluation", f"{fit:.2f} s")
        table.add_row("median round of a trivial Flower app", f"{trivial:.2f} s")
        table.add_row("round / trivial app's round", f"{fit / trivial:.2f}×")
    Console().print(table)
