"""Server loops by name (``RunConfig.components.server_loop``): how a ServerApp drives a method.

One ServerApp serves every method through Flower's low-level entry point (``@app.main()`` with a
``Grid``): it validates the run config, then hands the Grid to the method's loop.

* ``sync``: synchronous rounds. The loop is Flower's own round loop (``start_grid``) over the
  ``QuantizedFedAvg`` Strategy — exactly what a ``ServerApp(server_fn=...)`` runs — so the
  synchronous methods keep Flower's ``NumPyClient`` / ``Strategy`` shape.
* ``buffered-simulated``: FedBuff / QAFeL steps on a seeded asynchronous schedule, one round per
  server step (``strategies.buffered_loop``); it talks to the Grid itself (``push_messages`` /
  ``pull_messages``).
* ``buffered-real``: the same steps under real asynchrony: clients are kept busy and a step is
  taken whenever K updates have arrived (not bit-reproducible).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.server import ServerConfig
from flwr.server.compat import start_grid
from flwr.serverapp import Grid

from fp8fl.run.config import RunConfig
from strategies.buffered_loop import run_real, run_simulated
from strategies.quantized_fedavg import QuantizedFedAvg

__all__ = ["SERVER_LOOPS", "run_sync"]


def run_sync(grid: Grid, config: RunConfig) -> None:
    """Synchronous rounds of ``QuantizedFedAvg`` (a resumed run asks for the remaining ones)."""
    strategy = QuantizedFedAvg(config)
    start_grid(grid=grid, strategy=strategy, config=ServerConfig(num_rounds=strategy.rounds_to_run))


SERVER_LOOPS: dict[str, Callable[[Grid, RunConfig], None]] = {
    "sync": run_sync,
    "buffered-simulated": run_simulated,
    "buffered-real": run_real,
}
