"""Cost of FP8 QAT on CPU: one training step of the QAT model ÷ one step of the FP32 model.

``python -m experiments.bench qat [--repeats N] [--warmup N] [--threads N]``. A step is forward,
cross-entropy, backward and an SGD update on one fixed random batch (LeNet at batch 50, ResNet18 at
batch 32, the paper's CIFAR settings). FP32 and QAT steps alternate in the same run, so drifts in
machine load hit both alike; the table gives the median step times, their ratio, and the ratio of
the fastest steps (less sensitive to other processes on a busy machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from fp8fl.models.architectures import build_model
from fp8fl.models.qat import QuantConfig, calibrate, prepare_qat
from fp8fl.numerics.kernels import set_threads

CASES = (("lenet", 50), ("resnet18", 32))
LENET_TARGET = 1.5


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def step_times(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, calling them in turn ``repeats`` times after ``warmup``."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def bench_model(name: str, batch: int, warmup: int, repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    fp32 = build_model(name, 10)
    # channels-last, as fp8fl.data.features.prepare_images lays out every image batch
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    qat = prepare_qat(copy.deepcopy(fp32), QuantConfig())
    calibrate(qat, x)
    return step_times(
        {"fp32": training_step(fp32, x, y), "qat": training_step(qat, x, y)}, warmup, repeats
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench qat", description=__doc__)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per model and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    table = Table(
        title=f"QAT (E4M3, nearest) vs FP32 training step on CPU, "
        f"{torch.get_num_threads()} threads, {args.repeats} steps each",
        caption=f"median ms per step; target for lenet: ratio ≤ {LENET_TARGET}",
    )
    for column in ("model", "batch", "FP32 ms", "QAT ms", "ratio", "ratio of fastest"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, batch in CASES:
        times = bench_model(name, batch, args.warmup, args.repeats)
        fp32, qat = (statistics.median(times[mode]) for mode in ("fp32", "qat"))
        best = min(times["qat"]) / min(times["fp32"])
        table.add_row(
            name,
            str(batch),
            f"{1e3 * fp32:.1f}",
            f"{1e3 * qat:.1f}",
            f"{qat / fp32:.2f}x",
            f"{best:.2f}x",
        )
    Console().print(table)
