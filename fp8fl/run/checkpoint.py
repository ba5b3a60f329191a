"""The server's per-round checkpoint, written atomically into the run's results folder.

It holds what a crashed server needs to continue exactly where it stopped: the FP32 global model
(weights, α, β, dense tensors), the last completed round, the byte ledger, the resolved run config,
the aggregator's own state (a moving average, a buffer: ``Aggregator.state_dict``) and the states
of the global RNGs. (The server draws all of its own randomness — client sampling,
downlink rounding, ServerOptimize — from generators seeded by (seed, round), so a resumed round
repeats exactly what the lost one would have done; the global RNG states are saved as well.)
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "load_checkpoint",
    "restore_rng_states",
    "rng_states",
    "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.pt"
VERSION = 2
READABLE = (1, 2)  # version 1 had no aggregator state: it resumes with an empty one


@dataclass(frozen=True)
class Checkpoint:
    round: int
    state: dict[str, torch.Tensor]
    ledger: dict[str, int]
    config: dict[str, Any]
    rng: dict[str, Any]
    aggregator: dict[str, torch.Tensor] = field(default_factory=dict)


def rng_states() -> dict[str, Any]:
    """torch's, numpy's and Python's global RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), python_gauss],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = states["python"]
    random.setstate((version, tuple(internal), python_gauss))


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint.pt`` via a temporary file, fsync and an atomic rename."""
    payload = {
        "version": VERSION,
        "round": checkpoint.round,
        "state": {k: v.detach().cpu() for k, v in checkpoint.state.items()},
        "ledger": dict(checkpoint.ledger),
        "config": dict(checkpoint.config),
        "rng": checkpoint.rng,
        "aggregator": {k: v.detach().cpu() for k, v in checkpoint.aggregator.items()},
    }
    handle, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / CHECKPOINT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``checkpoint.pt`` (tensors and plain values only: nothing executable is unpickled)."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {run_dir}: the run never completed a round "
            "(or this is not a run folder)"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") not in READABLE:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}, this fp8fl "
            f"reads versions {', '.join(map(str, READABLE))}"
        )
    return Checkpoint(
        payload["round"],
        payload["state"],
        payload["ledger"],
        payload["config"],
        payload["rng"],
        payload.get("aggregator", {}),
    )
