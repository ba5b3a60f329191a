"""Run the real Flower simulation stack (``flwr.simulation.run_simulation``, Ray) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp
from flwr.common import ndarrays_to_parameters

from experiments.cli.simulate import simulate as run
from fp8fl.federated.seams import ArraySpec
from fp8fl.methods.fp8 import Float32Codec
from fp8fl.run.components import build
from fp8fl.run.config import RunConfig
from fp8fl.run.results import read_rounds
from fp8fl.run.training import build_run_model, run_layout

TINY = {
    "task": "cifar10",
    "model": "lenet",
    "split": "iid",
    "num-clients": 4,
    "clients-per-round": 2,
    "num-server-rounds": 2,
    "local-steps": 2,
    "batch-size": 20,
    "eval-samples": 500,
    "calibration-samples": 64,
}


def tiny_config(results_dir: Path, **overrides: Any) -> RunConfig:
    values = {**TINY, "results-dir": str(results_dir)}
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return RunConfig.from_mapping(values)


def simulate(
    config: RunConfig, client_app: ClientApp | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """Run ``config`` in simulation (one CPU per virtual client); return its folder and rounds."""
    run(config, client_app)
    (run_dir,) = [p for p in Path(config.results_dir).iterdir() if p.is_dir()]
    return run_dir, read_rounds(run_dir)


def serialized_bytes(specs: list[ArraySpec]) -> int:
    """What Flower's converters make of arrays of these dtypes and sizes (data + .npy headers)."""
    arrays = [np.zeros(spec.size, spec.dtype) for spec in specs]
    return sum(len(t) for t in ndarrays_to_parameters(arrays).tensors)


def declared_bytes(config: RunConfig) -> tuple[int, int, int]:
    """Serialized bytes of one uplink and one downlink message as the run's codecs declare them,
    and of an FP32 message of the same layout."""
    layout = run_layout(config, build_run_model(config, 10))
    built = build(config, layout.quantized)
    codecs = (built.codec, built.downlink_codec, Float32Codec())
    up, down, fp32 = (serialized_bytes(layout.array_specs(c)) for c in codecs)
    return up, down, fp32
