"""One synchronous round on the server: the downlink, the check of every update, the aggregate.

``RoundRecord`` holds a round's facts until its evaluation completes the line of ``rounds.jsonl``.
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

from fp8fl.federated.config import RunConfig
from fp8fl.federated.protocol import ProtocolError, check_update_metrics, fit_instructions
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import StateLayout, WireError
from fp8fl.methods.fp8 import MinifloatCodec
from fp8fl.methods.registry import Built
from fp8fl.methods.seams import ClientUpdate
from strategies.clients import ClientDirectory
from strategies.ledger import Ledger

__all__ = ["Downlink", "RoundRecord", "SyncRound"]

OPTIONAL = ("skipped", "train_loss", "unchanged_codes", "unchanged_codes_per_client")
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

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        return {k: v for k, v in entry.items() if not (k in OPTIONAL and v is None)}


@dataclass(frozen=True)
class Downlink:
    """The broadcast of a round: one encoding of the global model for every sampled client."""

    ins: FitIns
    codes: np.ndarray | None  # one code per weight, for codecs with codes


@dataclass
class SyncRound:
    """The server's side of a synchronous round, for one run: its config, components and layout,
    the client directory and the byte ledger."""

    config: RunConfig
    built: Built
    layout: StateLayout
    clients: ClientDirectory
    ledger: Ledger

    def downlink(self, state: dict[str, torch.Tensor], rnd: int) -> Downlink:
        """Encode the global ``state`` for round ``rnd`` (one draw of the wire's randomness)."""
        generator = seeded_generator(self.config.seed, "downlink", rnd)
        codec = self.built.downlink_codec
        arrays = self.layout.pack(state, codec, generator)
        codes = None
        if isinstance(codec, MinifloatCodec) and codec == self.built.codec:
            codes = codec.codes(arrays[0], self.layout.quantized_shapes)
        ins = FitIns(ndarrays_to_parameters(arrays), fit_instructions(self.config, rnd))
        return Downlink(ins, codes)

    def check(self, pid: int | None, res: FitRes) -> ClientUpdate:
        """Validate an update (protocol fields, sender, n_k, arrays) and decode it; raises
        ``ProtocolError`` or ``WireError`` naming the problem."""
        if pid is None:
            raise ProtocolError("update from a client that was never registered")
        claimed = check_update_metrics(res.metrics, self.config)
        if claimed != pid:
            raise ProtocolError(
                f"update claims partition {claimed} but comes from the client of partition {pid}"
            )
        n, size = res.num_examples, self.clients.partition_size[pid]
        if isinstance(n, bool) or not isinstance(n, int) or n != size:
            raise ProtocolError(f"num_examples = {n!r}, but partition {pid} holds {size} examples")
        arrays = parameters_to_ndarrays(res.parameters)
        state, side = self.layout.unpack_with_side(arrays, self.built.codec)
        return ClientUpdate(pid, n, state, res.metrics, side)

    def unchanged_codes(self, sent: np.ndarray, res: FitRes) -> float:
        """Fraction of weights whose uplink code equals the downlink code the client was sent
        (with nearest rounding, a change under half a grid step rounds back to the same code)."""
        codec = self.built.codec
        assert isinstance(codec, MinifloatCodec)
        uplink = codec.codes(
            parameters_to_ndarrays(res.parameters)[0], self.layout.quantized_shapes
        )
        return float(np.count_nonzero(uplink == sent)) / max(1, uplink.size)

    def aggregate(
        self,
        record: RoundRecord,
        sent: Downlink,
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
            self.ledger.received(res, sender=str(pid))
            try:
                update = self.check(pid, res)
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
        if sent.codes is not None and accepted:
            per_client = {
                str(pid): self.unchanged_codes(sent.codes, res)
                for pid, res in sorted(valid.items())
            }
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
        record.aggregated = True
        return result.state


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
