"""``BufferedClient``: one FedBuff / QAFeL job — train from the start model the server sent (x̂ at
the job's start version, as float32) and upload Q_c(Δ), Δ = y_P − y_0, through the uplink codec."""

from __future__ import annotations

import time

import torch
from flwr.common import Config, NDArrays, Scalar

from clients.placement import placement_metrics
from clients.quantized_client import QuantizedClient
from fp8fl.federated.seeds import derive_seed, seeded_generator
from fp8fl.methods.qafel import JOB_KEY, START_CODEC, buffered_settings, slowdowns
from fp8fl.run.protocol import ProtocolError, check_instructions, update_metrics
from fp8fl.run.training import (
    build_run_model,
    resolve_device,
    round_local_update,
    run_layout,
)

__all__ = ["BufferedClient"]


class BufferedClient(QuantizedClient):
    """A client of a buffered method: each ``fit`` is one job, seeded by (seed, job, partition)."""

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        started = time.perf_counter()
        run = self.config
        server_round = check_instructions(config, run)
        job = config.get(JOB_KEY)
        if isinstance(job, bool) or not isinstance(job, int) or job < 0:
            raise ProtocolError(f"fit instructions carry no valid {JOB_KEY}: {job!r}")
        torch.manual_seed(derive_seed(run.seed, "client-torch", "job", job, self.partition_id))
        generator = seeded_generator(run.seed, "client", "job", job, self.partition_id)
        model = build_run_model(run, self.data.num_classes)
        layout = run_layout(run, model)
        start = layout.unpack(parameters, START_CODEC)
        model.load_state_dict(start)
        device = resolve_device(run.device)
        training = time.perf_counter()
        stats = round_local_update(run, server_round).run(
            model.to(device), self.data, self.indices, generator, device
        )
        stats["train-seconds"] = time.perf_counter() - training
        trained = model.cpu().state_dict()
        delta = {name: trained[name] - value for name, value in start.items()}
        update = layout.pack(delta, self.codec, generator)
        factor = slowdowns(buffered_settings(run.settings).client_slowdown).get(
            self.partition_id, 1.0
        )
        time.sleep((factor - 1.0) * (time.perf_counter() - started))  # a slower device
        metrics = update_metrics(run, self.partition_id, stats, time.perf_counter() - started)
        return update, len(self.indices), {**metrics, JOB_KEY: job, **placement_metrics()}
