"""``BufferedClient``: one FedBuff / QAFeL job — train from the start model the server sent (x̂ at
the job's start version, as float32) and upload Q_c(Δ), Δ = y_P − y_0, through the uplink codec.
It is ``QuantizedClient``'s fit with a job's seed and start; its quantizer sends Δ
(``DeltaTraining``, ``SendsChanges``)."""

from __future__ import annotations

from flwr.common import Config, NDArrays

from clients.quantized_client import FitJob, QuantizedClient
from fp8fl.federated.seams import State
from fp8fl.federated.wire import Reference, StateLayout
from fp8fl.methods.qafel import JOB_KEY, START_CODEC, buffered_settings, slowdowns
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import ProtocolError

__all__ = ["BufferedClient"]


class BufferedClient(QuantizedClient):
    """A client of a buffered method: each ``fit`` is one job, seeded by (seed, job, partition)."""

    def __init__(self, config: RunConfig, partition_id: int, num_partitions: int) -> None:
        super().__init__(config, partition_id, num_partitions)
        settings = buffered_settings(self.config.settings)
        self.slowdown = slowdowns(settings.client_slowdown).get(self.partition_id, 1.0)

    def _job(self, config: Config, server_round: int) -> FitJob:
        job = config.get(JOB_KEY)
        if isinstance(job, bool) or not isinstance(job, int) or job < 0:
            raise ProtocolError(f"fit instructions carry no valid {JOB_KEY}: {job!r}")
        return FitJob(("job", job), {JOB_KEY: job})

    def _start(self, layout: StateLayout, parameters: NDArrays) -> tuple[State, Reference | None]:
        """The job's start model, as float32."""
        return layout.unpack(parameters, START_CODEC), None
