"""The run's clients: who holds which partition, and which partitions a round samples."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from logging import INFO

import numpy as np
from flwr.common import GetPropertiesIns
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from fp8fl.federated.seeds import derive_seed

__all__ = ["CLIENT_WAIT_S", "DISCOVERY_CONCURRENCY", "ClientDirectory", "ClientsUnavailableError"]

CLIENT_WAIT_S = 600
DISCOVERY_CONCURRENCY = 256
"""Clients asked for their partition at once. Each question is a round trip that Flower's
simulation engine serves on a 0.1 s polling tick, so 32 at a time left 2112 clients waiting
about 2112 / 32 ticks; the threads only wait, they do not compute."""


class ClientsUnavailableError(RuntimeError):
    """Fewer clients connected than the run needs, or their partitions do not add up."""


class ClientDirectory:
    """Partition ids and sizes of the connected clients, learned once at the start of a run."""

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.partition_of: dict[str, int] = {}  # client (node) id -> partition id
        self.partition_size: dict[int, int] = {}

    def discover(self, client_manager: ClientManager) -> None:
        """Wait for every client and ask each for its partition id and size."""
        wanted = self.num_clients
        if not client_manager.wait_for(wanted, timeout=CLIENT_WAIT_S):
            raise ClientsUnavailableError(
                f"only {client_manager.num_available()} of num-clients = {wanted} clients "
                f"connected within {CLIENT_WAIT_S} s"
            )
        proxies = list(client_manager.all().values())
        with ThreadPoolExecutor(max_workers=min(DISCOVERY_CONCURRENCY, len(proxies))) as pool:
            replies = list(
                pool.map(
                    lambda p: p.get_properties(GetPropertiesIns({}), timeout=None, group_id=0),
                    proxies,
                )
            )
        for proxy, reply in zip(proxies, replies):
            pid = int(reply.properties["partition-id"])
            if pid in self.partition_size:
                raise ClientsUnavailableError(
                    f"two clients claim partition {pid}: check each "
                    "SuperNode's --node-config partition-id"
                )
            self.partition_of[proxy.cid] = pid
            self.partition_size[pid] = int(reply.properties["num-examples"])
        missing = sorted(set(range(wanted)) - set(self.partition_size))
        if missing:
            raise ClientsUnavailableError(f"no client holds partition(s) {missing[:10]}")
        log(
            INFO,
            "fp8fl: %d clients, partitions 0..%d, %d training examples in all",
            len(proxies),
            wanted - 1,
            sum(self.partition_size.values()),
        )

    def sample(
        self, client_manager: ClientManager, count: int, seed: int, server_round: int
    ) -> dict[int, ClientProxy]:
        """``count`` partitions drawn with (seed, round) from the connected ones, by id."""
        available = {
            self.partition_of[cid]: proxy
            for cid, proxy in client_manager.all().items()
            if cid in self.partition_of
        }
        count = min(count, len(available))
        rng = np.random.default_rng(derive_seed(seed, "sample", server_round))
        sampled = sorted(rng.choice(sorted(available), size=count, replace=False).tolist())
        return {pid: available[pid] for pid in sampled}
