"""FP8FedAvg-UQ / UQ+ and their ablations (Wang et al. 2024, arXiv:2407.02610) as components.

* quantizers: ``fp32`` (no simulation) and ``minifloat-qat`` (per-tensor flexible-bias minifloat
  QAT with learnable α/β, §3.3, nearest or stochastic rounding in the forward);
* codecs: ``fp32`` (float32 weights) and ``minifloat`` (each weight tensor's codes in its own α,
  nearest or stochastic rounding, both directions, §4);
* aggregators: ``average`` (n_k-weighted, Alg. 3) and ``server-optimize`` (UQ+, Alg. 2, eq. 7-8).

The three run-config switches ``qat``, ``wire`` and ``server-opt`` pick one of each
(``fp8_components``); the presets fp32, uq, uq+, bq and the Table 2 ablations are named sets of
switches (``fp8fl.methods.registry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fp8fl.federated.aggregation import average_objective, server_optimize, weighted_average
from fp8fl.federated.layer_formats import LayerFormats, parse_layer_formats
from fp8fl.federated.seams import (
    Aggregate,
    ArraySpec,
    ClientUpdate,
    CodeRun,
    Components,
    Option,
    RunView,
    State,
    StatelessAggregator,
    states_and_weights,
)
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import concat_float32, split_float32
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
    "SERVER_OPT_OPTIONS",
    "Average",
    "Float32Codec",
    "FullPrecision",
    "MinifloatCodec",
    "MinifloatQAT",
    "ServerOptimize",
    "fp8_components",
    "minifloat_codec",
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


def minifloat_codec(config: RunView, fmt: FloatFormat) -> MinifloatCodec:
    """The run's minifloat codec (its ``wire`` rounding, its ``layer-formats``) in ``fmt`` for
    the tensors whose layer has no format of its own."""
    return MinifloatCodec(
        Rounding.named(fmt, config.wire), parse_layer_formats(config.layer_formats)
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


SERVER_OPT_OPTIONS = (
    Option(
        "server-opt-steps",
        5,
        "ServerOptimize: STE gradient steps on w per step size",
        lambda v: None if v >= 0 else "server-opt-steps must be >= 0",
    ),
    Option("server-opt-lrs", "0.01,0.1,1", "ServerOptimize: step sizes tried", _check_lrs),
    Option(
        "server-opt-grid",
        50,
        "ServerOptimize: α grid points in [min_k α_k, max_k α_k]",
        lambda v: None if v >= 1 else "server-opt-grid must be >= 1",
    ),
)


def server_optimize_from(
    config: RunView, quantized: tuple[str, ...], rounding: Rounding | Mapping[str, Rounding]
) -> ServerOptimize:
    return ServerOptimize(
        quantized,
        rounding,
        config.option("server-opt-steps"),
        _lrs(config.option("server-opt-lrs")),
        config.option("server-opt-grid"),
        config.seed,
    )


def fp8_components(config: RunView) -> Components:
    """The components the FP8 switches ``qat``, ``wire`` and ``server-opt`` name."""
    own_downlink = config.downlink_format and config.wire != "fp32"
    return Components(
        quantizer="fp32" if config.qat == "none" else "minifloat-qat",
        codec="fp32" if config.wire == "fp32" else "minifloat",
        aggregator="server-optimize" if config.server_opt == "mse" else "average",
        downlink="minifloat-downlink" if own_downlink else None,
        moving_average=config.option("moving-average"),
    )
