"""Every method and component by name: the one place a method is registered.

A ``MethodSpec`` names a method's components (or derives them from its run-config settings), its
label and colour for tables and plots, where it comes from, and the run-config values its preset
sets. Config validation, the sweep, the report and the README's method table are generated from
or checked against ``METHODS`` and the component tables below.

Adding a method: write its components in one module of ``fp8fl/methods/`` (see
``docs/architecture.md``), then add them to ``QUANTIZERS`` / ``CODECS`` / ``AGGREGATORS`` and its
presets to ``METHODS`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fp8fl.federated.layer_formats import parse_layer_formats
from fp8fl.federated.seams import Aggregator, Codec, Components, Option, Quantizer, RunView
from fp8fl.methods.clipped_uniform import (
    AVERAGE_OPTIONS,
    BITS_OPTION,
    CODEC_OPTIONS,
    GRID_OPTION,
    InverseMSEAverage,
    cq_components,
    downlink_codec_from,
    layer_problems,
    uniform_qat_from,
    uplink_codec_from,
)
from fp8fl.methods.fp8 import (
    SERVER_OPT_OPTIONS,
    Average,
    Float32Codec,
    FullPrecision,
    MinifloatCodec,
    MinifloatQAT,
    fp8_components,
    minifloat_codec,
    server_optimize_from,
)
from fp8fl.methods.lpt import AVERAGE_OPTIONS as LPT_AVERAGE_OPTIONS
from fp8fl.methods.lpt import BITS_OPTION as LPT_BITS_OPTION
from fp8fl.methods.lpt import CODEC_OPTIONS as LPT_CODEC_OPTIONS
from fp8fl.methods.lpt import (
    LINEAR_BLOCK_OPTION,
    UniformAverage,
    block_fp_codec_from,
    block_fp_training_from,
    lpt_components,
    lpt_problems,
)
from fp8fl.methods.lpt import (
    POINTS_OPTION as LPT_POINTS_OPTION,
)
from fp8fl.methods.moving_average import MOVING_AVERAGE_OPTION, MovingAverage
from fp8fl.methods.qafel import AGGREGATOR_OPTIONS as BUFFERED_OPTIONS
from fp8fl.methods.qafel import CODEC_OPTIONS as QAFEL_CODEC_OPTIONS
from fp8fl.methods.qafel import (
    MINMAX_OPTION,
    START_OPTION,
    DeltaTraining,
    buffered_aggregator_from,
    buffered_problems,
    delta_codec,
    qafel_components,
)
from fp8fl.methods.robust import ROBUST_OPTIONS, robust_from
from fp8fl.numerics.formats import FloatFormat
from fp8fl.numerics.quant import Rounding

__all__ = [
    "AGGREGATORS",
    "CODECS",
    "CUSTOMS",
    "FAMILIES",
    "METHODS",
    "OPTIONS",
    "QUANTIZERS",
    "Built",
    "ComponentEntry",
    "MethodSpec",
    "build",
    "component_problems",
    "family_keys",
    "family_switches",
    "method_spec",
    "own_optimizer",
]


@dataclass(frozen=True)
class ComponentEntry:
    """How to build a component from the run config, and which run-config keys it reads: core
    keys (``reads``) and keys of its own (``options``, validated by their checks); ``validate``
    finds problems that need more than one value (e.g. a list of bits against the model). A
    quantizer that brings its own local step names its optimizer (``optimizer``): the run's
    ``optimizer`` must then be ``auto`` (which resolves to it) or that one."""

    factory: Callable[..., Any]
    summary: str
    reads: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    validate: Callable[[RunView], list[str]] | None = None
    optimizer: str | None = None


QUANTIZERS: dict[str, ComponentEntry] = {
    "fp32": ComponentEntry(lambda config: FullPrecision(), "FP32 local training"),
    "minifloat-qat": ComponentEntry(
        lambda config: MinifloatQAT(
            Rounding.named(config.fmt, config.qat), parse_layer_formats(config.layer_formats)
        ),
        "minifloat QAT, per-tensor learnable α/β (Wang et al. 2024, §3.3)",
        reads=("qat", "format", "layer-formats"),
    ),
    "uniform-qat": ComponentEntry(
        uniform_qat_from,
        "QAT on the B-bit OCTAV-clipped uniform grid (Bozorgasl & Chen, arXiv:2405.13365)",
        options=(BITS_OPTION, GRID_OPTION),
        validate=layer_problems,
    ),
    "block-fp-training": ComponentEntry(
        block_fp_training_from,
        "block floating-point local training, no FP32 master copy (Li et al., NeurIPS 2024)",
        reads=("lr", "weight-decay"),
        options=(LPT_BITS_OPTION, LINEAR_BLOCK_OPTION, LPT_POINTS_OPTION),
        validate=lpt_problems,
        optimizer="adam",
    ),
    "fp32-deltas": ComponentEntry(
        lambda config: DeltaTraining(),
        "FP32 local training; every float tensor of Δ through the codec (arXiv:2410.00242)",
    ),
}
CODECS: dict[str, ComponentEntry] = {
    "fp32": ComponentEntry(lambda config: Float32Codec(), "float32 weights"),
    "minifloat": ComponentEntry(
        lambda config: minifloat_codec(config, config.fmt),
        "minifloat codes in each tensor's α, nearest or stochastic (Wang et al. 2024, §4)",
        reads=("wire", "format", "layer-formats"),
    ),
    "minifloat-downlink": ComponentEntry(
        lambda config: minifloat_codec(config, FloatFormat.from_name(config.downlink_format)),
        "the minifloat codec in downlink-format, for the downlink",
        reads=("wire", "downlink-format", "layer-formats"),
    ),
    "clipped-uniform": ComponentEntry(
        uplink_codec_from,
        "B-bit codes, clip s and quantization MSE per layer (Bozorgasl & Chen, arXiv:2405.13365)",
        reads=("cq-bits", "cq-grid"),
        options=CODEC_OPTIONS,
    ),
    "clipped-uniform-down": ComponentEntry(
        downlink_codec_from,
        "the clipped-uniform codec with stochastic rounding, for a quantized downlink",
        reads=("cq-bits", "cq-downlink", "cq-grid"),
    ),
    "block-fp": ComponentEntry(
        block_fp_codec_from,
        "b-bit block floating-point mantissas and int8 exponents (Li et al., NeurIPS 2024)",
        reads=("lpt-bits",),
        options=LPT_CODEC_OPTIONS,
    ),
    "qafel-uplink": ComponentEntry(
        lambda config: delta_codec(config.option("qafel-uplink"), config),
        "Q_c of a client's Δ: fp32, QSGD, min-max or FP8 (Ortega & Jafarkhani, arXiv:2410.00242)",
        reads=("format",),
        options=(QAFEL_CODEC_OPTIONS[0], MINMAX_OPTION),
    ),
    "qafel-downlink": ComponentEntry(
        lambda config: delta_codec(config.option("qafel-downlink"), config),
        "Q_s of the broadcast x - x̂ (Ortega & Jafarkhani, arXiv:2410.00242)",
        reads=("format", "qafel-minmax"),
        options=(QAFEL_CODEC_OPTIONS[1], START_OPTION),
    ),
}
AGGREGATORS: dict[str, ComponentEntry] = {
    "average": ComponentEntry(
        lambda config, quantized, codec: Average(
            quantized, codec.roundings(quantized) if isinstance(codec, MinifloatCodec) else None
        ),
        "n_k-weighted average (Wang et al. 2024, Alg. 3)",
    ),
    "server-optimize": ComponentEntry(
        lambda config, quantized, codec: server_optimize_from(
            config, quantized, codec.roundings(quantized)
        ),
        "ServerOptimize, UQ+ (Wang et al. 2024, Alg. 2, eq. 7-8)",
        reads=("server-opt",),
        options=SERVER_OPT_OPTIONS,
    ),
    "inverse-mse": ComponentEntry(
        lambda config, quantized, codec: InverseMSEAverage(
            quantized, config.option("cq-mse-floor")
        ),
        "per-layer inverse-MSE average (Bozorgasl & Chen, arXiv:2405.13365)",
        options=AVERAGE_OPTIONS,
    ),
    "uniform-average": ComponentEntry(
        lambda config, quantized, codec: UniformAverage(),
        "unweighted average (Li et al., NeurIPS 2024, the authors' code)",
        options=LPT_AVERAGE_OPTIONS,
    ),
    "buffered": ComponentEntry(
        lambda config, quantized, codec: buffered_aggregator_from(
            config, build_downlink_codec(config)
        ),
        "buffered server step with hidden state (FedBuff / QAFeL, arXiv:2410.00242)",
        options=BUFFERED_OPTIONS,
        validate=buffered_problems,
    ),
}
SERVER_LOOPS = ("sync", "buffered-simulated", "buffered-real")
"""Server loops by name; their Flower code lives in ``strategies.loops``."""


@dataclass(frozen=True)
class MethodSpec:
    """A method: its components, how tables and plots show it, and what its preset sets."""

    name: str
    label: str
    color: str
    reference: str
    components: Components | Callable[[RunView], Components]
    settings: Mapping[str, Any] = field(default_factory=dict)
    family: str = "fp8"  # presets of one family differ only in their settings

    def components_for(self, config: RunView) -> Components:
        return self.components(config) if callable(self.components) else self.components

    def reads(self, config: RunView) -> tuple[str, ...]:
        """The run-config keys its components read (beyond the keys every run reads)."""
        parts = self.components_for(config)
        entries = (
            QUANTIZERS[parts.quantizer],
            CODECS[parts.codec],
            AGGREGATORS[parts.aggregator],
        )
        keys = [
            *self.settings,
            *(k for e in entries for k in (*e.reads, *(o.key for o in e.options))),
        ]
        return tuple(dict.fromkeys(keys))


def _fp8(
    name: str, label: str, color: str, reference: str, qat: str, wire: str, opt: str
) -> MethodSpec:
    switches = {"qat": qat, "wire": wire, "server-opt": opt}
    return MethodSpec(name, label, color, reference, fp8_components, switches)


_WANG = "Wang et al. 2024, arXiv:2407.02610"
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        _fp8(
            "fp32",
            "FP32 FedAvg",
            "black",
            f"FP32 FedAvg ({_WANG}, Table 1)",
            "none",
            "fp32",
            "average",
        ),
        _fp8(
            "uq",
            "FP8FedAvg-UQ",
            "tab:blue",
            f"{_WANG}, Table 1",
            "nearest",
            "stochastic",
            "average",
        ),
        _fp8(
            "uq+", "FP8FedAvg-UQ+", "tab:green", f"{_WANG}, Table 1", "nearest", "stochastic", "mse"
        ),
        _fp8(
            "bq",
            "BQ (det. comm.)",
            "tab:red",
            f"det. CQ ({_WANG}, Table 3), BQ (Fig. 4)",
            "nearest",
            "nearest",
            "average",
        ),
        _fp8(
            "qat-fp32wire",
            "det. QAT, FP32 comm.",
            "tab:purple",
            f"det. QAT ({_WANG}, Table 2)",
            "nearest",
            "fp32",
            "average",
        ),
        _fp8(
            "randqat-fp32wire",
            "rand. QAT, FP32 comm.",
            "tab:brown",
            f"rand. QAT ({_WANG}, Table 2)",
            "stochastic",
            "fp32",
            "average",
        ),
    )
}


def _presets(
    family: str,
    components: Callable[[RunView], Components],
    reference: str,
    keys: tuple[str, ...],
    rows: tuple[tuple[str, ...], ...],
) -> None:
    """Register a family's presets, each row (name, label, colour, *values of ``keys``)."""
    METHODS.update(
        (
            name,
            MethodSpec(name, label, color, reference, components, dict(zip(keys, values)), family),
        )
        for name, label, color, *values in rows
    )


_presets(
    "cq",
    cq_components,
    "Bozorgasl & Chen, arXiv:2405.13365",
    ("cq-bits", "cq-rounding", "cq-average"),
    (
        ("cq8", "CQ 8-bit", "tab:olive", "8", "stochastic", "inverse-mse"),
        ("cq4", "CQ 4-bit", "tab:orange", "4", "stochastic", "inverse-mse"),
        ("cq4-det", "CQ 4-bit, det.", "tab:pink", "4", "nearest", "inverse-mse"),
        ("cq2", "CQ 2-bit", "tab:cyan", "2", "stochastic", "inverse-mse"),
    ),
)
_presets(
    "lpt",
    lpt_components,
    'Li et al., "Low Precision Local Training is Enough for FL", NeurIPS 2024',
    ("lpt-bits", "lpt-ma-lambda"),
    (
        ("lpt8", "LPT-FL 8-bit", "darkgreen", "8", "0.9"),
        ("lpt6", "LPT-FL 6-bit", "darkorange", "6", "0.9"),
        ("lpt8-noma", "LPT-FL 8-bit, no MA", "slateblue", "8", "0"),
    ),
)
_presets(
    "qafel",
    qafel_components,
    'Ortega & Jafarkhani, "Quantized and Asynchronous Federated Learning", arXiv:2410.00242',
    ("qafel-uplink", "qafel-downlink", "qafel-start"),
    (
        ("fedbuff", "FedBuff", "teal", "fp32", "fp32", "hidden"),
        ("qafel", "QAFeL 4/8 (QSGD)", "crimson", "qsgd4", "qsgd8", "hidden"),
        ("qafel-fp8", "QAFeL FP8", "goldenrod", "fp8", "fp8", "hidden"),
        ("qafel-naive", "naive 4/8 (QSGD)", "rosybrown", "qsgd4", "qsgd8", "naive"),
    ),
)
FAMILIES = {"fp8": "FP8", "cq": "clipped-uniform", "lpt": "LPT-FL", "qafel": "QAFeL"}
"""Each family's name in messages."""
CUSTOMS: dict[str, MethodSpec] = {
    "fp8": MethodSpec(
        "custom", "custom", "tab:gray", "a combination of FP8 switches", fp8_components
    ),
    "cq": MethodSpec(
        "cq-custom",
        "CQ custom",
        "tab:gray",
        "clipped-uniform settings no preset names",
        cq_components,
        family="cq",
    ),
    "lpt": MethodSpec(
        "lpt-custom",
        "LPT-FL custom",
        "tab:gray",
        "LPT-FL settings no preset names",
        lpt_components,
        family="lpt",
    ),
    "qafel": MethodSpec(
        "qafel-custom",
        "QAFeL custom",
        "tab:gray",
        "QAFeL settings no preset names",
        qafel_components,
        family="qafel",
    ),
}
"""Per family, the method of settings in a combination no preset names."""

OPTIONS: dict[str, Option] = {
    o.key: o
    for table in (QUANTIZERS, CODECS, AGGREGATORS)
    for entry in table.values()
    for o in entry.options
} | {o.key: o for o in (MOVING_AVERAGE_OPTION, *ROBUST_OPTIONS)}
"""Every component's own run-config keys, and those of the wrappers around any aggregator:
``moving-average`` and the robust rule's (``robust-aggregation``, ``robust-norm-factor``)."""


def method_spec(name: str) -> MethodSpec:
    """A preset, or a family's custom method; raises KeyError for an unknown name."""
    customs = {spec.name: spec for spec in CUSTOMS.values()}
    return METHODS[name] if name in METHODS else customs[name]


def family_keys(family: str) -> tuple[str, ...]:
    """The run-config keys the presets of ``family`` set."""
    keys = [k for spec in METHODS.values() if spec.family == family for k in spec.settings]
    return tuple(dict.fromkeys(keys))


def family_switches(family: str) -> dict[str, Any]:
    """The family's own run-config keys that no preset sets (``lpt-downlink``, ``cq-mse-floor``),
    with their defaults: a run that changes one is a variant of its method, not another setting."""
    preset = set(family_keys(family))
    return {
        key: option.default
        for key, option in OPTIONS.items()
        if key.startswith(f"{family}-") and key not in preset
    }


def own_optimizer(config: RunView) -> str | None:
    """The optimizer of the run's quantizer when it brings its own local step, else None."""
    return QUANTIZERS[config.components.quantizer].optimizer


def component_problems(config: RunView) -> list[str]:
    """What the run's components find wrong with it beyond single values, and an ``optimizer``
    its quantizer would not use (a silent switch would train with another step than the one
    the record names)."""
    parts = config.components
    entries = (QUANTIZERS[parts.quantizer], CODECS[parts.codec], AGGREGATORS[parts.aggregator])
    problems = [p for e in entries if e.validate is not None for p in e.validate(config)]
    own = own_optimizer(config)
    if own is not None and config.optimizer != own:
        problems.append(
            f"{config.method} trains with its quantizer's own {own} step ({parts.quantizer}): "
            f"optimizer must be auto or {own}, got {config.optimizer!r}"
        )
    return problems


@dataclass(frozen=True)
class Built:
    """A run's components, built from its config and the model's layout."""

    quantizer: Quantizer
    codec: Codec  # the uplink's
    downlink_codec: Codec
    aggregator: Aggregator
    server_loop: str


def build_quantizer(config: RunView) -> Quantizer:
    return QUANTIZERS[config.components.quantizer].factory(config)


def build_codec(config: RunView) -> Codec:
    """The uplink's codec."""
    return CODECS[config.components.codec].factory(config)


def build_downlink_codec(config: RunView) -> Codec:
    return CODECS[config.components.downlink_codec].factory(config)


def build(config: RunView, quantized: tuple[str, ...]) -> Built:
    """Every component of ``config``'s method; ``quantized`` names the weights the codec carries."""
    parts = config.components
    codec = build_codec(config)
    aggregator = AGGREGATORS[parts.aggregator].factory(config, quantized, codec)
    aggregator = robust_from(config, aggregator)  # bounds the clients, before any moving average
    if parts.moving_average > 0:
        aggregator = MovingAverage(aggregator, parts.moving_average)
    downlink = build_downlink_codec(config)
    return Built(build_quantizer(config), codec, downlink, aggregator, parts.server_loop)
