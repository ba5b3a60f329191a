"""The server's side of a run's model, shared by the synchronous strategy and the buffered loops.

Both build it in one order (test data, then the model from the seed ``init``), so a synchronous
and a buffered run of the same seed start from the same weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fp8fl.data.tasks import TaskData, load_task_data
from fp8fl.federated.seeds import derive_seed
from fp8fl.federated.wire import StateLayout
from fp8fl.run.components import Built, build
from fp8fl.run.config import RunConfig
from fp8fl.run.training import build_run_model, resolve_device, run_layout

__all__ = ["ServerModel", "build_server_model"]


class ServerModel(NamedTuple):
    """What the server evaluates and aggregates with."""

    device: torch.device
    test: TaskData
    model: nn.Module
    layout: StateLayout
    built: Built


def build_server_model(config: RunConfig) -> ServerModel:
    """The test data, the seeded initial model on the run's device, its message layout and the
    method's components."""
    device = resolve_device(config.device)
    test = load_task_data(config.task, config.model, "test", config.data_root)
    torch.manual_seed(derive_seed(config.seed, "init"))
    model = build_run_model(config, test.num_classes).to(device)
    layout = run_layout(config, model)
    return ServerModel(device, test, model, layout, build(config, layout.quantized))
