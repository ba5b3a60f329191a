"""``QuantizedClient``: decode the global model, train locally with the method's quantizer
(e.g. FP8 QAT), encode the update with its codec. In a mixed-precision run (``client-formats``)
the client does all of this in its partition's own format (``partition_config``).

Its ``fit`` is every client's one fit path: a buffered method's client (``BufferedClient``)
changes only what a fit is seeded by and reports (``_job``), what it starts from (``_start``),
what it sends (``_upload``) and how fast its device is (``slowdown``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from flwr.client import NumPyClient
from flwr.common import Config, NDArrays, Scalar

from clients.placement import placement_metrics
from fp8fl.data.tasks import load_task_data
from fp8fl.federated.seams import SendsChanges, State
from fp8fl.federated.seeds import derive_seed, seeded_generator
from fp8fl.federated.wire import Reference, StateLayout
from fp8fl.run.client_data import client_partition
from fp8fl.run.client_formats import partition_config
from fp8fl.run.components import build_codec, build_downlink_codec, build_quantizer
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import check_instructions, update_metrics
from fp8fl.run.training import (
    build_run_model,
    resolve_device,
    round_local_update,
    run_layout,
)

__all__ = ["FitJob", "QuantizedClient"]


@dataclass(frozen=True)
class FitJob:
    """What one fit is, beyond its round: the parts that, with the partition, seed its training
    and uplink rounding, and the metrics it adds to its update."""

    seed: tuple[int | str, ...]
    metrics: dict[str, Scalar] = field(default_factory=dict)


class QuantizedClient(NumPyClient):
    """One virtual or real client: its data partition, and LocalUpdate (Alg. 1) per round."""

    slowdown = 1.0
    """How many times longer than its training a fit takes (a slower device: ``BufferedClient``)."""

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
        self.quantizer = build_quantizer(self.config)

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        return {"partition-id": self.partition_id, "num-examples": len(self.indices)}

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Reset to the received model, train, and send the encoded update."""
        started = time.perf_counter()
        run = self.config
        server_round = check_instructions(config, run)
        job = self._job(config, server_round)
        torch.manual_seed(derive_seed(run.seed, "client-torch", *job.seed, self.partition_id))
        generator = seeded_generator(run.seed, "client", *job.seed, self.partition_id)
        model = build_run_model(run, self.data.num_classes)
        layout = run_layout(run, model)
        start, reference = self._start(layout, parameters)
        model.load_state_dict(start)
        device = resolve_device(run.device)
        training = time.perf_counter()
        stats = round_local_update(run, server_round).run(
            model.to(device), self.data, self.indices, generator, device
        )
        stats["train-seconds"] = time.perf_counter() - training
        sent = self._upload(model.cpu().state_dict(), start)
        update = layout.pack(sent, self.codec, generator, reference)
        if self.slowdown != 1.0:
            time.sleep((self.slowdown - 1.0) * (time.perf_counter() - started))
        metrics = update_metrics(run, self.partition_id, stats, time.perf_counter() - started)
        return update, len(self.indices), {**metrics, **job.metrics, **placement_metrics()}

    def _job(self, config: Config, server_round: int) -> FitJob:
        """A synchronous round's fit: seeded by (round, partition)."""
        return FitJob((server_round,))

    def _start(self, layout: StateLayout, parameters: NDArrays) -> tuple[State, Reference | None]:
        """The global model as the downlink codec sent it, and (``lossless = "context"``) the
        downlink codes the uplink is coded against."""
        state, received = layout.unpack_received(parameters, self.downlink_codec)
        return state, received if self.config.context_coding else None

    def _upload(self, trained: State, start: State) -> State:
        """What the uplink carries: the trained model, or its change over the fit."""
        if isinstance(self.quantizer, SendsChanges):
            return self.quantizer.change(trained, start)
        return trained
