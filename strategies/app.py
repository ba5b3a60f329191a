"""The ServerApp: validate the run config before any client starts, then run the method's server
loop (``strategies.loops``) on Flower's Grid."""

from __future__ import annotations

from flwr.common import Context
from flwr.server import ServerApp
from flwr.serverapp import Grid

from fp8fl.run.config import RunConfig
from strategies.loops import SERVER_LOOPS

__all__ = ["app", "make_server_app"]


def make_server_app(config: RunConfig | None = None) -> ServerApp:
    """A ServerApp for ``config``, or for the run config Flower passes in (``flwr run``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run = config or RunConfig.from_mapping(dict(context.run_config))
        SERVER_LOOPS[run.components.server_loop](grid, run)

    return server_app


app = make_server_app()
