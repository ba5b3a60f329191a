"""Server loops by name (``MethodSpec.components.server_loop``): how a ServerApp drives a method.

One ServerApp serves every method through Flower's low-level entry point (``@app.main()`` with a
``Grid``): it validates the run config, then hands the Grid to the method's loop.

* ``sync``: synchronous rounds. The loop is Flower's own round loop (``start_grid``) over the
  ``QuantizedFedAvg`` Strategy — exactly what a ``ServerApp(server_fn=...)`` runs — so the
  synchronous methods keep Flower's ``NumPyClient`` / ``Strategy`` shape.
* An asynchronous, buffered loop registers here too and talks to the Grid itself
  (``push_messages`` / ``pull_messages``), dispatching to clients as they finish.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.server import ServerConfig
from flwr.server.compat import start_grid
from flwr.serverapp import Grid

from fp8fl.federated.config import RunConfig
from strategies.quantized_fedavg import QuantizedFedAvg

__all__ = ["SERVER_LOOPS", "run_sync"]


def run_sync(grid: Grid, config: RunConfig) -> None:
    """Synchronous rounds of ``QuantizedFedAvg`` (a resumed run asks for the remaining ones)."""
    strategy = QuantizedFedAvg(config)
    start_grid(grid=grid, strategy=strategy, config=ServerConfig(num_rounds=strategy.rounds_to_run))


SERVER_LOOPS: dict[str, Callable[[Grid, RunConfig], None]] = {"sync": run_sync}
