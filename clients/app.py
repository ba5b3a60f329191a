"""The ClientApp: one ``QuantizedClient`` per SuperNode, given its partition through node config
(``partition-id``, ``num-partitions``: set by the simulation engine, or by ``--node-config``).

A SuperNode whose node config has ``attack`` (``attack="all"``, one of ``hostile_client.ATTACKS``)
runs a ``HostileClient`` instead: the hostile node of a deployment (``fp8fl-deploy up --hostile``)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.client import Client, ClientApp
from flwr.common import Context

from clients.buffered_client import BufferedClient
from clients.hostile_client import hostile_client
from fp8fl.run.config import RunConfig

__all__ = ["CLIENTS", "app", "make_client_app"]


def _buffered_client(run: RunConfig, pid: int, n: int, attack: str | None) -> Client:
    if attack is not None:
        raise ValueError(
            f"node config attack = {attack!r}: hostile clients exist for the synchronous loop "
            f"only, and this run's server loop is {run.components.server_loop!r}"
        )
    return BufferedClient(run, pid, n).to_client()


CLIENTS: dict[str, Callable[[RunConfig, int, int, str | None], Client]] = {
    "sync": hostile_client,
    "buffered-simulated": _buffered_client,
    "buffered-real": _buffered_client,
}
"""The client of each server loop (``strategies.loops.SERVER_LOOPS``), given the run config,
the partition, the number of partitions and the node's ``attack`` (None: an honest node)."""


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """A ClientApp for ``config``, or for the run config Flower passes in (``flwr run``)."""

    def client_fn(context: Context) -> Client:
        run = config or RunConfig.from_mapping(dict(context.run_config))
        node = context.node_config
        pid, n, attack = int(node["partition-id"]), int(node["num-partitions"]), node.get("attack")
        client = CLIENTS[run.components.server_loop]
        return client(run, pid, n, None if attack is None else str(attack))

    return ClientApp(client_fn=client_fn)


app = make_client_app()
