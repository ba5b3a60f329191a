"""Fingerprint every method preset: a tiny fixed-seed simulation per (preset, format), reduced to
what must not change when the code is refactored — per round the global model's SHA-256, the
exact bytes up and down, the accuracy and the loss.

    python -m experiments.bench.fingerprint --out before.json            # every preset x e4m3, e2m1
    python -m experiments.bench.fingerprint --out after.json --compare before.json

Two fingerprints taken on the same machine with the same thread count must be identical; a
different CPU or thread count may change the last bits of float arithmetic, and so the hashes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fp8fl.methods.registry import METHODS
from fp8fl.run.results import read_rounds

__all__ = ["TINY", "fingerprint", "main"]

TINY: dict[str, Any] = {
    "task": "cifar10",
    "model": "lenet",
    "split": "iid",
    "num-clients": 4,
    "clients-per-round": 2,
    "num-server-rounds": 3,
    "local-steps": 2,
    "batch-size": 20,
    "eval-samples": 500,
    "calibration-samples": 64,
    "seed": 7,
}
FORMATS = ("e4m3", "e2m1")
KEPT = ("round", "model_sha256", "bytes_up", "bytes_down", "accuracy", "loss")


def fingerprint(method: str, fmt: str) -> list[dict[str, Any]]:
    """Run the tiny configuration of ``method`` in ``fmt`` (own process) and reduce its rounds."""
    with tempfile.TemporaryDirectory() as results:
        config = {**TINY, "method": method, "format": fmt, "results-dir": results, "run-name": "fp"}
        subprocess.run(
            [sys.executable, "-m", "experiments.cli.simulate", json.dumps(config)],
            check=True,
            capture_output=True,
        )
        return [{k: r.get(k) for k in KEPT} for r in read_rounds(Path(results) / "fp")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.fingerprint")
    parser.add_argument("--out", type=Path, required=True, help="write the fingerprint (JSON)")
    parser.add_argument("--compare", type=Path, help="an earlier fingerprint to compare with")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args(argv)
    prints = {f"{m}/{f}": fingerprint(m, f) for m in args.methods for f in FORMATS}
    args.out.write_text(json.dumps(prints, indent=1) + "\n")
    for key, rounds in prints.items():
        last = rounds[-1]
        print(
            f"{key:24s} round {last['round']} sha {last['model_sha256'][:16]} "
            f"up {last['bytes_up']:>9} down {last['bytes_down']:>9} acc {last['accuracy']:.4f}"
        )
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    differ = [k for k in prints if before.get(k) != prints[k]]
    print("identical" if not differ else f"DIFFERENT: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
