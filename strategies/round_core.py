"""What every server loop shares for one round, from the client's message to the checkpoint.

The synchronous loop (``QuantizedFedAvg`` with ``SyncRound``) and the buffered loops
(``BufferedRun``) differ in whom a round asks and how it aggregates; around that they take the
same steps, here:

1. ``ServerRun.open_round``: the round's clock and byte counts start, its ``RoundRecord`` opens;
2. ``fit_ins``: a client's message, its start model and the fit instructions;
3. ``receive``: an update's bytes are counted, then it is checked and decoded (``decode_update``);
   a bad one becomes a ``ClientFault`` under ``RoundRecord.rejected``, a client that failed one
   under ``RoundRecord.failures``;
4. ``RoundRecord.tally``: the counts, timings, nodes and training loss of the accepted updates;
5. ``ServerRun.close_round``: central evaluation when due, the line of ``rounds.jsonl``, the
   checkpoint, and after the last round ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log

from fp8fl.federated.seams import ClientUpdate, Codec
from fp8fl.federated.seeds import derive_seed
from fp8fl.federated.wire import Reference, StateLayout, WireError
from fp8fl.methods.fp8 import Float32Codec
from fp8fl.methods.robust import ClipReport
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import RAY_NODE, ProtocolError, check_update_metrics, fit_instructions
from fp8fl.run.results import RunRecorder
from fp8fl.run.training import EvaluationSet, evaluate
from strategies.clients import ClientDirectory
from strategies.journal import RunJournal
from strategies.ledger import Ledger
from strategies.progress import RunProgress
from strategies.server_model import ServerModel

__all__ = [
    "SERVER_STATE",
    "ClientFault",
    "RoundRecord",
    "ServerRun",
    "StepFacts",
    "check_sender",
    "decode_update",
    "evaluation_rows",
    "fit_ins",
    "model_digest",
    "ray_nodes",
    "receive",
]

SERVER_STATE = Float32Codec()
"""How the server holds and digests the global state: every entry as float32."""

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


@dataclass(frozen=True)
class ClientFault:
    """A client whose update does not count, and why: it failed to send one
    (``RoundRecord.failures``) or the server rejected it (``RoundRecord.rejected``). ``partition``
    is None for a client the server cannot name."""

    partition: int | None
    reason: str

    @classmethod
    def from_status(cls, partition: int | None, status: Status) -> ClientFault:
        """The failure of a client that replied with a non-OK status."""
        return cls(partition, f"{status.code.name}: {status.message}")


def log_clip(partition: str, report: ClipReport) -> None:
    """Warn that the robust rule clipped the update of ``partition``."""
    log(
        WARNING,
        "fp8fl: the robust rule clipped the update of partition %s: %d of %d entries, "
        "the largest change %s x its bound (%s)",
        partition,
        report.clipped,
        report.of,
        "inf" if report.max_ratio is None else report.max_ratio,
        report.worst,
    )


@dataclass(frozen=True)
class StepFacts:
    """What a buffered server step adds to its round's line (``strategies.buffered_loop``)."""

    staleness: list[int]  # t − τ per update
    uploads: int
    cum_uploads: int
    broadcast_bytes: int  # q's message, once
    broadcast_receivers: int
    jobs: list[int]
    start_versions: list[int] | None  # the simulated loop's; the real loop does not write it
    async_mode: str

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        return {k: v for k, v in entry.items() if not (k == "start_versions" and v is None)}


@dataclass
class RoundRecord:
    """What a round did, as written to ``rounds.jsonl`` (with the evaluation and bytes)."""

    round: int
    sampled: list[int]
    clients_ok: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    failures: list[ClientFault] = field(default_factory=list)
    rejected: list[ClientFault] = field(default_factory=list)
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
    clipped: dict[str, ClipReport] | None = (
        None  # by partition: the updates the robust rule clipped
    )
    formats: dict[str, str] | None = None  # mixed precision: each sampled partition's format
    nodes: dict[str, str] | None = None  # Ray simulation: the node that ran each accepted update
    step: StepFacts | None = None  # a buffered step's, written after the fields above

    def fail(self, fault: ClientFault) -> None:
        """A client failed to send its update."""
        log(WARNING, "fp8fl: client of partition %s failed: %s", fault.partition, fault.reason)
        self.failures.append(fault)

    def reject(self, fault: ClientFault) -> None:
        """An update failed its checks; it never reaches the aggregator."""
        log(
            WARNING, "fp8fl: rejected the update of partition %s: %s", fault.partition, fault.reason
        )
        self.rejected.append(fault)

    def tally(self, accepted: Sequence[ClientUpdate], weighted: bool) -> None:
        """The counts, per-client timings, nodes and mean training loss of the ``accepted``
        updates; the loss is averaged as the loop's aggregate weighs them (``weighted``: by n_k,
        as a synchronous round; else each alike, as a buffered step's 1/K)."""
        self.clients_ok = len(accepted)
        self.clients_failed, self.clients_rejected = len(self.failures), len(self.rejected)
        replied = {u.partition for u in accepted} | {r.partition for r in self.rejected}
        self.failed_partitions = sorted(set(self.sampled) - replied)
        self.fit_seconds = {str(u.partition): _metric(u, "fit-seconds") for u in accepted}
        self.train_seconds = {str(u.partition): _metric(u, "train-seconds") for u in accepted}
        self.nodes = ray_nodes(accepted)
        if not accepted:
            return
        losses = [_metric(u, "train-loss") for u in accepted]
        if weighted:
            self.train_loss = float(np.average(losses, weights=[u.num_examples for u in accepted]))
        else:
            self.train_loss = sum(losses) / len(losses)

    def clip(self, clipped: Mapping[str, ClipReport] | None) -> None:
        """The robust rule's report (the aggregate's ``clipped`` metric), logged per update."""
        if clipped is None:
            return
        self.clipped = dict(clipped)
        for pid, report in self.clipped.items():
            log_clip(pid, report)

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        del entry["step"]
        entry = {k: v for k, v in entry.items() if not (k in OPTIONAL and v is None)}
        return entry if self.step is None else entry | self.step.to_json()


def fit_ins(
    arrays: list[np.ndarray],
    config: RunConfig,
    server_round: int,
    job: Mapping[str, Scalar] | None = None,
) -> FitIns:
    """A client's message: ``arrays`` (its start model) and the fit instructions of
    ``server_round`` in ``config``'s format, then a buffered job's keys (``job``)."""
    return FitIns(
        ndarrays_to_parameters(arrays), {**fit_instructions(config, server_round), **(job or {})}
    )


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


def decode_update(
    res: FitRes,
    pid: int,
    config: RunConfig,
    partition_size: int,
    layout: StateLayout,
    codec: Codec,
    reference: Reference | None = None,
) -> ClientUpdate:
    """Check the update of partition ``pid`` (``check_sender``) and decode its arrays with
    ``layout`` and ``codec`` (against ``reference`` with ``lossless = "context"``); raises
    ``ProtocolError`` or ``WireError`` naming the problem."""
    n = check_sender(res, pid, config, partition_size)
    arrays = parameters_to_ndarrays(res.parameters)
    state, side = layout.unpack_with_side(arrays, codec, reference)
    return ClientUpdate(pid, n, state, res.metrics, side)


def receive(
    ledger: Ledger,
    record: RoundRecord,
    pid: int | None,
    res: FitRes,
    check: Callable[[], ClientUpdate],
    group: str = "",
) -> ClientUpdate | None:
    """Count the bytes of ``pid``'s update (of format ``group``), valid or not, then ``check`` and
    decode it; a bad update goes to ``record`` as a rejection with its reason and gives None."""
    ledger.received(res, sender=str(pid), group=group)
    try:
        return check()
    except (WireError, ProtocolError, ValueError) as err:
        record.reject(ClientFault(pid, str(err)))
        return None


def ray_nodes(updates: Sequence[ClientUpdate]) -> dict[str, str] | None:
    """The Ray node that trained each update, by partition (None outside a Ray simulation)."""
    nodes = {str(u.partition): u.metrics[RAY_NODE] for u in updates if RAY_NODE in u.metrics}
    return nodes or None


def _metric(update: ClientUpdate, key: str) -> float:
    return float(update.metrics.get(key, np.nan))


def evaluation_rows(config: RunConfig, size: int) -> np.ndarray | None:
    """The fixed seeded test rows of ``eval-samples`` (None: all ``size`` rows)."""
    if config.eval_samples <= 0 or config.eval_samples >= size:
        return None
    rng = np.random.default_rng(derive_seed(config.seed, "eval-rows"))
    return np.sort(rng.choice(size, config.eval_samples, replace=False))


def model_digest(parameters: Parameters) -> str:
    """SHA-256 of the global model's serialized arrays: equal digests, bit-identical models."""
    h = hashlib.sha256()
    for tensor in parameters.tensors:
        h.update(tensor)
    return h.hexdigest()


class ServerRun:
    """One run on the server, as every loop holds it: the model it evaluates, its message layout
    and components (``server``), the journal (records, byte ledger, checkpoint, resume), the
    client directory and the evaluation rows, prepared once."""

    def __init__(
        self,
        config: RunConfig,
        server: ServerModel,
        recorder: RunRecorder | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        self.config = config
        self.device, self.test, self.model, self.layout, self.built = server
        self.journal = RunJournal(config, recorder, progress)
        self.clients = ClientDirectory(config.num_clients)
        self.evaluation = EvaluationSet.prepare(
            self.test, config.eval_batch_size, self.device, evaluation_rows(config, len(self.test))
        )

    def open_round(self, server_round: int, sampled: list[int]) -> RoundRecord:
        """Start the clock and byte counts of ``server_round``, which asks ``sampled``."""
        self.journal.start_round_clock()
        return RoundRecord(server_round, sampled)

    def close_round(
        self,
        server_round: int,
        state: dict[str, torch.Tensor],
        digest: str,
        record: RoundRecord | None,
    ) -> tuple[float, float] | None:
        """Evaluate the global ``state`` when due (round 0, every ``eval-every`` rounds, the last
        round), write the round's line (``record``: None for round 0) with the model's
        ``digest``, checkpoint the global and the aggregator's state, and after the last round
        write ``summary.json``; returns the evaluation's (loss, accuracy), None when not due."""
        config = self.config
        last = server_round == config.num_server_rounds
        evaluation = None
        started = time.perf_counter()
        if server_round == 0 or last or server_round % config.eval_every == 0:
            self.model.load_state_dict(state)
            evaluation = evaluate(self.model, self.evaluation)
        facts = None if record is None else record.to_json()
        line = self.journal.record(
            server_round, evaluation, digest, facts, time.perf_counter() - started
        )
        if server_round > 0:
            self.journal.checkpoint(server_round, state, self.built.aggregator.state_dict())
            self.journal.progress.round_done(line)
        if last:
            self.journal.finish()
        return evaluation
