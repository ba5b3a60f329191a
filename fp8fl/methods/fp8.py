"""FP8FedAvg-UQ / UQ+ and their ablations (Wang et al. 2024, arXiv:2407.02610) as components.

* quantizers: ``fp32`` (no simulation) and ``minifloat-qat`` (per-tensor flexible-bias minifloat
  QAT with learnable α/β, §3.3, nearest or stochastic rounding in the forward);
* codecs: ``fp32`` (float32 weights) and ``minifloat`` (each weight tensor's codes in its own α,
  nearest or stochastic rounding, both directions, §4);
* aggregators: ``average`` (n_k-weighted, Alg. 3) and ``server-optimize`` (UQ+, Alg. 2, eq. 7-8).

The three run-config switches ``qat``, ``wire`` and ``server-opt`` of ``FP8Settings`` pick one of
each (``FP8Family.components``); the presets fp32, uq, uq+, bq and the Table 2 ablations are named
sets of switches (``FP8``, the family object this module exports).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fp8fl.federated.aggregation import average_objective, server_optimize, weighted_average
from fp8fl.federated.client_formats import (
    FP32,
    assign_formats,
    client_formats_problems,
    parse_client_formats,
)
from fp8fl.federated.layer_formats import (
    LayerFormats,
    downlink_format_problems,
    layer_formats_problems,
    parse_layer_formats,
)
from fp8fl.federated.seams import (
    Aggregate,
    Aggregator,
    ArraySpec,
    ClientUpdate,
    Codec,
    CodeRun,
    Components,
    Quantizer,
    RunView,
    State,
    StatelessAggregator,
    one_of,
    states_and_weights,
)
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import concat_float32, split_float32
from fp8fl.methods.family import Family, Preset, Settings, setting
from fp8fl.models.qat import (
    QATModule,
    QuantConfig,
    alpha_name,
    calibrate,
    prepare_qat,
    quantized_weight_names,
)
from fp8fl.numerics.codec import decode, encode, packed_length, unpack_codes
from fp8fl.numerics.formats import FloatFormat
from fp8fl.numerics.quant import Rounding

__all__ = [
    "FP8",
    "Average",
    "FP8Family",
    "FP8Settings",
    "Float32Codec",
    "FullPrecision",
    "MinifloatCodec",
    "MinifloatQAT",
    "ServerOptimize",
]


# ---------------------------------------------------------------------------- quantizers
class FullPrecision:
    """No simulation: the client trains the FP32 model."""

    name: ClassVar[str] = "fp32"
    calibrates: ClassVar[bool] = False

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def quantized_names(self, model: nn.Module) -> list[str]:
        return []  # everything travels as dense float32

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None:
        raise TypeError("an FP32 model has no ranges to calibrate")


@dataclass(frozen=True)
class MinifloatQAT:
    """QAT with per-tensor learnable α (weights) and β (layer inputs) on the format's grid; the
    layers named in ``layer_formats`` (``fp8fl.federated.layer_formats``) on their own format's."""

    rounding: Rounding
    layer_formats: LayerFormats = ()
    name: ClassVar[str] = "minifloat-qat"
    calibrates: ClassVar[bool] = True

    def prepare(self, model: nn.Module) -> nn.Module:
        model = prepare_qat(model, QuantConfig(self.rounding.fmt, self.rounding.mode))
        formats = dict(self.layer_formats)
        for module in model.modules():
            if isinstance(module, QATModule) and module.qat_name in formats:
                module.qat_config = QuantConfig(formats[module.qat_name], self.rounding.mode)
        return model

    def quantized_names(self, model: nn.Module) -> list[str]:
        return quantized_weight_names(model)

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None:
        calibrate(model, batch)


# ---------------------------------------------------------------------------- codecs
class Float32Codec:
    """The weights as float32 values, concatenated in layout order."""

    name: ClassVar[str] = "fp32"

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        return [ArraySpec("weights", np.dtype(np.float32), _numel(shapes))]

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        return [concat_float32(list(weights.values()))]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        (flat,) = arrays
        bad = int(np.count_nonzero(~np.isfinite(flat)))
        if bad:
            raise ValueError(f"weights: {bad} non-finite value(s) (NaN or inf)")
        return split_float32(flat, shapes)


@dataclass(frozen=True)
class MinifloatCodec:
    """Each weight tensor as packed codes of the format, encoded with the tensor's own α (sent as
    a scale beside it): one byte per weight in E4M3, denser below 8 bits. The weights of the
    layers named in ``layer_formats`` travel in their own format."""

    rounding: Rounding
    layer_formats: LayerFormats = ()
    name: ClassVar[str] = "minifloat"

    def rounding_of(self, name: str) -> Rounding:
        """The rounding of weight tensor ``name``: its layer's format, else the codec's."""
        fmt = dict(self.layer_formats).get(name.removesuffix(".weight"))
        return self.rounding if fmt is None else Rounding(fmt, self.rounding.stochastic)

    def roundings(self, names: Sequence[str]) -> dict[str, Rounding]:
        return {name: self.rounding_of(name) for name in names}

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        return [ArraySpec("weights", np.dtype(np.uint8), sum(self.tensor_bytes(shapes)))]

    def tensor_bytes(self, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
        return [packed_length(math.prod(s), self._bits(n)) for n, s in shapes.items()]

    def code_runs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[CodeRun]]:
        return {"weights": [CodeRun(n, math.prod(s), self._bits(n)) for n, s in shapes.items()]}

    def _bits(self, name: str) -> int:
        return self.rounding_of(name).fmt.bits

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        streams = [
            encode(
                w.detach().float().cpu().contiguous(),
                state[alpha_name(name)].detach(),
                self.rounding_of(name).fmt,
                stochastic=self.rounding.stochastic,
                generator=generator,
            )
            for name, w in weights.items()
        ]
        return [np.concatenate([np.empty(0, np.uint8), *streams])]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        (stream,) = arrays
        out, offset = {}, 0
        for (name, shape), size in zip(shapes.items(), self.tensor_bytes(shapes)):
            try:
                out[name] = decode(
                    stream[offset : offset + size],
                    state[alpha_name(name)],
                    self.rounding_of(name).fmt,
                    shape=shape,
                )
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            offset += size
        return out

    def codes(self, stream: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> np.ndarray:
        """One code per weight (uint8), unpacked from an encoded ``weights`` array."""
        parts, offset = [np.empty(0, np.uint8)], 0
        for (name, shape), size in zip(shapes.items(), self.tensor_bytes(shapes)):
            parts.append(
                unpack_codes(stream[offset : offset + size], math.prod(shape), self._bits(name))
            )
            offset += size
        return np.concatenate(parts)


def _minifloat_codec(settings: FP8Settings, fmt: FloatFormat) -> MinifloatCodec:
    """The run's minifloat codec (its ``wire`` rounding, its ``layer-formats``) in ``fmt`` for
    the tensors whose layer has no format of its own."""
    return MinifloatCodec(
        Rounding.named(fmt, settings.wire), parse_layer_formats(settings.layer_formats)
    )


def _numel(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


# ---------------------------------------------------------------------------- aggregators
@dataclass
class Average(StatelessAggregator):
    """The n_k-weighted average of the decoded client states (Alg. 3, lines 8-11). With a minifloat
    wire it also reports ServerOptimize's objective at the average, for the round record."""

    quantized: tuple[str, ...]
    objective: Rounding | Mapping[str, Rounding] | None = None  # one, or one per tensor
    name: ClassVar[str] = "average"

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        states, weights = states_and_weights(updates)
        average = weighted_average(states, weights)
        if self.objective is None:
            return Aggregate(average)
        value = average_objective(average, states, weights, self.quantized, self.objective)
        return Aggregate(average, {"server_opt_before": value, "server_opt_after": value})


@dataclass
class ServerOptimize(StatelessAggregator):
    """UQ+'s ServerOptimize (Alg. 2): from the average, STE steps on w and a grid search on α per
    quantized tensor, never worse than the average. Its randomness is seeded by (seed, round)."""

    quantized: tuple[str, ...]
    rounding: Rounding | Mapping[str, Rounding]  # one, or one per tensor (layer-formats)
    steps: int
    lrs: tuple[float, ...]
    grid: int
    seed: int
    name: ClassVar[str] = "server-optimize"

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        states, weights = states_and_weights(updates)
        result = server_optimize(
            weighted_average(states, weights),
            states,
            weights,
            self.quantized,
            self.rounding,
            self.steps,
            self.lrs,
            self.grid,
            seeded_generator(self.seed, "serveropt", server_round),
        )
        return Aggregate(
            result.state,
            {
                "server_opt_before": result.objective_before,
                "server_opt_after": result.objective_after,
            },
        )


def _lrs(value: str) -> tuple[float, ...]:
    return tuple(float(v) for v in value.split(","))


def _check_lrs(value: str) -> str | None:
    try:
        lrs = _lrs(value)
    except ValueError:
        return f"server-opt-lrs must be comma-separated numbers, got {value!r}"
    if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
        return f"server-opt-lrs must be positive numbers, got {value!r}"
    return None


QAT_MODES = ("none", "nearest", "stochastic")
WIRE_MODES = ("fp32", "nearest", "stochastic")
SERVER_OPTS = ("average", "mse")


def _at_least(key: str, low: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= low else f"{key} must be >= {low}"


@dataclass(frozen=True)
class FP8Settings(Settings):
    """The FP8 family's keys: three switches (``""`` takes the preset's), ServerOptimize's
    search, and the formats of mixed-precision clients, single layers and the downlink."""

    qat: str = setting(
        "qat", "", "rounding of the local QAT forward", one_of("qat", QAT_MODES), preset=True
    )
    wire: str = setting(
        "wire", "", "rounding on the wire, both directions", one_of("wire", WIRE_MODES), preset=True
    )
    server_opt: str = setting(
        "server-opt",
        "",
        "how the server aggregates: average or mse (ServerOptimize, UQ+)",
        one_of("server-opt", SERVER_OPTS),
        preset=True,
    )
    server_opt_steps: int = setting(
        "server-opt-steps",
        5,
        "ServerOptimize: STE gradient steps on w per step size",
        _at_least("server-opt-steps", 0),
    )
    server_opt_lrs: str = setting(
        "server-opt-lrs", "0.01,0.1,1", "ServerOptimize: step sizes tried", _check_lrs
    )
    server_opt_grid: int = setting(
        "server-opt-grid",
        50,
        "ServerOptimize: α grid points in [min_k α_k, max_k α_k]",
        _at_least("server-opt-grid", 1),
    )
    client_formats: str = setting(
        "client-formats",
        "",
        '"" = every client in format; else shares such as "fp32:0.3,e4m3:0.7"',
        exclusive=True,
    )
    layer_formats: str = setting(
        "layer-formats",
        "",
        '"" = every layer in format; else "fc1:e2m1,conv1:e4m3"',
        exclusive=True,
    )
    downlink_format: str = setting(
        "downlink-format", "", '"" = the downlink in format; else e.g. "e3m2"', exclusive=True
    )

    def combination_problems(self) -> list[str]:
        p = []
        if self.qat == "none" and self.wire in ("nearest", "stochastic"):
            p.append(
                "wire quantization uses the α learned by QAT: with qat = 'none' use wire = 'fp32'"
            )
        if self.server_opt == "mse" and self.wire == "fp32":
            p.append(
                "server-opt = 'mse' minimises the error of quantized communication; with "
                "wire = 'fp32' its solution is the plain average: use server-opt = 'average'"
            )
        return p


def _preset(
    name: str, label: str, color: str, reference: str, qat: str, wire: str, opt: str
) -> Preset[FP8Settings]:
    return Preset(name, label, color, reference, FP8Settings(qat, wire, opt))


_WANG = "Wang et al. 2024, arXiv:2407.02610"


@dataclass(frozen=True)
class FP8Family(Family[FP8Settings]):
    """The FP8 methods: the switches ``qat``, ``wire`` and ``server-opt`` pick the quantizer,
    the codec and the aggregator."""

    def components(self, settings: FP8Settings, run: RunView) -> Components:
        own_downlink = settings.downlink_format and settings.wire != "fp32"
        return Components(
            quantizer="fp32" if settings.qat == "none" else "minifloat-qat",
            codec="fp32" if settings.wire == "fp32" else "minifloat",
            aggregator="server-optimize" if settings.server_opt == "mse" else "average",
            downlink="minifloat-downlink" if own_downlink else None,
            moving_average=run.moving_average,
        )

    def quantizer(self, settings: FP8Settings, run: RunView) -> Quantizer:
        if settings.qat == "none":
            return FullPrecision()
        return MinifloatQAT(
            Rounding.named(run.fmt, settings.qat), parse_layer_formats(settings.layer_formats)
        )

    def codec(self, settings: FP8Settings, run: RunView) -> Codec:
        if settings.wire == "fp32":
            return Float32Codec()
        return _minifloat_codec(settings, run.fmt)

    def downlink_codec(self, settings: FP8Settings, run: RunView) -> Codec:
        if settings.downlink_format and settings.wire != "fp32":
            return _minifloat_codec(settings, FloatFormat.from_name(settings.downlink_format))
        return self.codec(settings, run)

    def aggregator(
        self, settings: FP8Settings, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> Aggregator:
        roundings = codec.roundings(quantized) if isinstance(codec, MinifloatCodec) else None
        if settings.server_opt != "mse":
            return Average(quantized, roundings)
        assert roundings is not None  # server-opt = mse needs a minifloat wire (checked)
        return ServerOptimize(
            quantized,
            roundings,
            settings.server_opt_steps,
            _lrs(settings.server_opt_lrs),
            settings.server_opt_grid,
            run.seed,
        )

    def idle_keys(self, values: Mapping[str, Any]) -> frozenset[str]:
        """Without QAT nothing is in ``format`` and nothing calibrates; ServerOptimize's search
        runs only with ``server-opt = "mse"``."""
        idle = {"format", "calibration-samples"} if values.get("qat") == "none" else set()
        if values.get("server-opt") != "mse":
            idle |= {"server-opt-steps", "server-opt-lrs", "server-opt-grid"}
        return frozenset(idle)

    def partition_formats(self, settings: FP8Settings, run: RunView) -> tuple[str, ...]:
        shares = parse_client_formats(settings.client_formats)
        return assign_formats(shares, run.num_clients, run.seed) if shares else ()

    def client_view(self, settings: FP8Settings, fmt: str) -> tuple[FP8Settings, str]:
        """A minifloat client keeps the run's switches in its format; an ``fp32`` client has no
        QAT and an FP32 wire (its ``format`` then reads ``fp32``, which the protocol fields
        carry; no component of that client reads it as a minifloat). The view has no
        ``client-formats`` of its own."""
        if fmt == FP32:
            return replace(settings, qat="none", wire="fp32", client_formats=""), FP32
        return replace(settings, client_formats=""), fmt

    def problems(self, settings: FP8Settings, run: RunView) -> list[str]:
        """The switches, then the formats of mixed-precision clients, layers and the downlink."""
        return (
            settings.problems()
            + client_formats_problems(settings.client_formats, settings.qat, run)
            + layer_formats_problems(settings.layer_formats, settings.qat, run)
            + downlink_format_problems(settings.downlink_format, settings.wire, run)
        )


FP8 = FP8Family(
    name="fp8",
    label="FP8",
    marker="o",
    reference=_WANG,
    settings_type=FP8Settings,
    presets=(
        _preset(
            "fp32",
            "FP32 FedAvg",
            "black",
            f"FP32 FedAvg ({_WANG}, Table 1)",
            "none",
            "fp32",
            "average",
        ),
        _preset(
            "uq",
            "FP8FedAvg-UQ",
            "tab:blue",
            f"{_WANG}, Table 1",
            "nearest",
            "stochastic",
            "average",
        ),
        _preset(
            "uq+", "FP8FedAvg-UQ+", "tab:green", f"{_WANG}, Table 1", "nearest", "stochastic", "mse"
        ),
        _preset(
            "bq",
            "BQ (det. comm.)",
            "tab:red",
            f"det. CQ ({_WANG}, Table 3), BQ (Fig. 4)",
            "nearest",
            "nearest",
            "average",
        ),
        _preset(
            "qat-fp32wire",
            "det. QAT, FP32 comm.",
            "tab:purple",
            f"det. QAT ({_WANG}, Table 2)",
            "nearest",
            "fp32",
            "average",
        ),
        _preset(
            "randqat-fp32wire",
            "rand. QAT, FP32 comm.",
            "tab:brown",
            f"rand. QAT ({_WANG}, Table 2)",
            "stochastic",
            "fp32",
            "average",
        ),
    ),
    custom=Preset("custom", "custom", "tab:gray", "a combination of FP8 switches", FP8Settings()),
)
"""The FP8 family of Wang et al. 2024 (arXiv:2407.02610): fp32, uq, uq+, bq and the Table 2
ablations are named sets of its three switches."""
