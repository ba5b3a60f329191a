"""A client that trains honestly, then replaces its update by an attack: the attacker of the
robust-aggregation tests and the hostile SuperNode of a deployment (node config ``attack``, read by
``clients/app.py``).

Well-formed attacks (every check passes; only a robust rule bounds them):

* ``scale-ranges``: every range it sends × 1000 — the α and β of the ``scales`` array and, for the
  clipped-uniform codec, each layer's clip s. Each stays finite and positive, and each decoded
  weight tensor grows with its α (or s).
* ``negate-model``: the model −10·w — every weight and dense tensor × −10, every α and β × 10 (so
  that the scaled weights stay inside their ranges), encoded with the run's codec.

Round after round (``round_attack``):

* ``malformed``: one mutation of the malformed-update corpus (``clients/malformed.py``) per round,
  in the corpus's sorted order, cycling; the server must reject each with its reason. The corpus is
  written for the FP8 methods' message, so use it with those.
* ``all``: ``scale-ranges``, ``negate-model``, the next corpus mutation, and again.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
import torch
from flwr.client import Client
from flwr.common import Config, NDArrays, Scalar
from flwr.common.logger import log

from clients.malformed import MUTATIONS
from clients.quantized_client import QuantizedClient
from fp8fl.federated.seams import Codec
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import StateLayout
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import check_instructions
from fp8fl.run.training import build_run_model, run_layout

__all__ = [
    "ATTACKS",
    "HostileClient",
    "hostile_client",
    "negate_model",
    "round_attack",
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


WELL_FORMED = ("scale-ranges", "negate-model")
MALFORMED = tuple(sorted(MUTATIONS))
ATTACKS = (*WELL_FORMED, "malformed", "all")


def round_attack(attack: str, server_round: int) -> str:
    """What ``attack`` sends in round ``server_round`` (1, 2, ...): a well-formed attack of
    ``WELL_FORMED`` or a mutation of ``MALFORMED``."""
    i = server_round - 1
    if attack == "malformed":
        return MALFORMED[i % len(MALFORMED)]
    if attack == "all":  # the well-formed attacks, then one mutation, and again
        turn, step = divmod(i, len(WELL_FORMED) + 1)
        return WELL_FORMED[step] if step < len(WELL_FORMED) else MALFORMED[turn % len(MALFORMED)]
    return attack


class HostileClient(QuantizedClient):
    """A ``QuantizedClient`` whose update, after honest local training, is replaced by an attack
    of ``ATTACKS``; it logs what it sends each round."""

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
        server_round = check_instructions(config, self.config)
        attack = round_attack(self.attack, server_round)
        log(
            INFO,
            "fp8fl: hostile client of partition %d sends %s in round %d",
            self.partition_id,
            attack,
            server_round,
        )
        if attack == "scale-ranges":
            return scale_ranges(self.layout, self.codec, arrays), n, metrics
        if attack == "negate-model":
            generator = seeded_generator(
                self.config.seed, "hostile", server_round, self.partition_id
            )
            return negate_model(self.layout, self.codec, arrays, generator), n, metrics
        return MUTATIONS[attack][0]((arrays, n, metrics))


def hostile_client(
    config: RunConfig, partition_id: int, num_partitions: int, attack: str | None
) -> Client:
    """The client of a partition: honest without ``attack``, else a ``HostileClient``."""
    if attack is None:
        return QuantizedClient(config, partition_id, num_partitions).to_client()
    return HostileClient(config, partition_id, num_partitions, attack).to_client()
