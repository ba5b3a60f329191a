"""Benchmarks that print speed ratios measured in one run: ``python -m experiments.bench <topic>``.

Topics live in their own modules (``experiments/bench/<topic>.py``) exposing ``main(argv)``.
"""

from __future__ import annotations

import importlib
import sys

TOPICS = {
    "numerics": "experiments.bench.numerics",
    "qat": "experiments.bench.qat",
    "data": "experiments.bench.data",
    "scale": "experiments.bench.scale",
    "round": "experiments.bench.round",
    "bytes": "experiments.bench.bytes",
    "lossless": "experiments.bench.lossless",
    "tracking": "experiments.bench.tracking",
    "grids": "experiments.bench.grids",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in TOPICS:
        raise SystemExit(f"usage: python -m experiments.bench {{{'|'.join(TOPICS)}}} [options]")
    importlib.import_module(TOPICS[args[0]]).main(args[1:])


if __name__ == "__main__":
    main()
