"""``QuantizedClient``: decode the global model, train locally with the method's quantizer
(e.g. FP8 QAT), encode the update with its codec. In a mixed-precision run (``client-formats``)
the client does all of this in its partition's own format (``partition_config``)."""

from __future__ import annotations

import time

import torch
from flwr.client import NumPyClient
from flwr.common import Config, NDArrays, Scalar

from clients.placement import placement_metrics
from fp8fl.data.tasks import load_task_data
from fp8fl.federated.seeds import derive_seed, seeded_generator
from fp8fl.run.client_data import client_partition
from fp8fl.run.client_formats import partition_config
from fp8fl.run.components import build_codec, build_downlink_codec
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import check_instructions, update_metrics
from fp8fl.run.training import (
    build_run_model,
    resolve_device,
    round_local_update,
    run_layout,
)

__all__ = ["QuantizedClient"]


class QuantizedClient(NumPyClient):
    """One virtual or real client: its data partition, and LocalUpdate (Alg. 1) per round."""

    def __init__(self, config: RunConfig, partition_id: int, num_partitions: int) -> None:
        if num_partitions != config.num_clients:
            raise ValueError(
                f"this federation has {num_partitions} partitions (SuperNodes) but "
                f"the run config says num-clients = {config.num_clients}"
            )
        self.partition_id = partition_id
        self.indices = client_partition(config, partition_id)
        self.config = partition_config(config, partition_id)
        self.data = load_task_data(config.task, config.model, "train", config.data_root)
        self.codec = build_codec(self.config)  # the uplink's
        self.downlink_codec = build_downlink_codec(self.config)

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        return {"partition-id": self.partition_id, "num-examples": len(self.indices)}

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Reset to the received global model, train, and send the encoded update."""
        started = time.perf_counter()
        run = self.config
        server_round = check_instructions(config, run)
        torch.manual_seed(derive_seed(run.seed, "client-torch", server_round, self.partition_id))
        generator = seeded_generator(run.seed, "client", server_round, self.partition_id)
        model = build_run_model(run, self.data.num_classes)
        layout = run_layout(run, model)
        state, received = layout.unpack_received(parameters, self.downlink_codec)
        model.load_state_dict(state)
        # lossless = "context": the uplink is coded against the downlink codes just decoded
        reference = received if run.context_coding else None
        device = resolve_device(run.device)
        training = time.perf_counter()
        stats = round_local_update(run, server_round).run(
            model.to(device), self.data, self.indices, generator, device
        )
        stats["train-seconds"] = time.perf_counter() - training
        update = layout.pack(model.cpu().state_dict(), self.codec, generator, reference)
        metrics = update_metrics(run, self.partition_id, stats, time.perf_counter() - started)
        return update, len(self.indices), metrics | placement_metrics()
