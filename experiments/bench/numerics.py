"""Numerics benchmark: codec and fake_quant cost as ratios to plain tensor ops, from one run.

(a) encode+decode of an 11.2M-element float32 tensor (ResNet18's size) ÷ a float32 ``clone()``;
(b) ``fake_quant`` forward+backward of a 50×64×28×28 activation ÷ ReLU forward+backward; then
the forward alone, its rounding kernel, and a loop of one table look-up per element. No vector
gathers are emitted for these loops, so they run one element at a time, and their cost follows
their instruction count: the rounding makes two dependent look-ups and about 16 instructions per
element, the look-up loop five.
Each figure is the median of ``--repeats`` timings after a warm-up (which also compiles kernels).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from numba import njit
from rich.console import Console
from rich.table import Table

from fp8fl.numerics.codec import decode, encode
from fp8fl.numerics.formats import E4M3
from fp8fl.numerics.quant import fake_quant, round_tensor

RESNET18_SIZE = 11_173_962
ACTIVATION_SHAPE = (50, 64, 28, 28)


@njit(cache=True, nogil=True)
def _look_up(bits: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # 1-D arrays
    """``out[i] = table[cell of bits[i]]``: the rounding kernels' look-up alone (they make two
    dependent ones per element, the cell's threshold and then its value, and clamp the cell)."""
    for i in range(bits.size):
        out[i] = table[(bits[i] & 0x7FFFFFFF) >> 18]  # a table of 2^13 cells


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench numerics")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)

    weights = torch.randn(RESNET18_SIZE, generator=generator) * 0.05
    alpha = float(weights.abs().max())
    clone = median_ms(weights.clone, args.repeats)
    codes = encode(weights, alpha)
    rows = [
        ("clone() of 11.2M float32", clone, None),
        (
            "encode stochastic + decode",
            median_ms(
                lambda: decode(encode(weights, alpha, generator=generator), alpha), args.repeats
            ),
            clone,
        ),
        (
            "encode nearest + decode",
            median_ms(
                lambda: decode(encode(weights, alpha, stochastic=False), alpha), args.repeats
            ),
            clone,
        ),
        (
            "  encode stochastic only",
            median_ms(lambda: encode(weights, alpha, generator=generator), args.repeats),
            clone,
        ),
        ("  decode only", median_ms(lambda: decode(codes, alpha), args.repeats), clone),
    ]

    activation = torch.randn(ACTIVATION_SHAPE, generator=generator).requires_grad_()
    beta = torch.tensor(3.0, requires_grad=True)
    upstream = torch.randn(ACTIVATION_SHAPE, generator=generator)
    relu = median_ms(lambda: torch.relu(activation).backward(upstream), args.repeats)
    relu_forward = median_ms(lambda: torch.relu(activation.detach()), args.repeats)
    bits = activation.detach().numpy().reshape(-1).view(np.int32)
    cells = np.arange(1 << 13, dtype=np.int32)
    looked_up = np.empty_like(bits)
    rows += [
        ("ReLU fwd+bwd 50×64×28×28", relu, None),
        (
            "fake_quant nearest fwd+bwd",
            median_ms(lambda: fake_quant(activation, beta).backward(upstream), args.repeats),
            relu,
        ),
        (
            "fake_quant stochastic fwd+bwd",
            median_ms(
                lambda: fake_quant(activation, beta, stochastic=True).backward(upstream),
                args.repeats,
            ),
            relu,
        ),
        ("ReLU forward", relu_forward, None),
        (
            "fake_quant nearest forward",
            median_ms(lambda: fake_quant(activation.detach(), 3.0), args.repeats),
            relu_forward,
        ),
        (
            "  its rounding kernel alone",
            median_ms(
                lambda: round_tensor(activation.detach(), 3.0, E4M3, False, None, False, True),
                args.repeats,
            ),
            relu_forward,
        ),
        (
            "  one table look-up per element, 1 thread",
            median_ms(lambda: _look_up(bits, cells, looked_up), args.repeats),
            relu_forward,
        ),
    ]

    table = Table(
        title=f"fp8fl numerics, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    table.add_column("operation")
    table.add_column("ms", justify="right")
    table.add_column("ratio", justify="right")
    for name, ms, reference in rows:
        table.add_row(name, f"{ms:.2f}", "" if reference is None else f"{ms / reference:.2f}x")
    console = Console()
    console.print(table)
    console.print("issue 29 targets: (a) encode+decode ≤ 1.5x clone, (b) fake_quant ≤ 1.3x ReLU")
