"""Run one configuration in a local simulation without a SuperLink: the same ServerApp, ClientApp
and Ray engine as ``flwr run``, started in this process by ``flwr.simulation.run_simulation``.

    python -m experiments.cli.simulate '{"num-clients": 100, "clients-per-round": 0.1}' [--verbose]

Used by the tests and benchmarks that need to watch or kill a run; ``fp8fl-flwr run .`` remains the
way to run an experiment.
"""

from __future__ import annotations

import json
import os
import sys

from flwr.client import ClientApp
from flwr.simulation import run_simulation

from clients.app import make_client_app
from experiments.cli.terminal import quiet_flower_logs
from fp8fl.run.config import RunConfig
from strategies.app import make_server_app

__all__ = ["main", "simulate"]


def simulate(
    config: RunConfig,
    client_app: ClientApp | None = None,
    verbose: bool = False,
    ray_address: str | None = None,
) -> None:
    """``config`` on ``num-clients`` virtual SuperNodes, one CPU each (Flower's INFO lines left
    out unless ``verbose``): on a private two-CPU Ray instance, or on the running Ray cluster at
    ``ray_address`` (default ``$RAY_ADDRESS``; docs/cluster.md)."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    init_args = {"address": address} if address else {"num_cpus": 2}
    with quiet_flower_logs(verbose):
        run_simulation(
            make_server_app(config),
            client_app or make_client_app(config),
            num_supernodes=config.num_clients,
            backend_config={"client_resources": {"num_cpus": 1}, "init_args": init_args},
        )


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if len(args) != 1:
        raise SystemExit(
            "usage: python -m experiments.cli.simulate '<run config as JSON>' [--verbose]"
        )
    simulate(RunConfig.from_mapping(json.loads(args[0])), verbose=verbose)


if __name__ == "__main__":
    main()
