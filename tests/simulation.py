"""Run the real Flower simulation stack (``flwr.simulation.run_simulation``, Ray) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.client import ClientApp

from experiments.cli.simulate import simulate as run
from fp8fl.federated.config import RunConfig
from fp8fl.federated.results import read_rounds

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
