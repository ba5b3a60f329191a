"""Run one configuration in a local simulation without a SuperLink: the same ServerApp, ClientApp
and Ray engine as ``flwr run``, started in this process by ``flwr.simulation.run_simulation``.

    python -m experiments.cli.simulate '{"num-clients": 100, "clients-per-round": 0.1}'

Used by the tests and benchmarks that need to watch or kill a run; ``fp8fl-flwr run .`` remains the
way to run an experiment.
"""

from __future__ import annotations

import json
import sys

from flwr.client import ClientApp
from flwr.simulation import run_simulation

from clients.app import make_client_app
from fp8fl.federated.config import RunConfig
from strategies.app import make_server_app

__all__ = ["main", "simulate"]


def simulate(config: RunConfig, client_app: ClientApp | None = None) -> None:
    """``config`` on ``num-clients`` virtual SuperNodes, one CPU each."""
    run_simulation(
        make_server_app(config),
        client_app or make_client_app(config),
        num_supernodes=config.num_clients,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m experiments.cli.simulate '<run config as JSON>'")
    simulate(RunConfig.from_mapping(json.loads(args[0])))


if __name__ == "__main__":
    main()
