"""One synchronous round on the server: the downlink, the check of every update, the aggregate.

In a mixed-precision run (``client-formats``) the clients form one ``FormatGroup`` per format: each
group gets its own encoding of the global model, and each update is checked and decoded with its
sender's group. What the round shares with the buffered loops (its record, the counting and check
of an update, the tally, evaluation and checkpoint) is ``strategies.round_core``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from logging import WARNING

import numpy as np
import torch
from flwr.common import FitIns, FitRes, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_proxy import ClientProxy

from fp8fl.federated.seams import ClientUpdate, Codec, ExposesCodes, SendsChanges
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import Reference, StateLayout
from fp8fl.run.client_formats import client_config, partition_formats
from fp8fl.run.components import Built, build_codec, build_downlink_codec
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import ProtocolError
from fp8fl.run.training import build_run_model, run_layout
from strategies.clients import ClientDirectory
from strategies.ledger import Ledger
from strategies.round_core import ClientFault, RoundRecord, decode_update, fit_ins, receive

__all__ = [
    "Broadcast",
    "Downlink",
    "FormatGroup",
    "FormatGroups",
    "SyncRound",
    "client_fault",
    "format_groups",
]


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
        with_codes = isinstance(codec, ExposesCodes) and codec == group.codec
        context = group.config.context_coding
        # the lossless stage decoded once, for the codes and for the uplinks' reference
        decoded = group.layout.reference(arrays, codec) if with_codes or context else {}
        codes = (
            codec.codes(decoded["weights"], group.layout.quantized_shapes) if with_codes else None
        )
        reference = decoded if context else None
        return Downlink(fit_ins(arrays, group.config, rnd), codes, reference)

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
        update = decode_update(
            res,
            pid,
            group.config,
            self.clients.partition_size[pid],
            group.layout,
            group.codec,
            reference,
        )
        if isinstance(self.built.quantizer, SendsChanges):  # Δ: the model is what was sent + Δ
            state = {k: global_state[k] + delta for k, delta in update.state.items()}
            update = dataclasses.replace(update, state=state)
        if len(update.state) < len(self.layout.shapes):
            state = {
                k: update.state[k] if k in update.state else global_state[k].clone()
                for k in self.layout.shapes
            }
            update = dataclasses.replace(update, state=state)
        return update

    def unchanged_codes(self, sent: Downlink, res: FitRes, group: FormatGroup) -> float:
        """Fraction of weights whose uplink code equals the downlink code the client was sent
        (with nearest rounding, a change under half a grid step rounds back to the same code)."""
        codec = group.codec
        assert isinstance(codec, ExposesCodes) and sent.codes is not None
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
            check = partial(self.check, pid, res, global_state, sent.reference(pid))
            update = receive(self.ledger, record, pid, res, check, group)
            if update is not None:
                accepted.append(update)
                valid[update.partition] = res
        for failure in failures:
            record.fail(client_fault(failure, partition_of))
        record.tally(accepted, weighted=True)
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
        record.clip(result.metrics.get("clipped"))
        record.aggregated = True
        return result.state


def client_fault(
    failure: tuple[ClientProxy, FitRes] | BaseException, partition_of: dict[str, int]
) -> ClientFault:
    """A failure as Flower's round loop reports it: an exception (its client unknown), or a reply
    with a non-OK status."""
    if isinstance(failure, BaseException):
        return ClientFault(None, f"{type(failure).__name__}: {failure}")
    proxy, res = failure
    return ClientFault.from_status(partition_of.get(proxy.cid), res.status)
