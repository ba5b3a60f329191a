"""Where a simulated client ran (the ``ray-node`` update metric) is recorded, but it is not part
of the method: the byte ledger does not count it, so a cluster run's bytes equal a one-node run's."""

from __future__ import annotations

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fp8fl.federated.seams import ClientUpdate
from fp8fl.run.protocol import RAY_NODE
from strategies.ledger import Ledger, fitres_bytes
from strategies.round_core import ray_nodes


def fit_res(**metrics) -> FitRes:
    parameters = ndarrays_to_parameters([np.arange(10, dtype=np.float32)])
    return FitRes(Status(Code.OK, ""), parameters, 5, {"partition-id": 1, **metrics})


def test_the_ledger_does_not_count_the_ray_node():
    plain, placed = Ledger(), Ledger()
    plain.received(fit_res(), sender="1")
    placed.received(fit_res(**{RAY_NODE: "ab" * 28}), sender="1")
    assert placed.round_up == plain.round_up == fitres_bytes(fit_res())
    assert fitres_bytes(fit_res(**{RAY_NODE: "ab" * 28})) > fitres_bytes(fit_res())  # it is sent


def test_the_round_record_names_each_updates_node():
    def update(pid: int, **metrics) -> ClientUpdate:
        return ClientUpdate(pid, 5, {}, metrics)

    assert ray_nodes([update(3, **{RAY_NODE: "n1"}), update(0, **{RAY_NODE: "n2"})]) == {
        "3": "n1",
        "0": "n2",
    }
    assert ray_nodes([update(3)]) is None  # a deployment: no Ray
