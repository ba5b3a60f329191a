"""Round profile: where one client's fit and one central evaluation spend their time, FP32 beside UQ.

    python -m experiments.bench round [--fits N] [--threads 1] [--method uq]

The client is the 150-round setting's (CIFAR-10 LeNet, 100 clients so 500 images each, batch 50,
2 local epochs: 20 steps, one torch thread as in a one-CPU Ray actor), on the real data. Each fit
is timed end to end through ``QuantizedClient.fit`` (the ClientApp's own path, downlink decoded
from the server's encoding of the seeded initial model) and then once more phase by phase: model
build, decode, and per training step the data batch, forward (with the loss), backward and
optimizer step (timed inside the clients' own loop, ``LocalUpdate.run``, which takes a phase
timer), of which fake_quant forward and backward, then encode. FP32 and the FP8 method
alternate fit by fit, so drifts in machine load hit both alike. The central evaluation is that of
the default run: the full 10,000-image test split at ``eval-batch-size`` 500, on the server's
thread count (torch's default) — its cost is printed beside the default run's round estimate.
``--rounds R`` also runs R rounds of the 150-round setting in simulation (10 of 100 clients on
one CPU each), FP32 then the method, and compares their median round times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import fp8fl.numerics.quant as quant
from clients.quantized_client import QuantizedClient
from fp8fl.data.tasks import load_task_data
from fp8fl.federated.seeds import derive_seed, seeded_generator
from fp8fl.numerics.kernels import set_threads
from fp8fl.run.client_data import client_partition
from fp8fl.run.components import build, build_codec, build_downlink_codec
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import fit_instructions
from fp8fl.run.results import read_rounds
from fp8fl.run.training import (
    EvaluationSet,
    build_run_model,
    evaluate,
    round_local_update,
    run_layout,
)

SETTING = {  # lenet-cifar10-150.toml's client
    "task": "cifar10",
    "model": "lenet",
    "num-clients": 100,
    "clients-per-round": 0.1,
    "local-epochs": 2,
    "batch-size": 50,
    "lr": 0.1,
    "weight-decay": 1e-3,
    "device": "cpu",
}
PHASES = ("build", "decode", "batch", "forward", "backward", "optimizer", "encode")
Timings = dict[str, float]


class Clock:
    """Accumulates seconds per phase name."""

    def __init__(self) -> None:
        self.seconds: Timings = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@contextmanager
def fake_quant_timed(clock: Clock) -> Iterator[None]:
    """Time the rounding (fake_quant forward) and the STE gradient (fake_quant backward) kernels
    as ``quant`` calls them, without changing what they compute."""
    originals = quant.round_to_grid, quant.fake_quant_grads

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            with clock.phase(name):
                return fn(*args, **kwargs)

        return wrapper

    quant.round_to_grid = timed("fake_quant fwd", originals[0])  # type: ignore[assignment]
    quant.fake_quant_grads = timed("fake_quant bwd", originals[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        quant.round_to_grid, quant.fake_quant_grads = originals  # type: ignore[assignment]


class Method:
    """One method's client, the server's downlink message and fit instructions of round 1."""

    def __init__(self, method: str) -> None:
        self.config = RunConfig.from_mapping({**SETTING, "method": method}).resolved()
        self.client = QuantizedClient(self.config, 0, self.config.num_clients)
        torch.manual_seed(derive_seed(self.config.seed, "init"))
        model = build_run_model(self.config, self.client.data.num_classes)
        built = build(self.config, run_layout(self.config, model).quantized)
        rows = np.random.default_rng(0).choice(len(self.client.data), 256, replace=False)
        x, _ = self.client.data.batch(torch.as_tensor(np.sort(rows)), False, None, "cpu")
        if built.quantizer.calibrates:
            built.quantizer.calibrate(model, x)
        layout = run_layout(self.config, model)
        generator = seeded_generator(self.config.seed, "downlink", 1)
        self.downlink = layout.pack(
            model.state_dict(), build_downlink_codec(self.config), generator
        )
        self.instructions = fit_instructions(self.config, 1)
        self.steps = round_local_update(self.config, 1).num_steps(len(self.client.indices))

    def fit_seconds(self) -> float:
        """One ``QuantizedClient.fit``, end to end."""
        start = time.perf_counter()
        self.client.fit(self.downlink, self.instructions)
        return time.perf_counter() - start

    def phases(self) -> Timings:
        """The same fit phase by phase (same seeds, so the same steps)."""
        config, data, clock = self.config, self.client.data, Clock()
        generator = seeded_generator(config.seed, "client", 1, 0)
        torch.manual_seed(derive_seed(config.seed, "client-torch", 1, 0))
        with clock.phase("build"):
            model = build_run_model(config, data.num_classes)
            layout = run_layout(config, model)
        with clock.phase("decode"):
            model.load_state_dict(layout.unpack(self.downlink, build_downlink_codec(config)))
        update = round_local_update(config, 1)
        with fake_quant_timed(clock):
            update.run(
                model,
                data,
                client_partition(config, 0),
                generator,
                torch.device("cpu"),
                clock.phase,
            )
        with clock.phase("encode"):
            layout.pack(model.state_dict(), build_codec(config), generator)
        return dict(clock.seconds)


def evaluation_seconds(config: RunConfig, repeats: int) -> tuple[float, float]:
    """Median seconds of the default run's central evaluation, and its accuracy."""
    test = load_task_data(config.task, config.model, "test", config.data_root)
    torch.manual_seed(derive_seed(config.seed, "init"))
    model = build_run_model(config, test.num_classes)
    train = load_task_data(config.task, config.model, "train", config.data_root)
    x, _ = train.batch(torch.arange(256), False, None, "cpu")
    quantizer = build(config, run_layout(config, model).quantized).quantizer
    if quantizer.calibrates:
        quantizer.calibrate(model, x)
    evaluation = EvaluationSet.prepare(test, config.eval_batch_size, torch.device("cpu"))
    times, accuracy = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        _, accuracy = evaluate(model, evaluation)
        times.append(time.perf_counter() - start)
    return statistics.median(times), accuracy


def simulated_rounds(method: str, rounds: int) -> list[float]:
    """Wall seconds of rounds 1 … R − 1 of ``rounds`` rounds of the 150-round setting (100
    clients, 10 per round) run by ``experiments.cli.simulate`` in a child process (the last
    round also evaluates, so it is left out)."""
    with tempfile.TemporaryDirectory() as results:
        config = {
            **SETTING,
            "method": method,
            "num-server-rounds": rounds,
            "eval-every": rounds,
            "results-dir": results,
            "run-name": method,
        }
        subprocess.run(
            [sys.executable, "-m", "experiments.cli.simulate", json.dumps(config)],
            check=True,
            capture_output=True,
        )
        records = read_rounds(Path(results) / method)
    return [r["wall_s"] for r in records if 0 < r["round"] < rounds]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench round", description=__doc__)
    parser.add_argument("--fits", type=int, default=5, help="timed fits per method (after one)")
    parser.add_argument("--threads", type=int, default=1, help="client torch threads (Ray: 1)")
    parser.add_argument("--method", default="uq", help="the method set beside FP32")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also simulate this many rounds of the 150-round setting per method, one method "
        "after the other, and compare their median round times",
    )
    args = parser.parse_args(argv)
    server_threads = torch.get_num_threads()
    set_threads(args.threads)  # before any kernel runs: the threading layer of a Ray actor
    methods = {"fp32": Method("fp32"), args.method: Method(args.method)}

    fits: dict[str, list[float]] = {name: [] for name in methods}
    phases: dict[str, list[Timings]] = {name: [] for name in methods}
    for i in range(args.fits + 1):  # the first fit of each warms caches and compiles kernels
        for name, method in methods.items():
            seconds, split = method.fit_seconds(), method.phases()
            if i:
                fits[name].append(seconds)
                phases[name].append(split)

    console = Console()
    steps = methods["fp32"].steps
    table = Table(
        title=f"One client fit of the 150-round setting ({steps} steps of batch 50, "
        f"{args.threads} thread), median of {args.fits}",
        caption="phases in ms per fit; 'step' = a whole fit (QuantizedClient.fit) / steps",
    )
    table.add_column("phase")
    for name in methods:
        table.add_column(f"{name} ms", justify="right")
    table.add_column("ratio", justify="right")
    rows = [*PHASES, "fake_quant fwd", "fake_quant bwd"]
    for phase in rows:
        values = [statistics.median(p.get(phase, 0.0) for p in phases[n]) for n in methods]
        ratio = f"{values[1] / values[0]:.2f}x" if values[0] > 0 else ""
        table.add_row(phase, *(f"{1e3 * v:.1f}" for v in values), ratio)
    per_step = [statistics.median(fits[n]) / steps for n in methods]
    table.add_row(
        "step (whole fit / steps)",
        *(f"{1e3 * v:.1f}" for v in per_step),
        f"{per_step[1] / per_step[0]:.2f}x",
        style="bold",
    )
    console.print(table)

    torch.set_num_threads(server_threads)
    default = RunConfig.from_mapping({"method": args.method}).resolved()
    eval_s, accuracy = evaluation_seconds(default, args.eval_repeats)
    # the default round: 2 clients of 5,000 images, 1 epoch (100 steps), one per core, then the
    # evaluation; the fit time comes from the per-step time measured above
    default_steps = default.local_epochs * 5000 // default.batch_size
    round_s = per_step[1] * default_steps + eval_s
    console.print(
        f"central evaluation ({args.method}, 10,000 images, batch {default.eval_batch_size}, "
        f"{server_threads} threads): {1e3 * eval_s:.0f} ms, accuracy {accuracy:.4f}; "
        f"{100 * eval_s / round_s:.0f} % of a default round (≈ {round_s:.1f} s: {default_steps} "
        f"client steps at the {args.method} step time above, then the evaluation)"
    )
    if args.rounds > 1:
        walls = {name: simulated_rounds(name, args.rounds) for name in methods}
        fp32, other = (statistics.median(walls[n]) for n in methods)
        console.print(
            f"simulated rounds of the 150-round setting (10 of 100 clients, median of rounds 1-"
            f"{args.rounds - 1}): fp32 {fp32:.2f} s, {args.method} {other:.2f} s, "
            f"ratio {other / fp32:.2f}x"
        )
