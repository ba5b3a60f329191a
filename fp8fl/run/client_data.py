"""The run's client partitions, computed once per process and shared by every client in it."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fp8fl.data import load_dataset
from fp8fl.data.partitioners import partition
from fp8fl.data.tasks import task_spec
from fp8fl.run.config import RunConfig

__all__ = ["client_partition", "run_partitions"]


@lru_cache(maxsize=4)
def _partitions(
    dataset: str, data_root: str, split: str, num_clients: int, seed: int, dirichlet_alpha: float
) -> tuple[np.ndarray, ...]:
    ds = load_dataset(dataset, data_root or None, "train")
    return tuple(partition(ds, split, num_clients, seed, dirichlet_alpha))


def run_partitions(config: RunConfig) -> tuple[np.ndarray, ...]:
    """Row indices into the training split of every client of the run."""
    return _partitions(
        task_spec(config.task).dataset,
        config.data_root,
        config.split,
        config.num_clients,
        config.seed,
        config.dirichlet_alpha,
    )


def client_partition(config: RunConfig, partition_id: int) -> np.ndarray:
    if not 0 <= partition_id < config.num_clients:
        raise ValueError(
            f"partition-id {partition_id} is outside 0..{config.num_clients - 1} "
            f"(num-clients = {config.num_clients})"
        )
    return run_partitions(config)[partition_id]
