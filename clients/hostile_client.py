"""A client that trains honestly, then sends a well-formed hostile update (every check passes):
the attacker of the robust-aggregation tests.

* ``scale-ranges``: every range it sends × 1000 — the α and β of the ``scales`` array and, for the
  clipped-uniform codec, each layer's clip s. Each stays finite and positive, and each decoded
  weight tensor grows with its α (or s).
* ``negate-model``: the model −10·w — every weight and dense tensor × −10, every α and β × 10 (so
  that the scaled weights stay inside their ranges), encoded with the run's codec.

``hostile_client_app`` makes the clients of chosen partitions attack; as the ``app`` of a SuperNode
it reads the attack from the node config (``attack = "scale-ranges"``; absent: honest).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.client import Client, ClientApp
from flwr.common import Config, Context, NDArrays, Scalar

from clients.quantized_client import QuantizedClient
from fp8fl.federated.config import RunConfig
from fp8fl.federated.protocol import check_instructions
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.training import build_run_model, run_layout
from fp8fl.federated.wire import StateLayout
from fp8fl.methods.seams import Codec

__all__ = [
    "ATTACKS",
    "HostileClient",
    "app",
    "hostile_client",
    "hostile_client_app",
    "negate_model",
    "scale_ranges",
]

RANGE_FACTOR = 1000.0
MODEL_FACTOR = -10.0
RANGE_ARRAYS = ("scales", "clips")
"""The float32 arrays of a message that hold ranges: the layout's α/β and the clipped-uniform
codec's per-layer clip s."""


def scale_ranges(layout: StateLayout, codec: Codec, arrays: NDArrays) -> NDArrays:
    """The message with every range × ``RANGE_FACTOR`` (``RANGE_ARRAYS``), codes untouched."""
    names = [spec.name for spec in layout.array_specs(codec)]
    factor = np.float32(RANGE_FACTOR)
    return [a * factor if name in RANGE_ARRAYS else a for name, a in zip(names, arrays)]


def negate_model(
    layout: StateLayout, codec: Codec, arrays: NDArrays, generator: torch.Generator
) -> NDArrays:
    """The message of the model it carries × ``MODEL_FACTOR`` (its ranges × |MODEL_FACTOR|)."""
    state = layout.unpack(arrays, codec)
    scales = set(layout.scales)
    hostile = {
        name: value * (abs(MODEL_FACTOR) if name in scales else MODEL_FACTOR)
        for name, value in state.items()
    }
    return layout.pack(hostile, codec, generator)


class HostileClient(QuantizedClient):
    """A ``QuantizedClient`` whose update, after honest local training, is replaced by an attack
    of ``ATTACKS``."""

    def __init__(
        self, config: RunConfig, partition_id: int, num_partitions: int, attack: str
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        super().__init__(config, partition_id, num_partitions)
        self.attack = attack
        self.layout = run_layout(config, build_run_model(config, self.data.num_classes))

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        arrays, n, metrics = super().fit(parameters, config)
        if self.attack == "scale-ranges":
            return scale_ranges(self.layout, self.codec, arrays), n, metrics
        server_round = check_instructions(config, self.config)
        generator = seeded_generator(self.config.seed, "hostile", server_round, self.partition_id)
        return negate_model(self.layout, self.codec, arrays, generator), n, metrics


ATTACKS = ("scale-ranges", "negate-model")


def hostile_client(
    config: RunConfig, partition_id: int, num_partitions: int, attack: str | None
) -> Client:
    """The client of a partition: honest without ``attack``, else a ``HostileClient``."""
    if attack is None:
        return QuantizedClient(config, partition_id, num_partitions).to_client()
    return HostileClient(config, partition_id, num_partitions, attack).to_client()


def hostile_client_app(
    config: RunConfig | None = None, attacks: Mapping[int, str] | None = None
) -> ClientApp:
    """A ClientApp whose clients of the partitions in ``attacks`` (partition -> attack) attack and
    the others train honestly; without ``attacks``, each SuperNode's node config ``attack`` says.
    Without ``config``, the run config Flower passes in."""

    def client_fn(context: Context) -> Client:
        pid = int(context.node_config["partition-id"])
        attack = attacks.get(pid) if attacks is not None else context.node_config.get("attack")
        return hostile_client(
            config or RunConfig.from_mapping(dict(context.run_config)),
            pid,
            int(context.node_config["num-partitions"]),
            None if attack is None else str(attack),
        )

    return ClientApp(client_fn=client_fn)


app = hostile_client_app()
