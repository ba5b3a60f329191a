"""One synchronous round on the server: the downlink, the check of every update, the aggregate.

``RoundRecord`` holds a round's facts until its evaluation completes the line of ``rounds.jsonl``.
In a mixed-precision run (``client-formats``) the clients form one ``FormatGroup`` per format: each
group gets its own encoding of the global model, and each update is checked and decoded with its
sender's group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.common import FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_proxy import ClientProxy

from fp8fl.federated.seams import ClientUpdate, Codec
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import Reference, StateLayout, WireError
from fp8fl.methods.fp8 import MinifloatCodec
from fp8fl.run.client_formats import client_config, partition_formats
from fp8fl.run.components import Built, build_codec, build_downlink_codec
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import (
    RAY_NODE,
    ProtocolError,
    check_update_metrics,
    fit_instructions,
)
from fp8fl.run.training import build_run_model, run_layout
from strategies.clients import ClientDirectory
from strategies.ledger import Ledger

__all__ = [
    "Broadcast",
    "Downlink",
    "FormatGroup",
    "FormatGroups",
    "RoundRecord",
    "SyncRound",
    "check_sender",
    "format_groups",
    "ray_nodes",
]

OPTIONAL = (
    "skipped",
    "train_loss",
    "unchanged_codes",
    "unchanged_codes_per_client",
    "clipped",
    "formats",
    "nodes",
)
"""Record keys written only when they apply."""


@dataclass
class RoundRecord:
    """What a round did, as written to ``rounds.jsonl`` (with the evaluation and bytes)."""

    round: int
    sampled: list[int]
    clients_ok: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed_partitions: list[int] = field(default_factory=list)
    server_opt_before: float | None = None
    server_opt_after: float | None = None
    aggregated: bool = False
    skipped: str | None = None
    fit_seconds: dict[str, float] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    unchanged_codes: float | None = None
    unchanged_codes_per_client: dict[str, float] | None = None
    clipped: dict[str, dict[str, Any]] | None = None  # the robust rule's, per partition clipped
    formats: dict[str, str] | None = None  # mixed precision: each sampled partition's format
    nodes: dict[str, str] | None = None  # Ray simulation: the node that ran each accepted update

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        return {k: v for k, v in entry.items() if not (k in OPTIONAL and v is None)}


@dataclass(frozen=True)
class FormatGroup:
    """The clients of one number format: the run as they see it (``client_config``), their message
    layout and codecs. A single-format run has one group, named ""."""

    name: str
    config: RunConfig
    layout: StateLayout
    codec: Codec  # the uplink's
    downlink_codec: Codec


@dataclass(frozen=True)
class FormatGroups:
    """The run's format groups by name, and each partition's group name (``()``: one group)."""

    by_name: dict[str, FormatGroup]
    of_partition: tuple[str, ...] = ()

    def of(self, pid: int) -> FormatGroup:
        return self.by_name[self.of_partition[pid] if self.of_partition else ""]


def format_groups(
    config: RunConfig, built: Built, layout: StateLayout, num_classes: int
) -> FormatGroups:
    """The groups of ``config``: the run's own components in a single-format run; in a mixed one,
    each format's layout and codecs built as its clients build them (an FP32 client's layout is
    the plain model's, without α/β)."""
    formats = partition_formats(config)
    if not formats:
        return FormatGroups(
            {"": FormatGroup("", config, layout, built.codec, built.downlink_codec)}
        )
    groups = {}
    for name in dict.fromkeys(formats):
        view = client_config(config, name)
        view_layout = run_layout(view, build_run_model(view, num_classes))
        groups[name] = FormatGroup(
            name, view, view_layout, build_codec(view), build_downlink_codec(view)
        )
    return FormatGroups(groups, formats)


@dataclass(frozen=True)
class Downlink:
    """One encoding of the global model, for every sampled client of a format group."""

    ins: FitIns
    codes: np.ndarray | None  # one code per weight, for codecs with codes
    reference: Reference | None = None  # lossless = "context": what the uplinks are coded against


@dataclass(frozen=True)
class Broadcast:
    """A round's downlinks, one per format group with sampled clients, by group name."""

    downlinks: dict[str, Downlink]
    group_of: dict[int, str]  # sampled partition -> its group

    def ins(self, pid: int) -> FitIns:
        return self.downlinks[self.group_of[pid]].ins

    def reference(self, pid: int) -> Reference | None:
        """What the uplink of ``pid`` is coded against (None: not sampled, or no context)."""
        group = self.group_of.get(pid)
        return None if group is None else self.downlinks[group].reference


@dataclass
class SyncRound:
    """The server's side of a synchronous round, for one run: its config, components and layout,
    the client directory, the byte ledger and the clients' format groups."""

    config: RunConfig
    built: Built
    layout: StateLayout
    clients: ClientDirectory
    ledger: Ledger
    groups: FormatGroups

    def broadcast(
        self, state: dict[str, torch.Tensor], rnd: int, partitions: list[int]
    ) -> Broadcast:
        """Encode the global ``state`` for round ``rnd`` once per format group of ``partitions``
        (the sampled ones), and count what each of them receives."""
        members: dict[str, list[int]] = {}
        for pid in partitions:
            members.setdefault(self.groups.of(pid).name, []).append(pid)
        downlinks = {}
        for name, pids in members.items():
            downlinks[name] = self.downlink(self.groups.by_name[name], state, rnd)
            self.ledger.sent(downlinks[name].ins, copies=len(pids), group=name)
        return Broadcast(downlinks, {pid: name for name, pids in members.items() for pid in pids})

    def downlink(self, group: FormatGroup, state: dict[str, torch.Tensor], rnd: int) -> Downlink:
        """Encode the global ``state`` for ``group`` in round ``rnd`` (one draw of the wire's
        randomness per group: seeded by (seed, "downlink", round[, format]))."""
        parts = (rnd, group.name) if group.name else (rnd,)
        generator = seeded_generator(self.config.seed, "downlink", *parts)
        codec = group.downlink_codec
        arrays = group.layout.pack(state, codec, generator)
        with_codes = isinstance(codec, MinifloatCodec) and codec == group.codec
        context = group.config.context_coding
        # the lossless stage decoded once, for the codes and for the uplinks' reference
        decoded = group.layout.reference(arrays, codec) if with_codes or context else {}
        codes = (
            codec.codes(decoded["weights"], group.layout.quantized_shapes) if with_codes else None
        )
        reference = decoded if context else None
        ins = FitIns(ndarrays_to_parameters(arrays), fit_instructions(group.config, rnd))
        return Downlink(ins, codes, reference)

    def check(
        self,
        pid: int | None,
        res: FitRes,
        global_state: dict[str, torch.Tensor],
        reference: Reference | None = None,
    ) -> ClientUpdate:
        """Validate an update (protocol fields — its format must be its partition's —, sender,
        n_k, arrays) and decode it with its sender's format (and, with ``lossless =
        "context"``, against the ``reference`` its sender was sent); raises ``ProtocolError`` or
        ``WireError`` naming the problem. State entries its format does not carry (an FP32
        client's α/β) keep their values in ``global_state``: that client has no say in them."""
        if pid is None:
            raise ProtocolError("update from a client that was never registered")
        group = self.groups.of(pid)
        n = check_sender(res, pid, group.config, self.clients.partition_size[pid])
        arrays = parameters_to_ndarrays(res.parameters)
        state, side = group.layout.unpack_with_side(arrays, group.codec, reference)
        if len(state) < len(self.layout.shapes):
            state = {
                k: state[k] if k in state else global_state[k].clone() for k in self.layout.shapes
            }
        return ClientUpdate(pid, n, state, res.metrics, side)

    def unchanged_codes(self, sent: Downlink, res: FitRes, group: FormatGroup) -> float:
        """Fraction of weights whose uplink code equals the downlink code the client was sent
        (with nearest rounding, a change under half a grid step rounds back to the same code)."""
        codec = group.codec
        assert isinstance(codec, MinifloatCodec) and sent.codes is not None
        arrays = parameters_to_ndarrays(res.parameters)
        uplink = codec.codes(
            group.layout.decompressed(arrays, codec, sent.reference)[0],
            group.layout.quantized_shapes,
        )
        return float(np.count_nonzero(uplink == sent.codes)) / max(1, uplink.size)

    def aggregate(
        self,
        record: RoundRecord,
        sent: Broadcast,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
        global_state: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor] | None:
        """Check every update, fill ``record``, and return the new global state (None: keep)."""
        partition_of = self.clients.partition_of
        accepted: list[ClientUpdate] = []
        valid: dict[int, FitRes] = {}
        for proxy, res in results:
            pid = partition_of.get(proxy.cid)
            group = "" if pid is None else self.groups.of(pid).name
            self.ledger.received(res, sender=str(pid), group=group)
            try:
                update = self.check(pid, res, global_state, sent.reference(pid))
            except (WireError, ProtocolError, ValueError) as err:
                record.rejected.append({"partition": pid, "reason": str(err)})
                log(WARNING, "fp8fl: rejected the update of partition %s: %s", pid, err)
                continue
            accepted.append(update)
            valid[update.partition] = res
        record.failures = [_failure(f, partition_of) for f in failures]
        for f in record.failures:
            log(WARNING, "fp8fl: client of partition %s failed: %s", f["partition"], f["reason"])
        replied = {partition_of.get(proxy.cid) for proxy, _ in results}
        record.clients_ok, record.clients_failed = len(accepted), len(record.failures)
        record.clients_rejected = len(record.rejected)
        record.failed_partitions = sorted(set(record.sampled) - replied)
        record.fit_seconds = {str(u.partition): _metric(u, "fit-seconds") for u in accepted}
        record.train_seconds = {str(u.partition): _metric(u, "train-seconds") for u in accepted}
        record.nodes = ray_nodes(accepted)
        if self.groups.of_partition:
            record.formats = {str(pid): self.groups.of(pid).name for pid in record.sampled}
        per_client = {
            str(pid): self.unchanged_codes(downlink, res, self.groups.of(pid))
            for pid, res in sorted(valid.items())
            if (downlink := sent.downlinks[self.groups.of(pid).name]).codes is not None
        }
        if per_client:
            record.unchanged_codes_per_client = per_client
            record.unchanged_codes = float(np.mean(list(per_client.values())))
        if accepted:
            record.train_loss = float(
                np.average(
                    [_metric(u, "train-loss") for u in accepted],
                    weights=[u.num_examples for u in accepted],
                )
            )
        enough = len(accepted) >= self.config.min_fit_clients
        if not enough or (record.failures and not self.config.accept_failures):
            why = (
                "too few valid updates"
                if not enough
                else "a client failed (accept-failures = false)"
            )
            log(WARNING, "fp8fl: round %d keeps the global model: %s", record.round, why)
            record.skipped = why
            return None
        accepted.sort(key=lambda u: u.partition)  # a fixed order makes the average reproducible
        result = self.built.aggregator.aggregate(global_state, accepted, record.round)
        record.server_opt_before = result.metrics.get("server_opt_before")
        record.server_opt_after = result.metrics.get("server_opt_after")
        record.clipped = result.metrics.get("clipped")
        for pid, clip in (record.clipped or {}).items():
            log(
                WARNING,
                "fp8fl: the robust rule clipped the update of partition %s: %d of %d entries, "
                "the largest change %s x its bound (%s)",
                pid,
                clip["clipped"],
                clip["of"],
                "inf" if clip["max_ratio"] is None else clip["max_ratio"],  # None: the bound was 0
                clip["worst"],
            )
        record.aggregated = True
        return result.state


def check_sender(res: FitRes, pid: int, config: RunConfig, partition_size: int) -> int:
    """The protocol fields of an update, that it names its sender's partition and that its n_k is
    that partition's size; returns n_k or raises ``ProtocolError`` naming the problem."""
    claimed = check_update_metrics(res.metrics, config)
    if claimed != pid:
        raise ProtocolError(
            f"update claims partition {claimed} but comes from the client of partition {pid}"
        )
    n = res.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n != partition_size:
        raise ProtocolError(
            f"num_examples = {n!r}, but partition {pid} holds {partition_size} examples"
        )
    return n


def ray_nodes(updates: list[ClientUpdate]) -> dict[str, str] | None:
    """The Ray node that trained each update, by partition (None outside a Ray simulation)."""
    nodes = {str(u.partition): u.metrics[RAY_NODE] for u in updates if RAY_NODE in u.metrics}
    return nodes or None


def _metric(update: ClientUpdate, key: str) -> float:
    return float(update.metrics.get(key, np.nan))


def _failure(
    failure: tuple[ClientProxy, FitRes] | BaseException, partition_of: dict[str, int]
) -> dict[str, Any]:
    if isinstance(failure, BaseException):
        return {"partition": None, "reason": f"{type(failure).__name__}: {failure}"}
    proxy, res = failure
    return {
        "partition": partition_of.get(proxy.cid),
        "reason": f"{res.status.code.name}: {res.status.message}",
    }
