"""The ServerApp: validate the run config before any client starts, then run ``FP8FedAvg``."""

from __future__ import annotations

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fp8fl.federated.config import RunConfig
from strategies.fp8_fedavg import FP8FedAvg

__all__ = ["app", "make_server_app"]


def make_server_app(config: RunConfig | None = None) -> ServerApp:
    """A ServerApp for ``config``, or for the run config Flower passes in (``flwr run``)."""

    def server_fn(context: Context) -> ServerAppComponents:
        run = config or RunConfig.from_mapping(dict(context.run_config))
        strategy = FP8FedAvg(run)
        return ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=strategy.rounds_to_run)
        )

    return ServerApp(server_fn=server_fn)


app = make_server_app()
