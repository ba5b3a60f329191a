"""The buffered asynchronous server loops (FedBuff / QAFeL, ``fp8fl.methods.qafel``) on the Grid.

Both loops talk to the Grid directly (``push_messages`` / ``pull_messages``) with the same legacy
``train`` messages as the synchronous rounds, so the client is still a ``NumPyClient``
(``clients.buffered_client``). A job's message carries the start model of its version (x̂_τ, or
Q_s(x_τ) for the naive baseline) as float32 — what a client holds after following every broadcast,
or downloads when it joins — and its reply carries the encoded Q_c(Δ). One Flower round of the
records is one server step t: ``rounds.jsonl`` keeps the synchronous fields (accuracy, bytes,
clients, model SHA-256) and adds ``staleness`` (t − τ per update), ``uploads``, ``cum_uploads``,
``broadcast_bytes`` (q's message once) and ``broadcast_receivers``; ``bytes_down`` is q's message
× ``num-clients``, since every client must see every q. The float32 start models themselves are
how the simulation moves x̂ and are not counted.

* ``buffered-simulated``: FLSim's event schedule (``AsyncSchedule``, seeded by (seed, "schedule"))
  decides which K jobs end in each step and the version each started at; round t trains exactly
  those K jobs, each from the start model of its version (the aggregator keeps the versions still
  in use). A step completes only with all K updates; otherwise it is recorded as skipped and x, x̂
  stay, so the schedule's versions hold. Bit-reproducible and resumable after a crash.
* ``buffered-real``: real asynchrony. ``concurrency`` idle clients (drawn with (seed,
  "real-clients")) each get a job from the current x̂; the server pulls whatever replies have
  arrived, steps as soon as K valid updates are in, and at once gives the client that finished a
  new job from the model as it is then. A reply is matched to its job by message id and taken
  once; failed or rejected jobs do not count towards K. ``client-slowdown`` makes some clients
  slower. Not bit-reproducible: which updates fill a buffer, and the versions they started at,
  depend on the order in which replies arrive, i.e. on wall-clock timing of the clients, the
  machine's load and the network — the seed fixes each job's training and rounding, not the
  interleaving. A resumed run continues from its last step, with the jobs in flight lost.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import SimpleClientManager
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.serverapp import Grid

from fp8fl.federated.buffered import AsyncSchedule, Job
from fp8fl.federated.seams import ClientUpdate
from fp8fl.federated.seeds import derive_seed
from fp8fl.methods.qafel import (
    JOB_KEY,
    START_CODEC,
    START_VERSION,
    BufferedAggregator,
    buffered_settings,
)
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.protocol import ProtocolError
from strategies.ledger import fitins_bytes
from strategies.round_core import (
    SERVER_STATE,
    ClientFault,
    RoundRecord,
    ServerRun,
    StepFacts,
    decode_update,
    fit_ins,
    model_digest,
    receive,
)
from strategies.server_model import build_server_model

__all__ = [
    "BufferedRun",
    "Dispatch",
    "exchange",
    "run_real",
    "run_simulated",
    "simulated_schedule",
]
PULL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Dispatch:
    """One job as the server sent it."""

    job: int
    partition: int
    start_version: int


class BufferedRun(ServerRun):
    """The server side of a buffered run: the shared ``ServerRun`` with the buffered aggregator,
    the clients' node ids, and the steps' bookkeeping of the simulated and the real loop."""

    def __init__(self, config: RunConfig) -> None:
        server = build_server_model(config)
        if not isinstance(server.built.aggregator, BufferedAggregator):
            raise ConfigError(f"method {config.method!r} has no buffered server step")
        super().__init__(config, server)
        self.aggregator: BufferedAggregator = server.built.aggregator
        initial = self.journal.resume_state
        if initial is None:
            initial = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        self.aggregator.start(initial, self.layout)
        self.aggregator.load_state_dict(self.journal.aggregator_state)
        self.nodes: dict[int, int] = {}  # partition -> node id

    # ------------------------------------------------------------------ clients and messages
    def discover(self, grid: Grid) -> None:
        """Learn every client's partition (as the synchronous loop does) and its node id."""
        manager = SimpleClientManager()
        thread, stop, ready = start_update_client_manager_thread(grid, manager)
        ready.wait()
        try:
            self.clients.discover(manager)
        finally:
            stop.set()
            thread.join()
        self.nodes = {pid: int(cid) for cid, pid in self.clients.partition_of.items()}

    def message(self, dispatch: Dispatch, server_round: int) -> Message:
        """The ``train`` message of a job: its start model as float32 and its instructions."""
        start = self.aggregator.starts[dispatch.start_version]
        ins = fit_ins(
            self.layout.pack(start, START_CODEC),
            self.config,
            server_round,
            {JOB_KEY: dispatch.job, START_VERSION: dispatch.start_version},
        )
        return Message(
            compat.fitins_to_recorddict(ins, keep_input=True),
            self.nodes[dispatch.partition],
            MessageType.TRAIN,
            group_id=str(server_round),
        )

    def accept(
        self, dispatch: Dispatch, reply: Message, record: RoundRecord
    ) -> ClientUpdate | None:
        """Count, validate and decode a job's reply; a failure or a bad update goes to ``record``
        and returns None."""
        pid = dispatch.partition
        if reply.has_error():
            record.fail(ClientFault(pid, reply.error.reason))
            return None
        res = compat.recorddict_to_fitres(reply.content, keep_input=False)
        if res.status.code != Code.OK:
            record.fail(ClientFault.from_status(pid, res.status))
            return None
        update = receive(self.journal.ledger, record, pid, res, partial(self.check, dispatch, res))
        if update is None:
            return None
        metrics = {**update.metrics, START_VERSION: dispatch.start_version}
        return dataclasses.replace(update, metrics=metrics)

    def check(self, dispatch: Dispatch, res: FitRes) -> ClientUpdate:
        """Validate a job's reply (its job, protocol fields, sender, n_k, arrays) and decode
        Q_c(Δ); raises ``ProtocolError`` or ``WireError`` naming the problem."""
        if res.metrics.get(JOB_KEY) != dispatch.job:
            raise ProtocolError(
                f"reply names job {res.metrics.get(JOB_KEY)!r}, was sent job {dispatch.job}"
            )
        pid = dispatch.partition
        size = self.clients.partition_size[pid]
        return decode_update(res, pid, self.config, size, self.layout, self.built.codec)

    # ------------------------------------------------------------------ steps and records
    def record_start(self) -> None:
        """Round 0: the initial model's evaluation (a resumed run has it already)."""
        if self.journal.start_round == 0:
            self._close(0, None)

    def step(
        self,
        record: RoundRecord,
        updates: list[ClientUpdate],
        mode: str,
        jobs: list[int],
        start_versions: list[int] | None = None,
        live_versions: Sequence[int] = (),
    ) -> None:
        """Server step ``record.round`` from the updates in arrival order (all K, or skipped) of
        ``jobs`` (``mode``: the ``async_mode`` of the record; the simulated loop also records the
        jobs' ``start_versions``); keep the start models of ``live_versions`` and the new
        version; evaluate x, write the record and the checkpoint."""
        record.tally(updates, weighted=False)
        staleness: list[int] = []
        broadcast = 0
        if len(updates) == self.aggregator.buffer_size:
            result = self.aggregator.aggregate(self.aggregator.server.x, updates, record.round)
            staleness = result.metrics["staleness"]
            ins = FitIns(ndarrays_to_parameters(self.aggregator.broadcast), {})
            broadcast = fitins_bytes(ins)
            self.journal.ledger.sent(ins, copies=self.config.num_clients)
            record.aggregated = True
        else:
            record.skipped = f"{len(updates)} of K = {self.aggregator.buffer_size} updates arrived"
            log(WARNING, "fp8fl: step %d keeps the model: %s", record.round, record.skipped)
            self.aggregator.skip()
        self.aggregator.keep([*live_versions, self.aggregator.version])
        previous = self.journal.history[-1].get("cum_uploads", 0) if self.journal.history else 0
        record.step = StepFacts(
            staleness,
            len(updates),
            previous + len(updates),
            broadcast,
            self.config.num_clients,
            jobs,
            start_versions,
            mode,
        )
        self._close(record.round, record)

    def _close(self, server_round: int, record: RoundRecord | None) -> None:
        x = self.aggregator.server.x
        digest = model_digest(ndarrays_to_parameters(self.layout.pack(x, SERVER_STATE)))
        self.close_round(server_round, x, digest, record)


def exchange(grid: Grid, messages: list[Message]) -> list[Message]:
    """Push ``messages`` and wait for every reply; the replies in the messages' order."""
    ids = [_push(grid, m) for m in messages]
    replies: dict[str, Message] = {}
    while len(replies) < len(ids):
        for reply in grid.pull_messages([i for i in ids if i not in replies]):
            replies[reply.metadata.reply_to_message_id] = reply
        if len(replies) < len(ids):
            time.sleep(PULL_INTERVAL_S)
    return [replies[i] for i in ids]


def _push(grid: Grid, message: Message) -> str:
    ids = list(grid.push_messages([message]))
    if len(ids) != 1:
        raise RuntimeError(
            f"the Grid did not accept the message to node {message.metadata.dst_node_id}"
        )
    return ids[0]


def simulated_schedule(config: RunConfig) -> AsyncSchedule:
    """The run's event schedule: d = HalfNormal(1), λ from ``concurrency`` (Little's law)."""
    return AsyncSchedule(
        config.num_clients,
        buffered_settings(config.settings).concurrency,
        seed=derive_seed(config.seed, "schedule"),
    )


def run_simulated(grid: Grid, config: RunConfig) -> None:
    """Round t trains the K jobs of the schedule's step t, each from its own start version."""
    run = BufferedRun(config)
    run.discover(grid)
    run.record_start()
    steps = simulated_schedule(config).server_steps(run.aggregator.buffer_size)
    for step in itertools.islice(steps, run.journal.start_round, config.num_server_rounds):
        server_round = step.version + 1
        if run.aggregator.version != step.version:
            raise RuntimeError(
                f"server at version {run.aggregator.version}, schedule at {step.version}"
            )
        record = run.open_round(server_round, [job.client for job in step.jobs])
        dispatches = [_dispatch(job) for job in step.jobs]
        replies = exchange(grid, [run.message(d, server_round) for d in dispatches])
        updates = [run.accept(d, r, record) for d, r in zip(dispatches, replies)]
        run.step(
            record,
            [u for u in updates if u is not None],
            "simulated",
            [d.job for d in dispatches],
            [d.start_version for d in dispatches],
            step.live_versions,
        )


def run_real(grid: Grid, config: RunConfig) -> None:
    """Keep ``concurrency`` clients training; step every K valid arrivals; re-dispatch at once."""
    run = BufferedRun(config)
    run.discover(grid)
    run.record_start()
    rng = np.random.default_rng(derive_seed(config.seed, "real-clients"))
    idle, running = set(range(config.num_clients)), {}
    busy = min(buffered_settings(config.settings).concurrency, config.num_clients)
    jobs = itertools.count()
    record, updates = run.open_round(run.aggregator.version + 1, []), []
    while run.aggregator.version < config.num_server_rounds:
        while len(running) < busy:
            pid = int(rng.choice(sorted(idle)))
            idle.remove(pid)
            dispatch = Dispatch(next(jobs), pid, run.aggregator.version)
            running[_push(grid, run.message(dispatch, dispatch.start_version + 1))] = dispatch
        replies = list(grid.pull_messages(list(running)))
        if not replies:
            time.sleep(PULL_INTERVAL_S)
        for reply in replies:
            dispatch = running.pop(reply.metadata.reply_to_message_id)
            idle.add(dispatch.partition)
            record.sampled.append(dispatch.partition)
            update = run.accept(dispatch, reply, record)
            if update is None:
                continue
            updates.append(update)
            if len(updates) == run.aggregator.buffer_size:
                run.step(record, updates, "real", [int(u.metrics[JOB_KEY]) for u in updates])
                if run.aggregator.version == config.num_server_rounds:
                    break
                record, updates = run.open_round(run.aggregator.version + 1, []), []


def _dispatch(job: Job) -> Dispatch:
    return Dispatch(job.index, job.client, job.start_version)
