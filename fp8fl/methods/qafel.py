"""QAFeL (Ortega & Jafarkhani, "Quantized and Asynchronous Federated Learning", arXiv:2410.00242)
and FedBuff (Nguyen et al., arXiv:2106.06639) as components; the maths is ``federated.buffered``.

* quantizer ``fp32-deltas``: FP32 local training; every floating-point tensor of the model goes
  through the codec (QAFeL quantizes the whole update Δ = y_P − y_0, biases included).
* codecs ``qafel-uplink`` (Q_c, for Δ) and ``qafel-downlink`` (Q_s, for x − x̂), each one of:
  ``fp32``; ``qsgd<b>`` (QSGD, b bits per element: s = 2^(b−1) − 1 levels, per tensor, stochastic);
  ``qsgd<b>b<n>`` (the same with a norm per bucket of n elements, e.g. ``qsgd8b512``);
  ``minmax<b>`` (deterministic per-tensor min–max, 1-D tensors FP32: FLSim's channel, range
  including 0, or with ``qafel-minmax = "anchored"`` the grid anchored at the tensor's minimum
  that this app used before issue 34); ``fp8`` (this app's
  minifloat codes in the run's ``format``, stochastic rounding, α = max|v| per tensor).
* aggregator ``buffered``: the buffered server step x ← x + (η_g/K)·Σ Q_c(Δ_k), q = Q_s(x − x̂),
  x̂ ← x̂ + q (``BufferedServer``), plus the start models of the versions jobs still train from.

``qafel-start = "naive"`` is the paper's naive baseline: jobs start from Q_s(x) instead of x̂. With
an FP32 downlink x̂ would equal x up to float rounding, so the start is x itself: that is FedBuff.
The presets and the server loops (simulated or real asynchrony, ``async-mode``) are registered in
``fp8fl.methods.registry`` and ``strategies.loops``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fp8fl.federated.buffered import BufferedServer
from fp8fl.federated.seams import (
    Aggregate,
    ArraySpec,
    ClientUpdate,
    Codec,
    Components,
    RunView,
    State,
    one_of,
)
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import StateLayout
from fp8fl.methods.family import Family, Preset, Settings, setting
from fp8fl.methods.fp8 import Float32Codec
from fp8fl.numerics.codec import decode, encode, packed_length
from fp8fl.numerics.formats import FloatFormat
from fp8fl.numerics.qsgd import (
    anchored_minmax_decode,
    anchored_minmax_encode,
    anchored_minmax_nbytes,
    minmax_decode,
    minmax_encode,
    minmax_nbytes,
    qsgd_code_bits,
    qsgd_decode,
    qsgd_encode,
    qsgd_levels,
    qsgd_norm_count,
)
from fp8fl.numerics.quant import Rounding

__all__ = [
    "ASYNC_MODES",
    "JOB_KEY",
    "QAFEL",
    "START_CODEC",
    "START_VERSION",
    "BufferedAggregator",
    "DeltaTraining",
    "MinMaxCodec",
    "QAFeLFamily",
    "QAFeLSettings",
    "QSGDCodec",
    "ScaledMinifloatCodec",
    "buffered_settings",
    "delta_codec",
    "slowdowns",
]

ASYNC_MODES = ("simulated", "real")
START_CODEC = Float32Codec()
"""How a job's start model (x̂ at its start version) travels to its client: float32."""
START_VERSION = "start-version"
"""Instruction key of a job's start version; metric key under which the server loop tells
``aggregate`` the start version of an update."""
JOB_KEY = "job"
"""Instruction and metric key of a job's index: it seeds the job; the server checks the echo."""
UINT8, INT8, FLOAT32 = np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32)


# ---------------------------------------------------------------------------- quantizer
class DeltaTraining:
    """FP32 local training that sends its change Δ (``SendsChanges``), every floating-point
    tensor of it through the codec."""

    name: ClassVar[str] = "fp32-deltas"
    calibrates: ClassVar[bool] = False

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def quantized_names(self, model: nn.Module) -> list[str]:
        return [name for name, t in model.state_dict().items() if t.is_floating_point()]

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None:
        raise TypeError("an FP32 model has no ranges to calibrate")

    def change(self, trained: State, start: State) -> State:
        """Δ = y_P − y_0."""
        return {name: trained[name] - value for name, value in start.items()}


# ---------------------------------------------------------------------------- codecs
def _offsets(sizes: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum([0, *sizes]).tolist()
    return list(itertools.pairwise(ends))


@dataclass(frozen=True)
class QSGDCodec:
    """QSGD with ``bits`` bits per element (sign + ℓ), per tensor or per ``bucket`` consecutive
    elements, plus the float32 norm of each tensor or bucket."""

    bits: int
    bucket: int | None = None
    name: ClassVar[str] = "qsgd"

    @property
    def levels(self) -> int:
        return qsgd_levels(self.bits)

    def _sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
        return [packed_length(math.prod(s), qsgd_code_bits(self.levels)) for s in shapes.values()]

    def _norm_counts(self, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
        return [qsgd_norm_count(math.prod(s), self.bucket) for s in shapes.values()]

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        return [
            ArraySpec("codes", UINT8, sum(self._sizes(shapes))),
            ArraySpec("norms", FLOAT32, sum(self._norm_counts(shapes))),
        ]

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        coded = [qsgd_encode(w, self.levels, generator, self.bucket) for w in weights.values()]
        codes = np.concatenate([np.empty(0, np.uint8), *(c for c, _ in coded)])
        return [codes, np.concatenate([np.empty(0, np.float32), *(n for _, n in coded)])]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        codes, norms = arrays
        out = {}
        for (name, shape), (lo, hi), (nlo, nhi) in zip(
            shapes.items(), _offsets(self._sizes(shapes)), _offsets(self._norm_counts(shapes))
        ):
            count = math.prod(shape)
            try:
                out[name] = qsgd_decode(
                    codes[lo:hi], norms[nlo:nhi], count, self.levels, self.bucket
                )
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            out[name] = out[name].view(shape)
        return out


@dataclass(frozen=True)
class MinMaxCodec:
    """Per-tensor min–max codes (``bits`` bits) of FLSim's channel, with each tensor's float32 scale
    and int8 zero point; ``anchored``: the grid anchored at the tensor's min, with min and max as
    float32 (``qafel-minmax = "anchored"``). Tensors with ndim ≤ 1 travel as raw float32 and carry no side
    information."""

    bits: int
    anchored: bool = False
    name: ClassVar[str] = "minmax"

    def _sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
        nbytes = anchored_minmax_nbytes if self.anchored else minmax_nbytes
        side = 8 if self.anchored else 5
        return [nbytes(s, self.bits) - (side if len(s) > 1 else 0) for s in shapes.values()]

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        ranged = sum(1 for s in shapes.values() if len(s) > 1)
        codes = ArraySpec("codes", UINT8, sum(self._sizes(shapes)))
        if self.anchored:
            return [codes, ArraySpec("ranges", FLOAT32, 2 * ranged)]
        return [codes, ArraySpec("scales", FLOAT32, ranged), ArraySpec("zero_points", INT8, ranged)]

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        encode_one = anchored_minmax_encode if self.anchored else minmax_encode
        streams, first, second = [np.empty(0, np.uint8)], [], []
        for w in weights.values():
            codes, a, b = encode_one(w, self.bits)
            streams.append(codes)
            if w.dim() > 1:
                first.append(a)
                second.append(b)
        if self.anchored:  # min, max of each tensor in turn
            ranges = np.array([v for pair in zip(first, second) for v in pair], dtype=np.float32)
            return [np.concatenate(streams), ranges]
        return [
            np.concatenate(streams),
            np.array(first, dtype=np.float32),
            np.array(second, dtype=np.int8),
        ]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        codes, *side = arrays
        if self.anchored:
            pairs = side[0].reshape(-1, 2).tolist()
            decode_one = anchored_minmax_decode
        else:
            pairs = list(zip(side[0].tolist(), side[1].tolist()))
            decode_one = minmax_decode
        out, r = {}, 0
        for (name, shape), (lo, hi) in zip(shapes.items(), _offsets(self._sizes(shapes))):
            first, second = (0.0, 0.0) if self.anchored else (1.0, 0)
            if len(shape) > 1:
                first, second = pairs[r]
                r += 1
            try:
                out[name] = decode_one(codes[lo:hi], first, second, shape, self.bits)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        return out


@dataclass(frozen=True)
class ScaledMinifloatCodec:
    """Minifloat codes of the run's format per tensor, with the tensor's own α = max|v| (float32,
    sent beside the codes): an update has no learned α, so the scale is its range."""

    rounding: Rounding
    name: ClassVar[str] = "fp8"

    def _sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
        return [packed_length(math.prod(s), self.rounding.fmt.bits) for s in shapes.values()]

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        return [
            ArraySpec("codes", UINT8, sum(self._sizes(shapes))),
            ArraySpec("alphas", FLOAT32, len(shapes)),
        ]

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        streams, alphas = [np.empty(0, np.uint8)], []
        for w in weights.values():
            w = w.detach().float().cpu().contiguous()
            if not torch.isfinite(w).all():
                raise ValueError("cannot encode a tensor holding inf or NaN")
            peak = float(w.abs().max()) if w.numel() else 0.0
            alpha = float(np.float32(peak)) if peak > 0 else 1.0  # all zeros: any α codes 0
            streams.append(encode(w, alpha, self.rounding.fmt, self.rounding.stochastic, generator))
            alphas.append(alpha)
        return [np.concatenate(streams), np.array(alphas, dtype=np.float32)]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        codes, alphas = arrays
        out = {}
        for (name, shape), alpha, (lo, hi) in zip(
            shapes.items(), alphas.tolist(), _offsets(self._sizes(shapes))
        ):
            if not (math.isfinite(alpha) and alpha > 0):
                raise ValueError(f"{name}: α = {alpha}, must be positive and finite")
            try:
                out[name] = decode(codes[lo:hi], alpha, self.rounding.fmt, shape=shape)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        return out


WIRE_PATTERN = re.compile(r"^(fp32|fp8|qsgd([2-8])(?:b([1-9][0-9]{0,7}))?|minmax([1-8]))$")


def _wire_problem(key: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value == "" or WIRE_PATTERN.match(value):
            return None
        return (
            f"{key} must be fp32, fp8, qsgd2..qsgd8 (per tensor), qsgd<b>b<n> (buckets of n "
            f"elements, e.g. qsgd8b512) or minmax1..minmax8, got {value!r}"
        )

    return check


def delta_codec(wire: str, fmt: FloatFormat, minmax: str = "flsim") -> Codec:
    """The codec a ``qafel-uplink`` / ``qafel-downlink`` value names (``fp8``: in ``fmt``, the
    run's format; ``minmax<b>`` on the ``qafel-minmax`` grid)."""
    match = WIRE_PATTERN.match(wire)
    if match is None:
        raise ValueError(f"unknown QAFeL wire {wire!r}")
    if match.group(2):
        return QSGDCodec(int(match.group(2)), int(match.group(3)) if match.group(3) else None)
    if match.group(4):
        return MinMaxCodec(int(match.group(4)), minmax == "anchored")
    return ScaledMinifloatCodec(Rounding(fmt, True)) if wire == "fp8" else Float32Codec()


MINMAX_GRIDS = ("flsim", "anchored")


# ---------------------------------------------------------------------------- aggregator
class BufferedAggregator:
    """The QAFeL / FedBuff server behind the ``Aggregator`` seam.

    ``start`` gives it x₀ and the message layout; ``aggregate`` takes the updates of one server
    step (each with its start version under ``metrics["start-version"]``, set by the server loop),
    buffers them in the given order and steps. Q_s encodes x − x̂ with the downlink codec, seeded
    by (seed, "downlink", t); its arrays stay in ``broadcast`` for the byte count. ``starts`` holds
    the start model of every version a job may still train from (``keep`` drops the others).
    """

    name: ClassVar[str] = "buffered"

    def __init__(
        self,
        buffer_size: int,
        server_lr: float,
        momentum: float,
        naive: bool,
        downlink: Codec,
        seed: int,
    ) -> None:
        self.buffer_size = buffer_size
        self.server_lr = server_lr
        self.momentum = momentum
        self.naive = naive
        self.downlink = downlink
        self.seed = seed
        self._server: BufferedServer | None = None
        self._layout: StateLayout | None = None
        self.starts: dict[int, State] = {}
        self.broadcast: list[np.ndarray] = []

    # ------------------------------------------------------------------ set-up
    def start(self, initial: State, layout: StateLayout) -> None:
        self._layout = layout
        self._server = BufferedServer(
            initial,
            self.buffer_size,
            self.server_lr,
            self._quantize,
            self.momentum,
            self.naive,
        )
        self.starts = {0: self._server.start_model()}

    @property
    def server(self) -> BufferedServer:
        if self._server is None:
            raise RuntimeError("BufferedAggregator.start() was not called")
        return self._server

    @property
    def version(self) -> int:
        return self.server.version

    def _quantize(self, state: State, version: int) -> State:
        """Q_s through the downlink codec: what every client decodes, bit for bit."""
        assert self._layout is not None
        generator = seeded_generator(self.seed, "downlink", version + 1)
        self.broadcast = self._layout.pack(state, self.downlink, generator)
        return self._layout.unpack(self.broadcast, self.downlink)

    # ------------------------------------------------------------------ steps
    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        """One server step from K updates in arrival order; returns x and the step's staleness."""
        server = self.server
        if len(updates) != self.buffer_size:
            raise ValueError(
                f"a server step takes K = {self.buffer_size} updates, got {len(updates)}"
            )
        before = len(server.staleness)
        for update in updates:
            server.receive(update.state, int(update.metrics[START_VERSION]))
        server.step()
        self.starts[server.version] = server.start_model()
        return Aggregate(
            {k: v.clone() for k, v in server.x.items()},
            {"staleness": server.staleness[before:]},
        )

    def skip(self) -> None:
        """A step without an update: t advances, x and x̂ stay (see ``skip_step``)."""
        self.server.skip_step()
        self.starts[self.server.version] = self.server.start_model()
        self.broadcast = []

    def keep(self, versions: Sequence[int]) -> None:
        """Drop the start models of every version not in ``versions``."""
        self.starts = {v: s for v, s in self.starts.items() if v in set(versions)}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> State:
        """The server's x, x̂, buffer, momentum, t and staleness log, and the kept start models,
        as flat tensors (``part.name``, ``start.<version>.name``) for the checkpoint."""
        state = self.server.state_dict()
        flat: State = {
            "buffer_count": torch.tensor(state["buffer_count"]),
            "version": torch.tensor(state["version"]),
            "staleness": state["staleness"],
        }
        for part in ("x", "hidden", "buffer_sum", "momentum_buffer", "naive_start"):
            if state[part] is not None:
                flat.update({f"{part}.{k}": v for k, v in state[part].items()})
        for version, start in self.starts.items():
            flat.update({f"start.{version}.{k}": v.clone() for k, v in start.items()})
        return flat

    def load_state_dict(self, state: State) -> None:
        if not state:
            return
        nested: dict[str, Any] = {
            "x": {},
            "hidden": {},
            "buffer_sum": {},
            "momentum_buffer": {},
            "naive_start": {},
        }
        starts: dict[int, State] = {}
        for key, value in state.items():
            part, _, name = key.partition(".")
            if part == "start":
                version, _, name = name.partition(".")
                starts.setdefault(int(version), {})[name] = value.clone()
            elif part in nested:
                nested[part][name] = value
        server = self.server
        server.load_state_dict(
            {
                **{part: values or None for part, values in nested.items()},
                "config": server.state_dict()["config"],
                "buffer_count": int(state["buffer_count"]),
                "version": int(state["version"]),
                "staleness": state["staleness"],
            }
        )
        self.starts = starts


def slowdowns(value: str) -> dict[int, float]:
    """``client-slowdown``: "partition:factor,..." -> {partition: factor ≥ 1} ("" = none)."""
    out = {}
    for item in filter(None, value.split(",")):
        partition, _, factor = item.partition(":")
        out[int(partition)] = float(factor)
    return out


def _slowdown_problem(value: str) -> str | None:
    try:
        factors = slowdowns(value)
    except ValueError:
        factors = {-1: 0.0}
    if all(p >= 0 and math.isfinite(f) and f >= 1 for p, f in factors.items()):
        return None
    return f"client-slowdown must be 'partition:factor,...' with factors >= 1, got {value!r}"


def _positive_int(key: str) -> Callable[[int], str | None]:
    return lambda v: None if v >= 1 else f"{key} must be >= 1, got {v}"


@dataclass(frozen=True)
class QAFeLSettings(Settings):
    """The keys of QAFeL and FedBuff (``""``: the preset's) and of their buffered server step."""

    uplink: str = setting(
        "qafel-uplink",
        "",
        "Q_c of the client's Δ: fp32, fp8, qsgd<b>, qsgd<b>b<n> (buckets of n), minmax<b>",
        _wire_problem("qafel-uplink"),
        preset=True,
    )
    downlink: str = setting(
        "qafel-downlink",
        "",
        "Q_s of the broadcast x − x̂: fp32, fp8, qsgd<b>, qsgd<b>b<n> (buckets of n), minmax<b>",
        _wire_problem("qafel-downlink"),
        preset=True,
    )
    start: str = setting(
        "qafel-start",
        "",
        "where a job starts: hidden (x̂, QAFeL) or naive (Q_s(x), the paper's baseline)",
        one_of("qafel-start", ("hidden", "naive"), preset=True),
        preset=True,
    )
    minmax: str = setting(
        "qafel-minmax",
        "flsim",
        "grid of minmax<b>: flsim (FLSim's channel: range including 0, scale and zero point) or "
        "anchored (the tensor's own [min, max], this app's grid before issue 34)",
        one_of("qafel-minmax", MINMAX_GRIDS),
        variant=True,
    )
    buffer_size: int = setting(
        "buffer-size", 10, "K: client updates per server step", _positive_int("buffer-size")
    )
    concurrency: int = setting(
        "concurrency",
        20,
        "clients training at once (simulated: the schedule's mean; real: kept busy)",
        _positive_int("concurrency"),
    )
    server_lr: float = setting(
        "server-lr",
        1.0,
        "η_g of the buffered server step x ← x + η_g·mean(Q_c(Δ))",
        lambda v: None if v > 0 and math.isfinite(v) else f"server-lr must be > 0, got {v}",
    )
    server_momentum: float = setting(
        "server-momentum",
        0.0,
        "β of the buffered server step's momentum (0: the paper's plain step)",
        lambda v: None if 0 <= v < 1 else f"server-momentum must be in [0, 1), got {v}",
    )
    async_mode: str = setting(
        "async-mode",
        "simulated",
        "simulated (FLSim's seeded event schedule, reproducible) or real (a Grid loop)",
        one_of("async-mode", ASYNC_MODES),
    )
    client_slowdown: str = setting(
        "client-slowdown",
        "",
        "real mode: 'partition:factor,...' stretches those clients' jobs to factor × their time",
        _slowdown_problem,
    )

    @property
    def naive(self) -> bool:
        """Whether a job starts from Q_s(x) rather than the hidden state x̂."""
        return self.start == "naive" or self.downlink == "fp32"


def buffered_settings(settings: Settings) -> QAFeLSettings:
    """The settings of a run on a buffered server loop, which only QAFeL's methods use."""
    if not isinstance(settings, QAFeLSettings):
        raise TypeError(f"a buffered server loop runs QAFeL's methods, not {type(settings)}")
    return settings


SERVER_LOOPS = {"simulated": "buffered-simulated", "real": "buffered-real"}
"""The server loop of each ``async-mode`` (``strategies.loops``)."""


@dataclass(frozen=True)
class QAFeLFamily(Family[QAFeLSettings]):
    """QAFeL and FedBuff: FP32 local training of Δ, Q_c up, Q_s of x − x̂ down, the buffered
    server step with hidden state, on a simulated or a real asynchronous loop."""

    def components(self, settings: QAFeLSettings, run: RunView) -> Components:
        return Components(
            quantizer="fp32-deltas",
            codec="qafel-uplink",
            aggregator="buffered",
            server_loop=SERVER_LOOPS[settings.async_mode],
            downlink="qafel-downlink",
        )

    def quantizer(self, settings: QAFeLSettings, run: RunView) -> DeltaTraining:
        return DeltaTraining()

    def codec(self, settings: QAFeLSettings, run: RunView) -> Codec:
        return delta_codec(settings.uplink, run.fmt, settings.minmax)

    def downlink_codec(self, settings: QAFeLSettings, run: RunView) -> Codec:
        return delta_codec(settings.downlink, run.fmt, settings.minmax)

    def aggregator(
        self, settings: QAFeLSettings, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> BufferedAggregator:
        return BufferedAggregator(
            settings.buffer_size,
            settings.server_lr,
            settings.server_momentum,
            settings.naive,
            self.downlink_codec(settings, run),
            run.seed,
        )

    def component_problems(self, settings: QAFeLSettings, run: RunView) -> list[str]:
        """The wrappers of synchronous aggregators do not apply to the buffered server step."""
        problems = []
        if run.moving_average > 0:
            problems.append("moving-average applies to synchronous methods only")
        if run.robust_aggregation != "none":
            problems.append("robust-aggregation applies to synchronous methods only")
        return problems


_ORTEGA = 'Ortega & Jafarkhani, "Quantized and Asynchronous Federated Learning", arXiv:2410.00242'
QAFEL = QAFeLFamily(
    name="qafel",
    label="QAFeL",
    marker="D",
    reference=_ORTEGA,
    settings_type=QAFeLSettings,
    presets=tuple(
        Preset(name, label, color, _ORTEGA, QAFeLSettings(up, down, start))
        for name, label, color, up, down, start in (
            ("fedbuff", "FedBuff", "teal", "fp32", "fp32", "hidden"),
            ("qafel", "QAFeL 4/8 (QSGD)", "crimson", "qsgd4", "qsgd8", "hidden"),
            ("qafel-fp8", "QAFeL FP8", "goldenrod", "fp8", "fp8", "hidden"),
            ("qafel-naive", "naive 4/8 (QSGD)", "rosybrown", "qsgd4", "qsgd8", "naive"),
        )
    ),
    custom=Preset(
        "qafel-custom",
        "QAFeL custom",
        "tab:gray",
        "QAFeL settings no preset names",
        QAFeLSettings(),
    ),
    asynchronous=True,
)
"""QAFeL (Ortega & Jafarkhani, arXiv:2410.00242) with FedBuff: fedbuff, qafel, qafel-fp8,
qafel-naive."""
