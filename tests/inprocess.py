"""Run a configuration in this process: Flower's legacy ``Server`` round loop over
``QuantizedFedAvg`` — what ``start_grid`` runs in a ServerApp — with every client called directly.

For tests that need many clients and rounds of real training, where Ray's workers on a small
machine cost minutes: the strategy, the clients and the records are the same as in
``experiments.cli.simulate``; what is left out is the Grid's transport (each message is still
converted to Flower's records and back). Clients run one at a time, as each seeds torch's global
generator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.client import Client
from flwr.common import (
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    ReconnectIns,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Server, SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fp8fl.run.config import RunConfig
from fp8fl.run.results import read_rounds
from strategies.quantized_fedavg import QuantizedFedAvg

__all__ = ["run_in_process"]

_ONE_AT_A_TIME = threading.Lock()


class InProcessProxy(ClientProxy):
    """The client of one partition, built afresh for every call (as Flower's ``client_fn``)."""

    def __init__(self, partition: int, make_client: Callable[[int], Client]) -> None:
        super().__init__(str(partition))
        self.partition = partition
        self.make_client = make_client

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        return self.make_client(self.partition).get_properties(ins)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        sent = compat.recorddict_to_fitins(compat.fitins_to_recorddict(ins, True), True)
        with _ONE_AT_A_TIME:
            res = self.make_client(self.partition).fit(sent)
        return compat.recorddict_to_fitres(compat.fitres_to_recorddict(res, True), False)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        raise RuntimeError("not used in process: the strategy initialises the parameters itself")

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        raise RuntimeError("not used in process: federated evaluation is off")

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        return DisconnectRes(reason="")


def run_in_process(
    config: RunConfig, make_client: Callable[[int], Client]
) -> tuple[Path, list[dict[str, Any]]]:
    """Run ``config`` with ``make_client(partition)`` as its clients; return its folder and
    rounds (``config.results_dir`` must hold no other run)."""
    manager = SimpleClientManager()
    for partition in range(config.num_clients):
        manager.register(InProcessProxy(partition, make_client))
    strategy = QuantizedFedAvg(config)
    Server(client_manager=manager, strategy=strategy).fit(strategy.rounds_to_run, timeout=None)
    (run_dir,) = [p for p in Path(config.results_dir).iterdir() if p.is_dir()]
    return run_dir, read_rounds(run_dir)
