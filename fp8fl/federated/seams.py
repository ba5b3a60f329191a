"""The seams of a federated method: what a quantizer, a codec and an aggregator must provide.

A method is one component of each kind, named by its family (``fp8fl.methods.family``),
plus the server loop that drives them (``strategies.loops``: the loop needs Flower, the core does
not). A method family (``fp8fl.methods.family``) builds its components from its typed settings
and the run config, which it sees through ``RunView``, never through ``fp8fl.run.config`` itself:
the seams sit below the methods and the run's composition.

* ``Quantizer`` — what local training simulates on the client (and the server's model of it).
* ``Codec`` — one wire format for both directions: it turns the quantized weights of a state into
  the arrays that travel, owns its side information, and states their exact size.
* ``Aggregator`` — the server update from the decoded client states; its own state (a moving
  average, a buffer) goes into the checkpoint through ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fp8fl.numerics.formats import FloatFormat

__all__ = [
    "Aggregate",
    "Aggregator",
    "ArraySpec",
    "ClientUpdate",
    "CodeRun",
    "Codec",
    "Components",
    "DescribesCodes",
    "ExposesCodes",
    "LocalOptimizer",
    "Quantizer",
    "RunView",
    "SendsChanges",
    "StatelessAggregator",
    "TrainsItself",
    "states_and_weights",
]

State = dict[str, torch.Tensor]


def one_of(key: str, choices: tuple[str, ...], preset: bool = False) -> Callable[[str], str | None]:
    """A run-config key's check: the value is one of ``choices`` (or "", the preset's, if
    ``preset``)."""

    def check(value: str) -> str | None:
        if value in choices or (preset and value == ""):
            return None
        return f"{key} must be one of {', '.join(choices)}, got {value!r}"

    return check


@dataclass(frozen=True)
class Components:
    """The registered names of a method's quantizer, codec, aggregator and server loop."""

    quantizer: str
    codec: str
    aggregator: str
    server_loop: str = "sync"
    downlink: str | None = None  # the downlink's codec, when it differs from the uplink's
    moving_average: float = 0.0  # λ of a server moving average around the aggregator; 0 = none

    @property
    def downlink_codec(self) -> str:
        return self.downlink or self.codec

    @property
    def synchronous(self) -> bool:
        """Rounds of FedAvg's shape (the ``sync`` loop), not a buffered asynchronous loop."""
        return self.server_loop == "sync"


class RunView(Protocol):
    """What a family reads of the run config beyond its own settings (``fp8fl.run.config``'s
    ``RunConfig`` provides it; run-config keys are these names with ``-`` for ``_``)."""

    @property
    def method(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def num_clients(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def moving_average(self) -> float:
        """λ of a server moving average around the method's aggregator (0: none)."""
        ...

    @property
    def robust_aggregation(self) -> str: ...
    @property
    def fmt(self) -> FloatFormat:
        """``format`` as a ``FloatFormat``."""
        ...


@dataclass(frozen=True)
class ArraySpec:
    """One array a codec puts into a message: its name, dtype and number of elements."""

    name: str
    dtype: np.dtype
    size: int


@dataclass(frozen=True)
class CodeRun:
    """A run of ``count`` codes of ``bits`` bits (at most 8) for the tensor ``name`` inside one of
    a codec's integer arrays, packed densely MSB first from a byte boundary
    (``packed_length(count, bits)`` bytes). The lossless stage models each run on its own."""

    name: str
    count: int
    bits: int


@runtime_checkable
class DescribesCodes(Protocol):
    """A codec that says how its integer arrays split into runs of codes, so that the lossless
    stage (``fp8fl.federated.lossless``) models each tensor's codes in their own alphabet; an
    array it does not describe is coded as one run of bytes."""

    def code_runs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[CodeRun]]:
        """For each integer array (by ``ArraySpec`` name), its runs in order, covering it exactly."""
        ...


@runtime_checkable
class ExposesCodes(Protocol):
    """A codec whose message holds one code per weight, so that the server can count how many of
    a client's codes equal those it was sent (``unchanged_codes``: BQ's stall shows there)."""

    def codes(self, stream: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> np.ndarray:
        """One code per weight (uint8), unpacked from the codec's encoded ``weights`` array."""
        ...


class Quantizer(Protocol):
    """What local training simulates: the model a client trains, and the server's copy of it."""

    name: str

    def prepare(self, model: nn.Module) -> nn.Module:
        """The training form of an FP32 model (e.g. QAT layers), ready to load a global state."""
        ...

    def quantized_names(self, model: nn.Module) -> list[str]:
        """The state entries of a prepared model that the codec carries, in state order."""
        ...

    @property
    def calibrates(self) -> bool:
        """Whether the server sets the model's ranges from a batch of training data once."""
        ...

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None: ...


@runtime_checkable
class SendsChanges(Protocol):
    """A quantizer whose client sends the change of its model over a fit, Δ = y − x (x: the model
    it started from), instead of the model: update compression (QSGD, FedBuff, QAFeL). A
    synchronous server adds each decoded Δ to the global model (so such a method sends that
    model down exactly, as float32); a buffered server steps with the Δs themselves."""

    def change(self, trained: State, start: State) -> State:
        """What the uplink carries: ``trained`` − ``start``, entry by entry."""
        ...


class LocalOptimizer(Protocol):
    """The part of ``torch.optim.Optimizer`` that local training uses."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


@runtime_checkable
class TrainsItself(Protocol):
    """A quantizer that brings its own local step (e.g. low-precision training without an FP32
    master copy); local training of other quantizers uses the run's optimizer."""

    def local_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> LocalOptimizer:
        """The optimizer of one round's local training of ``model`` (fresh state every round)."""
        ...


class Codec(Protocol):
    """One wire format, both directions, for the quantized weights of a state (the ``StateLayout``
    of ``fp8fl.federated.wire`` adds the scales and dense tensors that travel as float32)."""

    name: str

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        """The arrays it adds to a message for weights of these shapes, in order; their data is
        exactly what it sends (``sum(size * dtype.itemsize)`` bytes)."""
        ...

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        """The arrays of ``weights`` (name -> float32 tensor, in layout order)."""
        ...

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        """Decode ``arrays`` (already checked against ``array_specs``) into one float32 tensor per
        name of ``shapes``, plus any side information under other names (e.g. a layer's
        quantization error, for the aggregator); ``state`` holds the message's decoded scales.
        Raises ``ValueError`` naming the problem."""
        ...


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted, decoded update."""

    partition: int
    num_examples: int
    state: State
    metrics: Mapping[str, Any] = field(default_factory=dict)
    side: State = field(default_factory=dict)  # the codec's side information


@dataclass(frozen=True)
class Aggregate:
    """The new global state and what the round record should say about how it was found."""

    state: State
    metrics: dict[str, Any] = field(default_factory=dict)


def states_and_weights(updates: Sequence[ClientUpdate]) -> tuple[list[State], list[int]]:
    """The decoded states and their n_k, in the updates' order."""
    return [u.state for u in updates], [u.num_examples for u in updates]


class StatelessAggregator:
    """Base of aggregators that keep nothing between rounds."""

    name: str

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: State) -> None:
        if state:
            raise ValueError(f"aggregator {self.name!r} keeps no state, got {sorted(state)}")


class Aggregator(Protocol):
    """The server update. Updates arrive sorted by partition, so the result is reproducible."""

    name: str

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate: ...

    def state_dict(self) -> State:
        """What must survive a restart (tensors only: the checkpoint loads with weights_only)."""
        ...

    def load_state_dict(self, state: State) -> None: ...
