"""The byte ledger: exact payload bytes of every FitIns and FitRes as Flower puts them on the wire.

Flower 1.39 sends a message's content as a tree of content-addressed objects (RecordDict →
ArrayRecord / ConfigRecord → Array → ArrayChunk of at most 5 MiB), each pushed as its serialized
bytes, identical objects once. A message's payload is therefore the summed length of the deflated
objects of its RecordDict tree, which is what is counted here: the arrays (with their .npy
headers), α/β, config and metric scalars, and Flower's per-object headers — built with Flower's
own converters (``fitins_to_recorddict`` / ``fitres_to_recorddict``), not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.common import FitIns, FitRes, Parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

__all__ = ["Ledger", "array_bytes", "fitins_bytes", "fitres_bytes", "payload_bytes"]


def payload_bytes(record: object) -> int:
    """Summed length of the deflated objects of a RecordDict tree (each unique object once)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


def fitins_bytes(ins: FitIns) -> int:
    return payload_bytes(compat.fitins_to_recorddict(ins, keep_input=True))


def fitres_bytes(res: FitRes) -> int:
    return payload_bytes(compat.fitres_to_recorddict(res, keep_input=True))


def array_bytes(parameters: Parameters) -> int:
    """The serialized arrays alone (``.npy`` bytes), without Flower's object headers."""
    return sum(len(t) for t in parameters.tensors)


@dataclass
class Ledger:
    """Bytes per direction, per round and cumulative."""

    up: int = 0
    down: int = 0
    round_up: int = 0
    round_down: int = 0
    round_arrays_up: int = 0
    round_arrays_down: int = 0
    per_client_down: int = 0
    per_client_up: dict[str, int] = field(default_factory=dict)

    def start_round(self) -> None:
        self.round_up = self.round_down = self.round_arrays_up = self.round_arrays_down = 0
        self.per_client_down = 0
        self.per_client_up = {}

    def sent(self, ins: FitIns, copies: int) -> None:
        """``copies`` clients each receive ``ins``."""
        self.per_client_down = fitins_bytes(ins)
        self.round_down += copies * self.per_client_down
        self.round_arrays_down += copies * array_bytes(ins.parameters)

    def received(self, res: FitRes, sender: str) -> None:
        self.per_client_up[sender] = fitres_bytes(res)
        self.round_up += self.per_client_up[sender]
        self.round_arrays_up += array_bytes(res.parameters)

    def close_round(self) -> dict[str, object]:
        self.up += self.round_up
        self.down += self.round_down
        return {
            "bytes_up": self.round_up,
            "bytes_down": self.round_down,
            "array_bytes_up": self.round_arrays_up,
            "array_bytes_down": self.round_arrays_down,
            "cum_bytes_up": self.up,
            "cum_bytes_down": self.down,
            "cum_bytes": self.up + self.down,
            "bytes_down_per_client": self.per_client_down,
            "bytes_up_per_client": dict(self.per_client_up),
        }
