"""Clients that misbehave on purpose, for the simulation tests: crash, or send a malformed update."""

from __future__ import annotations

import sys

from flwr.client import Client, ClientApp
from flwr.common import Config, Context, NDArrays, Scalar
from ray import cloudpickle

from clients.malformed import MUTATIONS
from clients.quantized_client import QuantizedClient
from fp8fl.run.config import RunConfig

CRASH = "crash"


class FaultyClient(QuantizedClient):
    """A ``QuantizedClient`` that, for the partitions in ``faults``, raises (``"crash"``) or applies a
    mutation of ``clients.malformed.MUTATIONS`` to its otherwise valid update."""

    def __init__(
        self, config: RunConfig, partition_id: int, num_partitions: int, faults: dict[int, str]
    ) -> None:
        super().__init__(config, partition_id, num_partitions)
        self.fault = faults.get(partition_id)

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        if self.fault == CRASH:
            raise RuntimeError(f"injected failure of partition {self.partition_id}")
        update = super().fit(parameters, config)
        return MUTATIONS[self.fault][0](update) if self.fault else update


def faulty_client_app(config: RunConfig, faults: dict[int, str]) -> ClientApp:
    def client_fn(context: Context) -> Client:
        return FaultyClient(
            config,
            int(context.node_config["partition-id"]),
            int(context.node_config["num-partitions"]),
            faults,
        ).to_client()

    return ClientApp(client_fn=client_fn)


# Ray workers unpickle the ClientApp; ship this test helper by value, not by module name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
