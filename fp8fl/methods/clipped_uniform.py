"""Clipped uniform integer quantization (Bozorgasl & Chen, arXiv:2405.13365) as components.

* quantizer ``uniform-qat``: QAT of every conv/linear weight on the B-bit grid (``cq-grid``:
  symmetric, 2^B − 1 levels with top and bottom ±s, or two's complement) clipped at the OCTAV
  fixed point of the current weights (fake-quant forward with nearest rounding, straight-through
  backward; biases and norms stay FP32, as in the FP8 method);
* codec ``clipped-uniform``: per layer the packed B-bit codes, the clip s and the layer's
  quantization MSE e = mean (w − Q(w))², with nearest or stochastic rounding;
* aggregator ``inverse-mse``: per layer w̄ = Σ_j Q(w_j)/e_j ÷ Σ_j 1/e_j, e floored at
  ``cq-mse-floor``; the other entries are n_k-averaged.

The grid, OCTAV and the rounding are in ``fp8fl.numerics.uniform``. Choices where the paper is
silent: the QAT forward rounds to nearest (the paper's stochastic/deterministic switch is about the
wire), the clip is recomputed by OCTAV at every forward and for every message, and the downlink is
FP32 as in the paper unless ``cq-downlink = "quantized"`` (then the global weights travel with the
same codec and stochastic rounding, so that the method compares with FP8 in both directions).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fp8fl.federated.aggregation import weighted_average
from fp8fl.federated.seams import (
    Aggregate,
    Aggregator,
    ArraySpec,
    ClientUpdate,
    Codec,
    CodeRun,
    Components,
    RunView,
    State,
    StatelessAggregator,
    one_of,
    states_and_weights,
)
from fp8fl.methods.family import Family, Preset, Settings, setting
from fp8fl.methods.fp8 import Average, Float32Codec
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import ConvOp, LinearOp
from fp8fl.numerics.codec import packed_length
from fp8fl.numerics.uniform import (
    GRIDS,
    MAX_BITS,
    MIN_BITS,
    decode_uniform,
    dequantize_uniform,
    encode_uniform,
    fake_quant_uniform,
    inverse_mse_average,
    octav_clip,
    quantization_mse,
    quantize_uniform,
)

__all__ = [
    "CLIPPED_UNIFORM",
    "CQSettings",
    "ClippedUniformCodec",
    "ClippedUniformFamily",
    "InverseMSEAverage",
    "UniformQAT",
    "parse_bits",
]

MSE_SUFFIX = ":mse"
"""Side entries the codec adds to a decoded update: ``<weight name>:mse`` (a 0-d tensor)."""


def parse_bits(value: str) -> tuple[int, ...]:
    """``"4"`` or ``"4,2,2,4"`` -> (4,) or (4, 2, 2, 4); raises ValueError naming the problem."""
    try:
        bits = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"cq-bits must be integers separated by commas, got {value!r}") from None
    bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise ValueError(f"cq-bits must be in {MIN_BITS}..{MAX_BITS}, got {bad} in {value!r}")
    return bits


def bits_per_layer(bits: tuple[int, ...], names: Sequence[str]) -> dict[str, int]:
    """One B per quantized layer: a single B for all, or a list with one entry per layer."""
    if len(bits) == 1:
        return dict.fromkeys(names, bits[0])
    if len(bits) != len(names):
        raise ValueError(
            f"cq-bits lists {len(bits)} entries but the model has {len(names)} quantized layers "
            f"({', '.join(names)}): give one B, or one per layer"
        )
    return dict(zip(names, bits))


# ---------------------------------------------------------------------------- quantizer
class _UniformWeightLayer(nn.Module, ABC):
    """A conv/linear whose forward uses its weight fake-quantized on the OCTAV-clipped grid."""

    uq_bits: int
    uq_grid: str
    weight: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        clip = octav_clip(w.detach(), self.uq_bits, grid=self.uq_grid)
        return self.apply_weight(x, fake_quant_uniform(w, clip, self.uq_bits, grid=self.uq_grid))

    @abstractmethod
    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's operation with the given (quantized) weight and its own bias."""


class UQLinear(LinearOp, _UniformWeightLayer, nn.Linear):
    pass


class UQConv1d(ConvOp, _UniformWeightLayer, nn.Conv1d):
    pass


class UQConv2d(ConvOp, _UniformWeightLayer, nn.Conv2d):
    pass


UQ_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: UQLinear,
    nn.Conv1d: UQConv1d,
    nn.Conv2d: UQConv2d,
}


@dataclass(frozen=True)
class UniformQAT:
    """QAT on the clipped uniform grid: every conv/linear weight, B bits per layer."""

    bits: tuple[int, ...]
    grid: str
    name: ClassVar[str] = "uniform-qat"
    calibrates: ClassVar[bool] = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap the classes of the conv/linear layers in place (state names stay the same)."""
        layers = [(n, m) for n, m in model.named_modules() if type(m) in UQ_CLASSES]
        if not layers:
            raise ValueError("model has no nn.Conv1d, nn.Conv2d or nn.Linear to quantize")
        per_layer = bits_per_layer(self.bits, [_weight(n) for n, _ in layers])
        for name, module in layers:
            module.__class__ = UQ_CLASSES[type(module)]
            module.uq_bits = per_layer[_weight(name)]  # type: ignore[assignment]
            module.uq_grid = self.grid  # type: ignore[assignment]
        return model

    def quantized_names(self, model: nn.Module) -> list[str]:
        names = {_weight(n) for n, m in model.named_modules() if isinstance(m, _UniformWeightLayer)}
        return [k for k in model.state_dict(keep_vars=True) if k in names]

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None:
        raise TypeError("the clipped uniform quantizer has no ranges to calibrate")


def _weight(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


# ---------------------------------------------------------------------------- codec
@dataclass(frozen=True)
class ClippedUniformCodec:
    """Per quantized layer: B-bit codes (offset binary, packed), the clip s and the layer's
    quantization MSE e, both float32."""

    bits: tuple[int, ...]
    stochastic: bool
    grid: str
    name: ClassVar[str] = "clipped-uniform"

    def _bits(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return bits_per_layer(self.bits, list(shapes))

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        per_layer = self._bits(shapes)
        code_bytes = sum(packed_length(math.prod(s), per_layer[n]) for n, s in shapes.items())
        return [
            ArraySpec("codes", np.dtype(np.uint8), code_bytes),
            ArraySpec("clips", np.dtype(np.float32), len(shapes)),
            ArraySpec("errors", np.dtype(np.float32), len(shapes)),
        ]

    def code_runs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[CodeRun]]:
        per_layer = self._bits(shapes)
        return {"codes": [CodeRun(n, math.prod(s), per_layer[n]) for n, s in shapes.items()]}

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        per_layer = self._bits({n: tuple(w.shape) for n, w in weights.items()})
        streams, clips, errors = [np.empty(0, np.uint8)], [], []
        for name, w in weights.items():
            bits, x = per_layer[name], w.detach().float().cpu()
            clip = float(np.float32(octav_clip(x, bits, grid=self.grid)))  # what the receiver sees
            codes, values = quantize_uniform(x, clip, bits, self.stochastic, generator, self.grid)
            streams.append(encode_uniform(codes, bits, self.grid))
            clips.append(clip)
            errors.append(quantization_mse(x, values))
        return [
            np.concatenate(streams),
            np.asarray(clips, np.float32),
            np.asarray(errors, np.float32),
        ]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        stream, clips, errors = arrays
        per_layer, out, offset = self._bits(shapes), {}, 0
        for (name, shape), clip, error in zip(shapes.items(), clips.tolist(), errors.tolist()):
            if not (math.isfinite(clip) and clip > 0):
                raise ValueError(f"{name}: clip s is {clip}, it must be positive and finite")
            if not (math.isfinite(error) and error >= 0):
                raise ValueError(f"{name}: quantization MSE is {error}, it must be >= 0 and finite")
            bits, count = per_layer[name], math.prod(shape)
            size = packed_length(count, bits)
            try:
                codes = decode_uniform(stream[offset : offset + size], count, bits, self.grid)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            offset += size
            out[name] = dequantize_uniform(torch.from_numpy(codes), clip, bits, self.grid)
            out[name] = out[name].view(shape)
            out[name + MSE_SUFFIX] = torch.tensor(error, dtype=torch.float32)
        return out


# ---------------------------------------------------------------------------- aggregator
@dataclass
class InverseMSEAverage(StatelessAggregator):
    """Per quantized layer the inverse-MSE average of the clients' decoded weights; every other
    entry the n_k-weighted average."""

    quantized: tuple[str, ...]
    floor: float
    name: ClassVar[str] = "inverse-mse"

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        states, weights = states_and_weights(updates)
        result = weighted_average(states, weights)
        for name in self.quantized:
            errors = [float(u.side[name + MSE_SUFFIX]) for u in updates]
            result[name] = inverse_mse_average([s[name] for s in states], errors, self.floor)
        return Aggregate(result)


# ---------------------------------------------------------------------------- options
def _bits_problem(value: str) -> str | None:
    if value == "":
        return None  # taken from the method's preset
    try:
        parse_bits(value)
    except ValueError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class CQSettings(Settings):
    """The clipped-uniform family's keys (``""``: the preset's)."""

    bits: str = setting(
        "cq-bits",
        "",
        "bits per quantized layer: one B, or one per layer (4,2,2,4)",
        _bits_problem,
        preset=True,
    )
    rounding: str = setting(
        "cq-rounding",
        "",
        "rounding on the wire: nearest or stochastic",
        one_of("cq-rounding", ("nearest", "stochastic"), preset=True),
        preset=True,
    )
    average: str = setting(
        "cq-average",
        "",
        "server average: inverse-mse or nk",
        one_of("cq-average", ("inverse-mse", "nk"), preset=True),
        preset=True,
    )
    grid: str = setting(
        "cq-grid",
        "symmetric",
        "grid: symmetric (2^B − 1 levels, ±s included) or twos-complement (2^B levels, top s − Δ)",
        one_of("cq-grid", GRIDS),
        variant=True,
    )
    downlink: str = setting(
        "cq-downlink",
        "fp32",
        "downlink: fp32 (as the paper) or quantized (same codec, stochastic)",
        one_of("cq-downlink", ("fp32", "quantized"), preset=True),
        variant=True,
    )
    mse_floor: float = setting(
        "cq-mse-floor",
        1e-12,
        "floor of a layer's quantization MSE in the inverse-MSE average",
        lambda v: None if math.isfinite(v) and v > 0 else f"cq-mse-floor must be > 0, got {v}",
        variant=True,
    )


@dataclass(frozen=True)
class ClippedUniformFamily(Family[CQSettings]):
    """Clipped uniform quantization: OCTAV-clipped B-bit QAT, codes with the clip and the
    quantization MSE on the wire, the inverse-MSE average."""

    def components(self, settings: CQSettings, run: RunView) -> Components:
        return Components(
            quantizer="uniform-qat",
            codec="clipped-uniform",
            aggregator="inverse-mse" if settings.average == "inverse-mse" else "average",
            downlink="clipped-uniform-down" if settings.downlink == "quantized" else "fp32",
            moving_average=run.moving_average,
        )

    def quantizer(self, settings: CQSettings, run: RunView) -> UniformQAT:
        return UniformQAT(parse_bits(settings.bits), settings.grid)

    def codec(self, settings: CQSettings, run: RunView) -> ClippedUniformCodec:
        stochastic = settings.rounding == "stochastic"
        return ClippedUniformCodec(parse_bits(settings.bits), stochastic, settings.grid)

    def downlink_codec(self, settings: CQSettings, run: RunView) -> Codec:
        if settings.downlink != "quantized":
            return Float32Codec()
        return ClippedUniformCodec(parse_bits(settings.bits), stochastic=True, grid=settings.grid)

    def aggregator(
        self, settings: CQSettings, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> Aggregator:
        if settings.average == "inverse-mse":
            return InverseMSEAverage(quantized, settings.mse_floor)
        return Average(quantized)

    def component_problems(self, settings: CQSettings, run: RunView) -> list[str]:
        """A per-layer ``cq-bits`` list must have one entry per quantized layer of the model."""
        try:
            bits = parse_bits(settings.bits)
        except ValueError:
            return []  # reported by the key's own check
        if len(bits) == 1:
            return []
        try:
            UniformQAT(bits, settings.grid).prepare(build_model(run.model, 10))
        except ValueError as err:
            return [str(err)]
        return []


_BOZORGASL = "Bozorgasl & Chen, arXiv:2405.13365"
CLIPPED_UNIFORM = ClippedUniformFamily(
    name="cq",
    label="clipped-uniform",
    marker="s",
    reference=_BOZORGASL,
    settings_type=CQSettings,
    presets=tuple(
        Preset(name, label, color, _BOZORGASL, CQSettings(bits, rounding, "inverse-mse"))
        for name, label, color, bits, rounding in (
            ("cq8", "CQ 8-bit", "tab:olive", "8", "stochastic"),
            ("cq4", "CQ 4-bit", "tab:orange", "4", "stochastic"),
            ("cq4-det", "CQ 4-bit, det.", "tab:pink", "4", "nearest"),
            ("cq2", "CQ 2-bit", "tab:cyan", "2", "stochastic"),
        )
    ),
    custom=Preset(
        "cq-custom",
        "CQ custom",
        "tab:gray",
        "clipped-uniform settings no preset names",
        CQSettings(),
    ),
)
"""The clipped-uniform family (Bozorgasl & Chen, arXiv:2405.13365): cq8, cq4, cq4-det, cq2."""
