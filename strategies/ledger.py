"""The byte ledger: exact payload bytes of every FitIns and FitRes as Flower puts them on the wire.

Flower 1.39 sends a message's content as a tree of content-addressed objects (RecordDict →
ArrayRecord / ConfigRecord → Array → ArrayChunk of at most 5 MiB), each pushed as its serialized
bytes, identical objects once. A message's payload is therefore the summed length of the deflated
objects of its RecordDict tree, which is what is counted here: the arrays (with their .npy
headers), α/β, config and metric scalars, and Flower's per-object headers — built with Flower's
own converters (``fitins_to_recorddict`` / ``fitres_to_recorddict``), not estimated.

In a mixed-precision run (``client-formats``) the ledger also counts each format group's bytes,
written as ``bytes_by_format`` (a round's, and the run's totals in ``summary.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.common import FitIns, FitRes, Parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fp8fl.run.protocol import RAY_NODE

__all__ = [
    "PLACEMENT_METRICS",
    "Ledger",
    "array_bytes",
    "fitins_bytes",
    "fitres_bytes",
    "format_totals",
    "payload_bytes",
]

PLACEMENT_METRICS = frozenset({RAY_NODE})
"""Update metrics that say where a simulated client ran (``clients.placement``), not counted."""
GROUP_TOTALS = ("clients", "bytes_up", "bytes_down", "array_bytes_up", "array_bytes_down")
"""What a format group's entry of ``bytes_by_format`` sums over the round (or the run)."""


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
    """Bytes per direction, per round and cumulative; per format group in a mixed-precision run
    (``group`` names the clients' format; "" in a single-format run, which keeps no groups)."""

    up: int = 0
    down: int = 0
    round_up: int = 0
    round_down: int = 0
    round_arrays_up: int = 0
    round_arrays_down: int = 0
    per_client_down: int = 0
    per_client_up: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # this round's, by format

    def start_round(self) -> None:
        self.round_up = self.round_down = self.round_arrays_up = self.round_arrays_down = 0
        self.per_client_down = 0
        self.per_client_up = {}
        self.groups = {}

    def sent(self, ins: FitIns, copies: int, group: str = "") -> None:
        """``copies`` clients (of format ``group``) each receive ``ins``."""
        self.per_client_down = fitins_bytes(ins)
        arrays = array_bytes(ins.parameters)
        self.round_down += copies * self.per_client_down
        self.round_arrays_down += copies * arrays
        if group:
            entry = self._group(group)
            entry["clients"] += copies
            entry["bytes_down"] += copies * self.per_client_down
            entry["array_bytes_down"] += copies * arrays
            entry["bytes_down_per_client"] = self.per_client_down

    def received(self, res: FitRes, sender: str, group: str = "") -> None:
        """The update of client ``sender`` (of format ``group``), valid or not; a simulation's
        placement metrics (``PLACEMENT_METRICS``) are not the method's bytes and are not counted."""
        if PLACEMENT_METRICS & res.metrics.keys():
            metrics = {k: v for k, v in res.metrics.items() if k not in PLACEMENT_METRICS}
            res = FitRes(res.status, res.parameters, res.num_examples, metrics)
        self.per_client_up[sender] = fitres_bytes(res)
        arrays = array_bytes(res.parameters)
        self.round_up += self.per_client_up[sender]
        self.round_arrays_up += arrays
        if group:
            entry = self._group(group)
            entry["bytes_up"] += self.per_client_up[sender]
            entry["array_bytes_up"] += arrays

    def _group(self, name: str) -> dict[str, int]:
        return self.groups.setdefault(name, dict.fromkeys(GROUP_TOTALS, 0))

    def close_round(self) -> dict[str, object]:
        """The round's byte fields of ``rounds.jsonl``; with format groups also
        ``bytes_by_format``, and ``bytes_down_per_client`` is then null (it differs by group)."""
        self.up += self.round_up
        self.down += self.round_down
        entry: dict[str, object] = {
            "bytes_up": self.round_up,
            "bytes_down": self.round_down,
            "array_bytes_up": self.round_arrays_up,
            "array_bytes_down": self.round_arrays_down,
            "cum_bytes_up": self.up,
            "cum_bytes_down": self.down,
            "cum_bytes": self.up + self.down,
            "bytes_down_per_client": None if self.groups else self.per_client_down,
            "bytes_up_per_client": dict(self.per_client_up),
        }
        if self.groups:
            entry["bytes_by_format"] = {k: dict(v) for k, v in sorted(self.groups.items())}
        return entry


def format_totals(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Each format group's bytes over the rounds of ``records`` (``{}`` in a single-format run)."""
    totals: dict[str, dict[str, int]] = {}
    for record in records:
        for name, entry in record.get("bytes_by_format", {}).items():
            total = totals.setdefault(name, dict.fromkeys(GROUP_TOTALS, 0))
            for key in GROUP_TOTALS:
                total[key] += entry[key]
    return dict(sorted(totals.items()))
