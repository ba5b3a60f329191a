"""Fingerprint every method preset: a tiny fixed-seed simulation per (preset, format), and per
variant (a modifier or a family key no preset sets), reduced to what must not change when the
code is refactored — per round the global model's SHA-256, the exact bytes up and down, the
accuracy and the loss.

    python -m experiments.bench.fingerprint --out before.json   # presets x e4m3, e2m1; variants
    python -m experiments.bench.fingerprint --out after.json --compare before.json
    python -m experiments.bench.fingerprint --compare experiments/bench/fingerprint-reference.json

``fingerprint-reference.json`` beside this module is the committed reference: the commit it was
taken at is recorded in it, and a change that only refactors must reproduce it on this machine
class (2 cores, one thread per Ray actor).

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
VARIANTS: dict[str, dict[str, Any]] = {
    "uq+lossless": {"method": "uq", "lossless": True},
    "uq+context": {"method": "uq", "lossless": "context"},
    "uq+fc1-e2m1": {"method": "uq", "layer-formats": "fc1:e2m1", "lossless": "context"},
    "uq+downlink-e3m2": {"method": "uq", "downlink-format": "e3m2"},
    "uq+client-formats": {"method": "uq", "client-formats": "fp32:0.5,e4m3:0.5"},
    "uq+norm-bound": {"method": "uq", "robust-aggregation": "norm-bound"},
    "fp32+ma0.9": {"method": "fp32", "moving-average": 0.9},
    "cq4+twos-complement": {"method": "cq4", "cq-grid": "twos-complement"},
    "lpt8+conv-linear-io": {"method": "lpt8", "lpt-points": "conv-linear-io"},
    "qafel-minmax-flsim": {
        "method": "qafel-custom",
        "qafel-uplink": "minmax4",
        "qafel-downlink": "minmax8",
        "qafel-minmax": "flsim",
    },
}
"""Modifiers and family keys no preset sets, each on the preset it modifies (in E4M3)."""

KEPT = ("round", "model_sha256", "bytes_up", "bytes_down", "accuracy", "loss")


def fingerprint(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the tiny configuration with ``settings`` (own process) and reduce its rounds."""
    with tempfile.TemporaryDirectory() as results:
        config = {"format": "e4m3", **TINY, **settings, "results-dir": results, "run-name": "fp"}
        subprocess.run(
            [sys.executable, "-m", "experiments.cli.simulate", json.dumps(config)],
            check=True,
            capture_output=True,
        )
        return [{k: r.get(k) for k in KEPT} for r in read_rounds(Path(results) / "fp")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.fingerprint")
    parser.add_argument("--out", type=Path, help="write the fingerprint (JSON)")
    parser.add_argument("--compare", type=Path, help="an earlier fingerprint to compare with")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    runs = {f"{m}/{f}": {"method": m, "format": f} for m in args.methods for f in FORMATS}
    runs |= {name: VARIANTS[name] for name in args.variants}
    prints: dict[str, Any] = {name: fingerprint(settings) for name, settings in runs.items()}
    if args.out is not None:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], check=False, capture_output=True, text=True
        ).stdout.strip()
        args.out.write_text(json.dumps({"commit": commit, **prints}, indent=1) + "\n")
    for key, rounds in prints.items():
        last = rounds[-1]
        print(
            f"{key:24s} round {last['round']} sha {last['model_sha256'][:16]} "
            f"up {last['bytes_up']:>9} down {last['bytes_down']:>9} acc {last['accuracy']:.4f}"
        )
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    print(f"compared with {args.compare} (taken at {before.get('commit', 'an unrecorded commit')})")
    new = [k for k in prints if k not in before]
    differ = [k for k in prints if k in before and before[k] != prints[k]]
    if new:  # a preset or variant added since the reference: nothing to compare it with
        print(f"not in the reference (new): {', '.join(new)}")
    print("identical" if not differ else f"DIFFERENT: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
