"""QAFeL's server maths without Flower: hidden state, buffered server step, FLSim event schedule.

QAFeL (Ortega & Jafarkhani, "Quantized and Asynchronous Federated Learning", arXiv:2410.00242) is
FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
arXiv:2106.06639) with quantization in both directions and a *hidden state* x̂ that server and
clients both hold. A client job starts from x̂ at its start version τ and uploads Q_c(Δ),
Δ = y_P − y_0 (after − before). After every K arrivals the server sets

    x ← x + (η_g/K)·Σ_k Q_c(Δ_k),   q = Q_s(x − x̂),   x̂ ← x̂ + q,   t ← t + 1

and broadcasts q; every client adds q to its own x̂, so all copies agree bit for bit. Evaluation
is on x. Optional server momentum β (FLSim's server SGD with momentum, no dampening):
m ← β·m + avg, x ← x + η_g·m with m₀ = 0; β = 0 is the paper's update exactly.

The "naive" baseline (``naive=True``) drops the hidden state: clients start from Q_s(x_t), which
the server quantizes once per version and broadcasts whole. With an identity Q_s that is FedBuff.

``AsyncSchedule`` replays FLSim's asynchrony (``training_event_generator.py``, ``ConstantAsync-
TrainingStartTimeDistr`` + ``PerUserHalfNormalDurationDistribution`` in TomasOrtega/FLSim): job i
starts at i/λ on a client drawn uniformly, runs d_min + |N(0, σ²)|, and every K ends make one
server step. By Little's law the mean number of running jobs is λ·E[d] = λ·(d_min + σ·√(2/π));
√(2/π) = 0.798 is the paper's "concurrency ≈ 0.8·λ·σ" (d_min = 0: λ = 125 / 627 / 1253 for
100 / 500 / 1000). The whole schedule follows from the seed, so it can be replayed in synchronous
rounds: round t = server step t, each job sent x̂ at its start version.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "AsyncSchedule",
    "BufferedServer",
    "HiddenState",
    "Job",
    "ServerQuantizer",
    "StateDict",
    "Step",
    "identity_quantizer",
    "little_rate",
]

StateDict = dict[str, torch.Tensor]
ServerQuantizer = Callable[[StateDict, int], StateDict]
"""Q_s: (state, t) -> decoded quantized state; t is the step being taken, so a quantizer can seed
its randomness by (seed, t) and a resumed server repeats it exactly."""

HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)  # E|N(0, 1)| = 0.7979: the paper's "0.8"


def identity_quantizer(state: StateDict, version: int) -> StateDict:
    """Q_s = identity (FedBuff's downlink): float32 copies."""
    return {name: t.detach().to(torch.float32).clone() for name, t in state.items()}


def _clone32(state: StateDict) -> StateDict:
    return {name: t.detach().to(torch.float32).clone() for name, t in state.items()}


def _check_keys(reference: StateDict, other: StateDict, what: str) -> None:
    if set(other) != set(reference):
        raise KeyError(f"{what} has keys {sorted(other)}, expected {sorted(reference)}")
    for name, t in reference.items():
        if other[name].shape != t.shape:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(other[name].shape)}, expected {tuple(t.shape)}"
            )


# -------------------------------------------------------------------------------- hidden state


class HiddenState:
    """x̂, held by the server and by every client: x̂ ← x̂ + q per broadcast q.

    Each element takes exactly one float32 addition per broadcast, in the order the broadcasts
    come, so any two copies fed the same sequence of q agree bit for bit.
    """

    def __init__(self, initial: StateDict) -> None:
        self._state = _clone32(initial)

    @property
    def state(self) -> StateDict:
        """The live tensors (do not modify; use ``snapshot`` for a copy)."""
        return self._state

    def snapshot(self) -> StateDict:
        return _clone32(self._state)

    def apply(self, q: StateDict) -> None:
        _check_keys(self._state, q, "broadcast")
        for name, t in self._state.items():  # fixed order: the initial state's
            t.add_(q[name].to(torch.float32))

    def state_dict(self) -> StateDict:
        return self.snapshot()

    def load_state_dict(self, state: StateDict) -> None:
        _check_keys(self._state, state, "hidden state")
        self._state = _clone32(state)


# ----------------------------------------------------------------------------- buffered server


class BufferedServer:
    """FedBuff with hidden-state quantization (the QAFeL server, arXiv:2410.00242).

    ``receive(delta, version)`` adds one decoded client update Q_c(Δ) to the buffer and logs its
    staleness t − τ; when K are buffered, ``step()`` updates x, x̂ and t and returns the broadcast.
    The buffer is a running float64 sum in arrival order (equal to summing the K stored updates in
    that order, and K times smaller); avg = (Σ Δ_k)/K is rounded to float32 once, then
    x ← x + η_g·avg in float32. ``naive=True``: the baseline whose clients start from Q_s(x).
    """

    def __init__(
        self,
        initial: StateDict,
        buffer_size: int,
        server_lr: float = 1.0,
        server_quantizer: ServerQuantizer = identity_quantizer,
        momentum: float = 0.0,
        naive: bool = False,
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.buffer_size = buffer_size
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self.naive = bool(naive)
        self.quantize = server_quantizer
        self.x = _clone32(initial)
        self.hidden = HiddenState(initial)
        self.version = 0
        self._sum: dict[str, torch.Tensor] | None = None
        self._count = 0
        self._m: StateDict | None = None
        self._staleness: list[int] = []
        self._naive_start = _clone32(initial) if naive else None

    # -- client side of the protocol
    def start_model(self) -> StateDict:
        """What a job starting now trains from: x̂ (QAFeL) or Q_s(x_t) (naive; x₀ at t = 0)."""
        return _clone32(self._naive_start if self._naive_start is not None else self.hidden.state)

    @property
    def buffered(self) -> int:
        return self._count

    @property
    def ready(self) -> bool:
        return self._count >= self.buffer_size

    @property
    def staleness(self) -> list[int]:
        """t − τ of every update received, in arrival order."""
        return list(self._staleness)

    def receive(self, delta: StateDict, version: int) -> bool:
        """Buffer one decoded update of a job that started at ``version``; True when K are in."""
        if self.ready:
            raise RuntimeError("the buffer is full: call step() first")
        if not 0 <= version <= self.version:
            raise ValueError(f"start version {version} is outside [0, {self.version}]")
        _check_keys(self.x, delta, "delta")
        if self._sum is None:
            self._sum = {
                name: torch.zeros_like(t, dtype=torch.float64) for name, t in self.x.items()
            }
        for name, acc in self._sum.items():
            acc.add_(delta[name].to(torch.float64))
        self._count += 1
        self._staleness.append(self.version - version)
        return self.ready

    def step(self) -> StateDict:
        """One server step from K buffered updates; returns the broadcast (q, or Q_s(x) if naive)."""
        if not self.ready or self._sum is None:
            raise RuntimeError(
                f"step() needs {self.buffer_size} buffered updates, has {self._count}"
            )
        avg = {name: (acc / self.buffer_size).to(torch.float32) for name, acc in self._sum.items()}
        if self.momentum > 0.0:
            if self._m is None:
                self._m = {name: torch.zeros_like(t) for name, t in avg.items()}
            for name, m in self._m.items():
                m.mul_(self.momentum).add_(avg[name])
            avg = self._m
        for name, x in self.x.items():
            x.add_(avg[name] * self.server_lr)
        broadcast = self._broadcast()
        self._sum, self._count = None, 0
        self.version += 1
        return broadcast

    def skip_step(self) -> None:
        """Advance t without an update (a step whose jobs did not all arrive): the buffer is
        dropped, x and x̂ stay, nothing is broadcast; jobs keep the schedule's start versions."""
        self._sum, self._count = None, 0
        self.version += 1

    def _broadcast(self) -> StateDict:
        if self._naive_start is not None:
            self._naive_start = _clone32(self.quantize(self.x, self.version))
            return _clone32(self._naive_start)
        diff = {name: x - self.hidden.state[name] for name, x in self.x.items()}
        q = _clone32(self.quantize(diff, self.version))
        self.hidden.apply(q)
        return q

    # -- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed server needs (copies): x, x̂, buffer, t, momentum, staleness log."""
        return {
            "config": {
                "buffer_size": self.buffer_size,
                "server_lr": self.server_lr,
                "momentum": self.momentum,
                "naive": self.naive,
            },
            "x": _clone32(self.x),
            "hidden": self.hidden.state_dict(),
            "buffer_sum": None
            if self._sum is None
            else {k: v.clone() for k, v in self._sum.items()},
            "buffer_count": self._count,
            "version": self.version,
            "momentum_buffer": None if self._m is None else _clone32(self._m),
            "staleness": torch.tensor(self._staleness, dtype=torch.int64),
            "naive_start": None if self._naive_start is None else _clone32(self._naive_start),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; the config (K, η_g, β, naive) must match."""
        config = state["config"]
        mine = self.state_dict()["config"]
        if config != mine:
            raise ValueError(f"checkpoint config {config} does not match this server's {mine}")
        _check_keys(self.x, state["x"], "x")
        self.x = _clone32(state["x"])
        self.hidden.load_state_dict(state["hidden"])
        buffer_sum = state["buffer_sum"]
        self._sum = (
            None
            if buffer_sum is None
            else {k: v.to(torch.float64).clone() for k, v in buffer_sum.items()}
        )
        self._count = int(state["buffer_count"])
        self.version = int(state["version"])
        m = state["momentum_buffer"]
        self._m = None if m is None else _clone32(m)
        self._staleness = [int(s) for s in state["staleness"].tolist()]
        start = state["naive_start"]
        self._naive_start = None if start is None else _clone32(start)


# ------------------------------------------------------------------------------ event schedule


class Job(NamedTuple):
    """One client job: the ``index``-th start, on ``client``, over [start, end); it trains from
    the model of ``start_version`` (server steps completed at or before ``start``)."""

    index: int
    client: int
    start: float
    end: float
    start_version: int


@dataclass(frozen=True)
class Step:
    """Server step ``version`` → ``version + 1``, taken at ``time`` from ``jobs`` (in end order).

    ``live_versions``: the start versions a server must still hold after this step — those of jobs
    already running that end in a later step, plus ``version + 1`` — so x̂ snapshots of any other
    version can be dropped.
    """

    version: int
    time: float
    jobs: tuple[Job, ...]
    live_versions: tuple[int, ...]

    @property
    def staleness(self) -> tuple[int, ...]:
        return tuple(self.version - job.start_version for job in self.jobs)


def little_rate(concurrency: float, duration_min: float, duration_sigma: float) -> float:
    """λ with λ·E[d] = ``concurrency`` for d = d_min + HalfNormal(σ) (Little's law)."""
    return concurrency / (duration_min + duration_sigma * HALF_NORMAL_MEAN)


class AsyncSchedule:
    """FLSim's deterministic asynchrony: starts every 1/λ, uniform client, d_min + HalfNormal(σ).

    λ = concurrency / (d_min + σ√(2/π)), so the time-average number of running jobs is
    ``concurrency`` (≈ 0.8·λ·σ when d_min = 0). Jobs are drawn in fixed blocks of ``BLOCK``; block b
    takes clients and durations from two independent ``numpy`` PCG64 streams spawned from
    ``SeedSequence([seed, b])``: the schedule is a pure function of the constructor's arguments.
    A client may run two jobs at once (FLSim's uniform selector allows it). At equal times an end is processed
    before a start, so a job starting exactly when a step completes gets the new version.
    """

    BLOCK = 4096

    def __init__(
        self,
        num_clients: int,
        concurrency: float,
        duration_min: float = 0.0,
        duration_sigma: float = 1.0,
        seed: int = 0,
        rate: float | None = None,
    ) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients must be positive, got {num_clients}")
        if duration_min < 0 or duration_sigma < 0 or duration_min + duration_sigma <= 0:
            raise ValueError("durations need d_min >= 0, σ >= 0 and d_min + σ > 0")
        self.num_clients = int(num_clients)
        self.duration_min = float(duration_min)
        self.duration_sigma = float(duration_sigma)
        self.seed = int(seed)
        self.rate = (
            float(rate)
            if rate is not None
            else little_rate(concurrency, duration_min, duration_sigma)
        )
        if not self.rate > 0:
            raise ValueError(f"the start rate λ must be positive, got {self.rate}")

    @classmethod
    def from_rate(
        cls,
        num_clients: int,
        rate: float,
        duration_min: float = 0.0,
        duration_sigma: float = 1.0,
        seed: int = 0,
    ) -> AsyncSchedule:
        """A schedule with FLSim's ``training_rate`` λ given directly (e.g. 627 for ≈ 500)."""
        return cls(num_clients, 0.0, duration_min, duration_sigma, seed, rate=rate)

    @property
    def mean_duration(self) -> float:
        return self.duration_min + self.duration_sigma * HALF_NORMAL_MEAN

    @property
    def concurrency(self) -> float:
        """Expected time-average number of running jobs, λ·E[d]."""
        return self.rate * self.mean_duration

    def first_jobs(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(client, start, end) of the first ``count`` jobs in start order, as arrays."""
        blocks = [self._block(b) for b in range(-(-count // self.BLOCK))]
        clients = np.concatenate([b[0] for b in blocks] or [np.zeros(0, np.int64)])[:count]
        durations = np.concatenate([b[1] for b in blocks] or [np.zeros(0)])[:count]
        starts = np.arange(count, dtype=np.float64) / self.rate
        return clients, starts, starts + durations

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        client_seq, duration_seq = np.random.SeedSequence([self.seed, b]).spawn(2)
        clients = np.random.Generator(np.random.PCG64(client_seq)).integers(
            0, self.num_clients, self.BLOCK
        )
        normal = np.random.Generator(np.random.PCG64(duration_seq)).standard_normal(self.BLOCK)
        return clients.astype(np.int64), self.duration_min + self.duration_sigma * np.abs(normal)

    def server_steps(self, buffer_size: int) -> Iterator[Step]:
        """Every server step (endless; use ``itertools.islice``): K consecutive ends per step."""
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        running: list[tuple[float, int, Job]] = []  # heap of (end, index, job)
        live: dict[int, int] = {}  # start version -> running jobs that started at it
        group: list[Job] = []
        version, index, block_id = 0, 0, 0
        clients, durations = (a.tolist() for a in self._block(0))
        while True:
            start = index / self.rate
            if running and running[0][0] <= start:
                _, _, job = heapq.heappop(running)
                live[job.start_version] -= 1
                if not live[job.start_version]:
                    del live[job.start_version]
                group.append(job)
                if len(group) == buffer_size:
                    keep = tuple(sorted({*live, version + 1}))
                    yield Step(version, job.end, tuple(group), keep)
                    version, group = version + 1, []
                continue
            offset = index - block_id * self.BLOCK
            if offset == self.BLOCK:
                block_id, offset = block_id + 1, 0
                clients, durations = (a.tolist() for a in self._block(block_id))
            job = Job(index, clients[offset], start, start + durations[offset], version)
            heapq.heappush(running, (job.end, index, job))
            live[version] = live.get(version, 0) + 1
            index += 1

    def jobs(self, buffer_size: int) -> Iterator[Job]:
        """Every job in order of end time, with its start version for buffer size K (endless)."""
        for step in self.server_steps(buffer_size):
            yield from step.jobs
