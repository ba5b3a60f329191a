"""Low precision local training (Li et al., "Low Precision Local Training is Enough for Federated
Learning", NeurIPS 2024; code digbangbang/LPT-FL) as components.

* quantizer ``block-fp-training``: SWALP-style block floating point (``fp8fl.numerics.blockfp``)
  with no FP32 master copy. In training mode activations are put on a per-tensor grid forward and
  their errors backward, stochastically, at the authors' points (``lpt-points = "authors"``: after
  every conv, activation and pooling call and after the classifier, never the raw input; see
  ``ActivationPoints``) or, as before issue 34, at the input and output of every conv/linear
  (``"conv-linear-io"``); each local step
  quantizes the gradients, takes an FP32 Adam step (moments FP32, fresh every round) and puts the
  weights back on their grid with stochastic rounding. Every parameter is quantized: conv weights
  one exponent per kernel, Linear weights one per element (``lpt-linear-block = "element"``, what
  the authors' code does in effect) or per output row (``"row"``), 1-D tensors one per tensor.
  Evaluation (eval mode) runs in FP32, as the paper evaluates w̄.
* codec ``block-fp``: per parameter the b-bit mantissas (packed) and int8 exponents; weights already
  on the grid are coded exactly, others (the downlink's w̄) with stochastic rounding.
* aggregator ``uniform-average``: the unweighted mean of the clients' weights, as the authors'
  code (``lpt-average = "nk"``: the n_k average); the presets wrap it in the server moving average
  of ``fp8fl.methods.moving_average`` (``lpt-ma-lambda``, λ = 0.9).

The optimizer is Adam: ``optimizer = "auto"`` resolves to it and any other value is a config error
(the registry's ``optimizer`` of this quantizer). Its lr and weight decay are the run's ``lr`` and
``weight-decay``, whose defaults are SGD's (0.1): the paper uses lr 1e-3, batch 32, one local
epoch — pass them as run-config keys, the presets set only the method's own keys. Adam at lr 0.1
diverges on CIFAR-10 LeNet (training loss above 10^4 in the first round).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

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
)
from fp8fl.methods.family import Family, Preset, Settings, setting
from fp8fl.methods.fp8 import Average, Float32Codec
from fp8fl.methods.moving_average import lambda_problem
from fp8fl.numerics.blockfp import (
    BFPQuant,
    bfp_decode,
    bfp_encode,
    bfp_encode_exact,
    bfp_quantize,
    block_layout,
)
from fp8fl.numerics.codec import packed_length

__all__ = [
    "LPT",
    "ActivationPoints",
    "BlockFPCodec",
    "BlockFPTraining",
    "LPTFamily",
    "LPTSettings",
    "LowPrecisionAdam",
    "UniformAverage",
    "parameter_blocks",
    "weight_block",
]

BITS = (2, 16)
LINEAR_BLOCKS = ("element", "row")
POINTS = ("authors", "conv-linear-io")
CONVOLUTIONS = frozenset({F.conv1d, F.conv2d, F.conv3d})
ACTIVATIONS = frozenset(
    {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh}
)
POOLINGS = frozenset(
    {
        F.max_pool1d,
        F.max_pool2d,
        F.avg_pool1d,
        F.avg_pool2d,
        F.adaptive_max_pool1d,
        F.adaptive_max_pool2d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
    }
)


def weight_block(shape: Sequence[int], linear_block: str) -> str:
    """The block of a parameter: "kernel" for conv weights, ``linear_block`` for Linear weights,
    one per tensor for 1-D tensors (biases, norm scales)."""
    if len(shape) > 2:
        return "kernel"
    return linear_block if len(shape) == 2 else "tensor"


def parameter_blocks(
    shapes: Mapping[str, tuple[int, ...]], linear_block: str
) -> dict[str, tuple[str, int, int]]:
    """Per tensor: its block, number of blocks and values per block."""
    out = {}
    for name, shape in shapes.items():
        block = weight_block(shape, linear_block)
        out[name] = (block, *block_layout(shape, block))
    return out


# ---------------------------------------------------------------------------- quantizer
def _quantize_input(quant: BFPQuant) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        return (quant(args[0]), *args[1:]) if module.training else None

    return hook


def _quantize_output(quant: BFPQuant) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        return quant(output) if module.training else None

    return hook


class ActivationPoints(TorchFunctionMode):
    """LPT-FL's quantization points (digbangbang/LPT-FL ``models.py``: their ConvNet is conv →
    Q → norm → activation → Q → pool → Q per stage, then the classifier → Q). While a prepared
    model runs its training forward, every call of a convolution, activation or pooling function
    (``CONVOLUTIONS``, ``ACTIVATIONS``, ``POOLINGS``; module or functional form alike, since the
    modules call them) returns its output through ``quant``, which puts it on the per-tensor grid
    and its error on the way back; the model's own output (the classifier's) is quantized by
    ``leave``. The raw input goes to the first layer untouched. ``points`` counts the calls of the
    last forward, by function name."""

    def __init__(self, quant: nn.Module) -> None:
        super().__init__()
        self.quant = quant
        self.points: list[str] = []
        self._entered = False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and (
            func in CONVOLUTIONS or func in ACTIVATIONS or func in POOLINGS
        ):
            self.points.append(func.__name__)
            return self.quant(out)
        return out

    def enter(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of the model: in training mode, intercept its calls."""
        if module.training:
            self.points = []
            self.__enter__()
            self._entered = True

    def leave(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook of the model (also run when the forward raises): stop intercepting, then
        quantize the output after the classifier."""
        if not self._entered:
            return None
        self.__exit__(None, None, None)
        self._entered = False
        if not isinstance(output, torch.Tensor):
            return None
        self.points.append("output")
        return self.quant(output)


class LowPrecisionAdam:
    """Adam on block-FP weights without an FP32 master copy: Q(g), FP32 step, w ← Q(w) (SWALP, as
    Li et al. 2024 train each client). Rounding is stochastic from torch's global generator, which
    the client seeds per round and partition."""

    def __init__(
        self, model: nn.Module, bits: int, linear_block: str, lr: float, weight_decay: float
    ) -> None:
        self.bits = bits
        self.params = [(p, weight_block(p.shape, linear_block)) for p in model.parameters()]
        self.adam = torch.optim.Adam([p for p, _ in self.params], lr=lr, weight_decay=weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adam.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for p, block in self.params:
            if p.grad is not None:
                p.grad.copy_(bfp_quantize(p.grad, self.bits, block, stochastic=True))
        self.adam.step()
        for p, block in self.params:
            p.copy_(bfp_quantize(p, self.bits, block, stochastic=True))


@dataclass(frozen=True)
class BlockFPTraining:
    """Low precision local training on the b-bit block floating-point grid (see the module)."""

    bits: int
    linear_block: str
    points: str = "authors"
    name: ClassVar[str] = "block-fp-training"
    calibrates: ClassVar[bool] = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """Hooks quantizing activations and errors in training mode at ``points``; no state entry
        changes."""
        quant = BFPQuant(self.bits, self.bits, stochastic=True)
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
        if not layers:
            raise ValueError("model has no nn.Conv1d, nn.Conv2d or nn.Linear to quantize")
        if self.points == "authors":
            points = ActivationPoints(quant)
            model.register_forward_pre_hook(points.enter)
            model.register_forward_hook(points.leave, always_call=True)
            return model
        for module in layers:
            module.register_forward_pre_hook(_quantize_input(quant))
            module.register_forward_hook(_quantize_output(quant))
        return model

    def quantized_names(self, model: nn.Module) -> list[str]:
        names = {n for n, _ in model.named_parameters()}
        return [k for k in model.state_dict(keep_vars=True) if k in names]

    def calibrate(self, model: nn.Module, batch: torch.Tensor) -> None:
        raise TypeError("block floating-point training has no ranges to calibrate")

    def local_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> LowPrecisionAdam:
        return LowPrecisionAdam(model, self.bits, self.linear_block, lr, weight_decay)


# ---------------------------------------------------------------------------- codec
@dataclass(frozen=True)
class BlockFPCodec:
    """Per tensor: b-bit offset-binary mantissas (packed densely, each tensor from a byte boundary)
    and one int8 exponent per block. Weights on the grid are coded exactly; others are rounded
    stochastically (the downlink's w̄, as the paper sends Q(w̄))."""

    bits: int
    linear_block: str
    name: ClassVar[str] = "block-fp"

    def _layout(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, int, int]]:
        return parameter_blocks(shapes, self.linear_block)

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        blocks = self._layout(shapes).values()
        return [
            ArraySpec(
                "mantissas",
                np.dtype(np.uint8),
                sum(packed_length(n * s, self.bits) for _, n, s in blocks),
            ),
            ArraySpec("exponents", np.dtype(np.int8), sum(n for _, n, _ in blocks)),
        ]

    def code_runs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[CodeRun]]:
        """Mantissas of up to 8 bits as codes of their width, wider ones as their packed bytes;
        exponents as bytes, each tensor a run."""
        mantissas, exponents = [], []
        for name, (_, blocks, size) in self._layout(shapes).items():
            count = blocks * size
            if self.bits <= 8:
                mantissas.append(CodeRun(name, count, self.bits))
            else:
                mantissas.append(CodeRun(name, packed_length(count, self.bits), 8))
            exponents.append(CodeRun(name, blocks, 8))
        return {"mantissas": mantissas, "exponents": exponents}

    def encode(
        self, weights: Mapping[str, torch.Tensor], state: State, generator: torch.Generator | None
    ) -> list[np.ndarray]:
        mantissas, exponents = [np.empty(0, np.uint8)], [np.empty(0, np.int8)]
        for w in weights.values():
            x = w.detach().float().cpu()
            block = weight_block(x.shape, self.linear_block)
            try:
                stream, exps = bfp_encode_exact(x, self.bits, block)
            except ValueError:  # not on the grid (or not finite: bfp_encode names that)
                stream, exps = bfp_encode(x, self.bits, block, True, generator)
            mantissas.append(stream)
            exponents.append(exps)
        return [np.concatenate(mantissas), np.concatenate(exponents)]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Mapping[str, tuple[int, ...]], state: State
    ) -> State:
        stream, exps = arrays
        out, offset, first = {}, 0, 0
        for name, (block, blocks, size) in self._layout(shapes).items():
            length = packed_length(blocks * size, self.bits)
            try:
                out[name] = bfp_decode(
                    stream[offset : offset + length],
                    exps[first : first + blocks],
                    shapes[name],
                    self.bits,
                    block,
                )
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            offset, first = offset + length, first + blocks
        return out


# ---------------------------------------------------------------------------- aggregator
class UniformAverage(StatelessAggregator):
    """The unweighted mean of the decoded client states (the authors' code)."""

    name: ClassVar[str] = "uniform-average"

    def aggregate(
        self, global_state: State, updates: Sequence[ClientUpdate], server_round: int
    ) -> Aggregate:
        return Aggregate(weighted_average([u.state for u in updates], [1] * len(updates)))


# ---------------------------------------------------------------------------- options
def _bits_problem(value: str) -> str | None:
    if value == "":
        return None  # taken from the method's preset
    low, high = BITS
    if not value.isdigit() or not low <= int(value) <= high:
        return f"lpt-bits must be an integer in {low}..{high} (sign included), got {value!r}"
    return None


def _lambda_problem(value: str) -> str | None:
    if value == "":
        return None
    try:
        lam = float(value)
    except ValueError:
        return f"lpt-ma-lambda must be a number in [0, 1), got {value!r}"
    return lambda_problem("lpt-ma-lambda", lam)


@dataclass(frozen=True)
class LPTSettings(Settings):
    """LPT-FL's keys (``""``: the preset's)."""

    bits: str = setting(
        "lpt-bits",
        "",
        "bits per value of the block floating-point grid, sign included",
        _bits_problem,
        preset=True,
    )
    ma_lambda: str = setting(
        "lpt-ma-lambda",
        "",
        "λ of the server moving average w̄ ← λ·w̄ + (1 − λ)·w_agg (0 = none)",
        _lambda_problem,
        preset=True,
    )
    linear_block: str = setting(
        "lpt-linear-block",
        "element",
        "exponents of a Linear weight: one per element (the authors' code) or per output row",
        one_of("lpt-linear-block", LINEAR_BLOCKS),
        variant=True,
    )
    points: str = setting(
        "lpt-points",
        "authors",
        "where activations and errors are quantized: authors (after every conv, activation and "
        "pooling and after the classifier) or conv-linear-io (input and output of every "
        "conv/linear, before issue 34)",
        one_of("lpt-points", POINTS),
        variant=True,
    )
    downlink: str = setting(
        "lpt-downlink",
        "fp32",
        "downlink: fp32 (the authors' code) or bfp (Q(w̄), stochastic, as the paper describes)",
        one_of("lpt-downlink", ("fp32", "bfp")),
        variant=True,
    )
    average: str = setting(
        "lpt-average",
        "uniform",
        "server average: uniform (the authors' code) or nk",
        one_of("lpt-average", ("uniform", "nk")),
        variant=True,
    )


@dataclass(frozen=True)
class LPTFamily(Family[LPTSettings]):
    """LPT-FL: block floating-point local training with its own Adam step, b-bit block
    floating point up, the uniform average and the server moving average."""

    def components(self, settings: LPTSettings, run: RunView) -> Components:
        return Components(
            quantizer="block-fp-training",
            codec="block-fp",
            aggregator="uniform-average" if settings.average == "uniform" else "average",
            downlink="block-fp" if settings.downlink == "bfp" else "fp32",
            moving_average=float(settings.ma_lambda or 0.0),
        )

    def quantizer(self, settings: LPTSettings, run: RunView) -> BlockFPTraining:
        return BlockFPTraining(int(settings.bits), settings.linear_block, settings.points)

    def codec(self, settings: LPTSettings, run: RunView) -> BlockFPCodec:
        return BlockFPCodec(int(settings.bits), settings.linear_block)

    def downlink_codec(self, settings: LPTSettings, run: RunView) -> Codec:
        return self.codec(settings, run) if settings.downlink == "bfp" else Float32Codec()

    def aggregator(
        self, settings: LPTSettings, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> Aggregator:
        return UniformAverage() if settings.average == "uniform" else Average(quantized)

    def component_problems(self, settings: LPTSettings, run: RunView) -> list[str]:
        """The grid needs its bits (a preset's or given); the moving average is
        ``lpt-ma-lambda``."""
        p = []
        if settings.bits == "":
            p.append("lpt-bits must be set (e.g. 8) for an LPT-FL method without a preset")
        if run.moving_average > 0:
            p.append("moving-average applies to the other methods: LPT-FL uses lpt-ma-lambda")
        return p

    def optimizer(self, settings: LPTSettings) -> str:
        """Low-precision Adam without an FP32 master copy (``BlockFPTraining.local_optimizer``)."""
        return "adam"


_LI = 'Li et al., "Low Precision Local Training is Enough for FL", NeurIPS 2024'
LPT = LPTFamily(
    name="lpt",
    label="LPT-FL",
    marker="^",
    reference=_LI,
    settings_type=LPTSettings,
    presets=tuple(
        Preset(name, label, color, _LI, LPTSettings(bits, ma))
        for name, label, color, bits, ma in (
            ("lpt8", "LPT-FL 8-bit", "darkgreen", "8", "0.9"),
            ("lpt6", "LPT-FL 6-bit", "darkorange", "6", "0.9"),
            ("lpt8-noma", "LPT-FL 8-bit, no MA", "slateblue", "8", "0"),
        )
    ),
    custom=Preset(
        "lpt-custom", "LPT-FL custom", "tab:gray", "LPT-FL settings no preset names", LPTSettings()
    ),
)
"""LPT-FL (Li et al., NeurIPS 2024): lpt8, lpt6, lpt8-noma."""
