"""The ClientApp: one ``QuantizedClient`` per SuperNode, given its partition through node config
(``partition-id``, ``num-partitions``: set by the simulation engine, or by ``--node-config``)."""

from __future__ import annotations

from flwr.client import Client, ClientApp
from flwr.common import Context

from clients.buffered_client import BufferedClient
from clients.quantized_client import QuantizedClient
from fp8fl.federated.config import RunConfig

__all__ = ["app", "make_client_app"]


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """A ClientApp for ``config``, or for the run config Flower passes in (``flwr run``)."""

    def client_fn(context: Context) -> Client:
        run = config or RunConfig.from_mapping(dict(context.run_config))
        kind = QuantizedClient if run.components.server_loop == "sync" else BufferedClient
        return kind(
            run,
            int(context.node_config["partition-id"]),
            int(context.node_config["num-partitions"]),
        ).to_client()

    return ClientApp(client_fn=client_fn)


app = make_client_app()
