"""Where a client ran: in a Ray simulation, the id of the Ray node that ran it (``ray-node``), so
that a run on a multi-node Ray cluster records which node trained each update (docs/cluster.md).

It is a fact of the simulation, not part of fp8fl's protocol: the byte ledger does not count it
(``strategies.ledger.Ledger.received``), so bytes stay those of the method on any cluster.
"""

from __future__ import annotations

import sys

from fp8fl.run.protocol import RAY_NODE

__all__ = ["placement_metrics"]


def placement_metrics() -> dict[str, str]:
    """``{"ray-node": <node id>}`` in a Ray worker; ``{}`` elsewhere (a deployment's SuperNode)."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; nothing else needs it
    if ray is None or not ray.is_initialized():
        return {}
    return {RAY_NODE: ray.get_runtime_context().get_node_id()}
