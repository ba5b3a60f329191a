"""A trivial Flower app — the floor of a round's cost in a given federation (issue 29's target
"round / a trivial Flower app's round"): FedAvg over a 1-element array whose clients return it
untouched, on the same Ray engine and client resources as ``experiments.cli.simulate``.

    python -m experiments.bench.trivial_app <num-clients> <per-round> <rounds> <times.json>

writes to times.json the wall seconds of each round (configure_fit to the end of aggregate_fit),
``rounds``, and the wall-clock time (``time.time()``) at which the first round began,
``first_round_at``: its launcher's clock taken before the launch gives the app's start-up.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

from experiments.cli.terminal import quiet_flower_logs

__all__ = ["main"]


class _EchoClient(NumPyClient):
    """Returns the parameters it was sent: no model, no data, no training."""

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return parameters, 1, {}


class _TimedFedAvg(FedAvg):
    """FedAvg that records each round's wall time, sampling to aggregation."""

    def __init__(self, per_round: int, times: list[float]) -> None:
        super().__init__(
            fraction_fit=0.0,
            min_fit_clients=per_round,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            min_available_clients=per_round,
            initial_parameters=ndarrays_to_parameters([np.zeros(1, dtype=np.float32)]),
        )
        self.times = times
        self.started = 0.0
        self.first_round_at: float | None = None

    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        if self.first_round_at is None:
            self.first_round_at = time.time()
        self.started = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.times.append(time.perf_counter() - self.started)
        return aggregated


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        raise SystemExit(
            "usage: python -m experiments.bench.trivial_app "
            "<num-clients> <per-round> <rounds> <times.json>"
        )
    clients, per_round, rounds, out = int(args[0]), int(args[1]), int(args[2]), Path(args[3])
    strategy = _TimedFedAvg(per_round, [])

    def server(context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    with quiet_flower_logs(False):
        run_simulation(
            ServerApp(server_fn=server),
            ClientApp(client_fn=lambda context: _EchoClient().to_client()),
            num_supernodes=clients,
            backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
        )
    out.write_text(
        json.dumps({"rounds": strategy.times, "first_round_at": strategy.first_round_at}) + "\n"
    )


if __name__ == "__main__":
    main()
