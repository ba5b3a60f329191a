"""Quantization-aware training simulating on-device FP8 training (Wang et al. 2024,
arXiv:2407.02610, §3.3, §5.2, Fig. 3).

``prepare_qat(model, config)`` converts, in place, every ``nn.Conv1d``, ``nn.Conv2d`` and
``nn.Linear`` (exact types) into its QAT subclass (``QConv1d``, ``QConv2d``, ``QLinear``) and every
``fp8fl.models.attention.SelfAttention`` into ``QSelfAttention``. The objects stay the same (their class
is swapped), so weights, hooks and state names are kept; each only gains 0-d float32 parameters:

- a weight layer ``L`` gains ``L.weight_alpha`` (α, initialised to max|w|) and ``L.input_beta``
  (β); its forward is ``layer(Q(x; β), Q(w; α)) + bias``; the bias, any norm and the activation
  that follow are FP32 (Fig. 3), and the next layer's β quantizes the result again;
- an attention module ``A`` gains ``A.q_beta``, ``A.k_beta`` (operands of q·kᵀ), ``A.probs_beta``
  and ``A.v_beta`` (operands of softmax(·)·v); the scaling by 1/√d and the softmax are FP32 (§5.2).

Each QAT module holds its ``QuantConfig`` in ``qat_config``, which may be swapped for another (for
example to evaluate a stochastic-rounding model with nearest rounding).

So ``state_dict`` = the FP32 model's entries, in the same order, plus the α/β entries, each right
after its module's own parameters. Quantized weights are exactly the ``.weight`` of the QAT weight
layers (``quantized_weight_names``; the α that goes with one is ``alpha_name(name)``). Biases, norm
parameters, KWT's CLS token and position embedding stay FP32. Create the optimizer after
``prepare_qat`` so that it sees α and β, which are learned like any other parameter.

β starts as NaN, meaning "not calibrated": ``calibrate(model, batch)`` sets each β to max|x| of the
tensor it clips, from one FP32 forward pass, and a quantized forward on an uncalibrated model raises
``RuntimeError`` (a silently wrong β would clip every activation). A received β is calibrated too.

α and β must stay positive, but an optimizer step may push one to or below zero. A forward that
finds one below ``MIN_RANGE`` raises it to ``MIN_RANGE`` in place before use; the stored value is
then still exactly the clipping value used (and sent on the wire). ``clamp_ranges_`` does the same
for all of them, for a model that is sent right after its last optimizer step.

Which tensors are FP8 in each model of ``fp8fl.models.architectures`` (the full table is in docs/qat.md); the
share is that of the FP8 weights among all parameters. Everything else is FP32: biases,
GroupNorm/LayerNorm parameters, KWT's ``cls_token`` and ``pos_embedding``.

- lenet (99.91 %): conv1, conv2, fc1, fc2, fc3 and their 5 inputs.
- resnet18 (99.91 %): stem, 16 block convs, 3 shortcut 1×1 convs, fc; their 21 inputs.
- matchboxnet (97.98 %): 5 depthwise, 5 pointwise, 3 residual 1×1 and 1 k1 convs, classifier;
  their 15 inputs.
- kwt1 (97.65 %): embed, head.1 and per layer q, k, v, out, mlp.0, mlp.2 (74); their 74 inputs;
  per layer the 4 matmul operands q, k, probs, v (48).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from fp8fl.models.attention import SelfAttention
from fp8fl.models.convolution import conv2d
from fp8fl.numerics.formats import E4M3, FloatFormat
from fp8fl.numerics.quant import fake_quant

__all__ = [
    "MIN_RANGE",
    "ROUNDINGS",
    "ConvOp",
    "LinearOp",
    "QATModule",
    "QConv1d",
    "QConv2d",
    "QLinear",
    "QSelfAttention",
    "QuantConfig",
    "Rounding",
    "alpha_name",
    "calibrate",
    "clamp_ranges_",
    "is_calibrated",
    "prepare_qat",
    "quantized_weight_names",
    "range_parameter_names",
]

Rounding = Literal["nearest", "stochastic", "none"]
ROUNDINGS: tuple[str, ...] = get_args(Rounding)
MIN_RANGE = 1e-6
"""Smallest α/β used by a forward pass; far below any real weight or activation range."""


@dataclass(frozen=True)
class QuantConfig:
    """The FP8 format of the QAT forward pass and its rounding.

    ``rounding``: "nearest" (deterministic QAT, as in the paper), "stochastic" (unbiased, for
    ablations), or "none" (every QAT module passes FP32 through: exactly the FP32 model).
    ``fmt`` may also be given by name ("e4m3"); it is stored as a ``FloatFormat``.
    """

    fmt: FloatFormat = E4M3
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        if isinstance(self.fmt, str):
            object.__setattr__(self, "fmt", FloatFormat.from_name(self.fmt))
        if not isinstance(self.fmt, FloatFormat):
            raise TypeError(
                f"QuantConfig.fmt must be a FloatFormat or a name such as 'e4m3', "
                f"got {type(self.fmt).__name__}"
            )
        if not isinstance(self.rounding, str) or self.rounding not in ROUNDINGS:
            raise ValueError(
                f"QuantConfig.rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}"
            )


class QATModule(nn.Module):
    """Base of the QAT modules: owns the 0-d range parameters ``RANGES`` and quantizes with them."""

    RANGES: ClassVar[tuple[str, ...]] = ()
    qat_config: QuantConfig
    qat_name: str
    calibrating: bool

    def setup_qat(self, config: QuantConfig, name: str) -> None:
        """Add the range parameters (NaN: unset) to a module whose class was just swapped."""
        self.qat_config, self.qat_name, self.calibrating = config, name, False
        device = next(self.parameters()).device
        for range_name in self.RANGES:
            value = torch.full((), math.nan, dtype=torch.float32, device=device)
            self.register_parameter(range_name, nn.Parameter(value))

    def quantize(self, x: torch.Tensor, range_name: str) -> torch.Tensor:
        """``fake_quant(x)`` clipped at the parameter ``range_name``; ``x`` itself when calibrating
        or with rounding "none"."""
        if self.calibrating or self.qat_config.rounding == "none":
            return x
        clip = getattr(self, range_name)
        value = clip.item()
        if math.isnan(value):
            raise RuntimeError(
                f"{_join(self.qat_name, range_name)} is not calibrated (NaN): run "
                "fp8fl.models.qat.calibrate(model, batch) once before using a QAT model"
            )
        if value < MIN_RANGE:
            _clamp_(clip)
        stochastic = self.qat_config.rounding == "stochastic"
        return fake_quant(x, clip, self.qat_config.fmt, stochastic=stochastic)

    def quantize_input(self, x: torch.Tensor, beta_name: str) -> torch.Tensor:
        """``quantize`` for an activation; while calibrating, first record β = max|x|."""
        if self.calibrating:
            with torch.no_grad():
                getattr(self, beta_name).copy_(x.detach().abs().max().clamp(min=MIN_RANGE))
        return self.quantize(x, beta_name)


class _WeightLayer(QATModule, ABC):
    """Fig. 3: ``layer(Q(x; β), Q(w; α))`` with the layer's own bias, in FP32."""

    RANGES = ("weight_alpha", "input_beta")
    weight: nn.Parameter
    bias: nn.Parameter | None

    def setup_qat(self, config: QuantConfig, name: str) -> None:
        super().setup_qat(config, name)
        with torch.no_grad():
            self.weight_alpha.copy_(self.weight.detach().abs().max().clamp(min=MIN_RANGE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(
            self.quantize_input(x, "input_beta"), self.quantize(self.weight, "weight_alpha")
        )

    @abstractmethod
    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's operation with the given (quantized) weight and its own bias."""


class LinearOp:
    """``apply_weight`` of an ``nn.Linear``: its operation with a given weight and its own bias
    (shared by every weight-quantizing layer class, QAT here and other methods' quantizers)."""

    bias: nn.Parameter | None

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class ConvOp:
    """``apply_weight`` of an ``nn.Conv1d`` / ``nn.Conv2d`` (its padding, stride and bias); a
    zero-padded 2-D one goes through ``convolution.conv2d``, whose input gradient is fast for an
    image model's first layer."""

    bias: nn.Parameter | None

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if (
            isinstance(self, nn.Conv2d)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            padding = (self.padding[0], self.padding[1])
            return conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return self._conv_forward(x, weight, self.bias)  # type: ignore[attr-defined]


class QLinear(LinearOp, _WeightLayer, nn.Linear):
    pass


class QConv1d(ConvOp, _WeightLayer, nn.Conv1d):
    pass


class QConv2d(ConvOp, _WeightLayer, nn.Conv2d):
    pass


class QSelfAttention(QATModule, SelfAttention):
    """Self-attention whose q·kᵀ and softmax(·)·v matmuls take FP8 operands, each with its β."""

    RANGES = ("q_beta", "k_beta", "probs_beta", "v_beta")

    def matmul_input(self, x: torch.Tensor, operand: str) -> torch.Tensor:
        return self.quantize_input(x, f"{operand}_beta")


QAT_CLASSES: dict[type[nn.Module], type[QATModule]] = {
    nn.Linear: QLinear,
    nn.Conv1d: QConv1d,
    nn.Conv2d: QConv2d,
    SelfAttention: QSelfAttention,
}


def prepare_qat(model: nn.Module, config: QuantConfig | None = None) -> nn.Module:
    """Convert ``model`` to QAT **in place** and return it (deep-copy first to keep the FP32 one).

    α is set to max|w| of each weight; β is left unset until ``calibrate``.
    """
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    if _qat_modules(model):
        raise ValueError("model is already prepared for QAT")
    converted = 0
    for name, module in model.named_modules():
        qat_class = QAT_CLASSES.get(type(module))
        if qat_class is not None:
            module.__class__ = qat_class
            module.setup_qat(config, name)  # type: ignore[attr-defined]
            converted += 1
    if not converted:
        raise ValueError(
            "model has no nn.Conv1d, nn.Conv2d, nn.Linear or SelfAttention to quantize"
        )
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batch: torch.Tensor) -> None:
    """Set every β of a QAT model to max|x| of the tensor it clips, from one FP32 forward of
    ``batch`` in eval mode (α is left as it is). The modules' train/eval modes are restored."""
    modules = _qat_modules(model)
    if not modules:
        raise ValueError("model has no QAT modules: call prepare_qat(model, config) first")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for module in modules:
        module.calibrating = True
        for name in _betas(module):
            getattr(module, name).fill_(math.nan)
    try:
        model(batch)
    finally:
        for module in modules:
            module.calibrating = False
        for m, training in modes:
            m.training = training
    missing = [
        _join(m.qat_name, b) for m in modules for b in _betas(m) if math.isnan(getattr(m, b).item())
    ]
    if missing:
        raise RuntimeError(f"the calibration forward pass never reached {', '.join(missing)}")


def is_calibrated(model: nn.Module) -> bool:
    """Whether every β of the QAT modules of ``model`` is set (not NaN)."""
    return not any(math.isnan(getattr(m, b).item()) for m in _qat_modules(model) for b in _betas(m))


@torch.no_grad()
def clamp_ranges_(model: nn.Module) -> None:
    """Raise every α/β below ``MIN_RANGE`` to it, in place, as a forward pass would."""
    for module in _qat_modules(model):
        for name in module.RANGES:
            _clamp_(getattr(module, name))


def quantized_weight_names(model: nn.Module) -> list[str]:
    """``state_dict`` keys of the weights that travel as FP8 codes, in ``state_dict`` order."""
    weights = {
        _join(name, "weight")
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, _WeightLayer)
    }
    return [key for key in model.state_dict(keep_vars=True) if key in weights]


def alpha_name(weight_name: str) -> str:
    """The ``state_dict`` key of the α that clips quantized weight ``weight_name``."""
    if weight_name != "weight" and not weight_name.endswith(".weight"):
        raise ValueError(f"{weight_name!r} is not the name of a layer weight ('<layer>.weight')")
    return weight_name + "_alpha"


def range_parameter_names(model: nn.Module) -> list[str]:
    """``state_dict`` keys of every α and β, in ``state_dict`` order (e.g. to exempt them from
    weight decay)."""
    ranges = {
        _join(name, r)
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, QATModule)
        for r in m.RANGES
    }
    return [key for key in model.state_dict(keep_vars=True) if key in ranges]


def _qat_modules(model: nn.Module) -> list[QATModule]:
    return [m for m in model.modules() if isinstance(m, QATModule)]


def _betas(module: QATModule) -> list[str]:
    return [name for name in module.RANGES if name.endswith("_beta")]


def _clamp_(clip: torch.Tensor) -> None:
    with torch.no_grad():
        clip.clamp_(min=MIN_RANGE)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
