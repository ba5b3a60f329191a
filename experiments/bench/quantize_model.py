"""Quantize a real model's weights to FP8 and report the grid, the errors and the bytes on the wire.

    python -m experiments.bench.quantize_model [--format e4m3] [--clients 10]

Every conv/linear weight is encoded with its own α = max|w| (one byte per weight plus a float32 α);
other tensors stay float32. For each weight it prints the relative RMS error of nearest and of
stochastic rounding, and of the average of ``--clients`` independent stochastic encodings — the
effect behind Fig. 2d of Wang et al. 2024 (arXiv:2407.02610): stochastic rounding is worse for one
copy, better on average.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from rich.console import Console
from rich.table import Table

from fp8fl.numerics.codec import decode, encode
from fp8fl.numerics.formats import FloatFormat


def relative_rms(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.quantize_model")
    parser.add_argument("--format", default="e4m3", help="float format name, e.g. e4m3, e5m2")
    parser.add_argument("--clients", type=int, default=10, help="encodings averaged, Fig. 2d")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fmt = FloatFormat.from_name(args.format)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=10)
    generator = torch.Generator().manual_seed(args.seed)
    console = Console()

    table = Table(title=f"ResNet18 weights in {fmt.name} (α = max|w| per tensor)")
    for column in ("tensor", "elements", "α", "nearest", "stochastic", f"mean of {args.clients}"):
        table.add_column(column, justify="left" if column == "tensor" else "right")
    fp32_bytes = wire_bytes = 0
    for name, tensor in model.state_dict().items():
        fp32_bytes += tensor.numel() * tensor.element_size()
        if not (name.endswith("weight") and tensor.dim() > 1):
            wire_bytes += tensor.numel() * tensor.element_size()
            continue
        w = tensor.float()
        alpha = float(w.abs().max())
        nearest = decode(encode(w, alpha, fmt, stochastic=False), alpha, fmt, shape=w.shape)
        draws = [
            decode(encode(w, alpha, fmt, generator=generator), alpha, fmt, shape=w.shape)
            for _ in range(args.clients)
        ]
        wire_bytes += encode(w, alpha, fmt).nbytes + 4  # codes + α as float32
        table.add_row(
            name,
            f"{w.numel():,}",
            f"{alpha:.4f}",
            f"{relative_rms(nearest, w):.2e}",
            f"{relative_rms(draws[0], w):.2e}",
            f"{relative_rms(torch.stack(draws).mean(0), w):.2e}",
        )
    console.print(table)
    grid = fmt.grid(1.0)
    console.print(
        f"{fmt.name} grid at α = 1: {grid.numel()} values, smallest positive "
        f"{grid[grid > 0].min().item():.3e}, largest {grid.max().item()}"
    )
    console.print(
        f"model state: {fp32_bytes:,} bytes as float32, {wire_bytes:,} bytes on the wire "
        f"in {fmt.name}: {fp32_bytes / wire_bytes:.2f}x smaller"
    )


if __name__ == "__main__":
    main()
