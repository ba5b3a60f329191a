"""Per-layer formats: the run-config key ``layer-formats`` gives named weight layers their own
minifloat format, e.g. ``"fc1:e2m1,conv1:e4m3"``; the other layers use ``format``.

Most of a model's weights may sit in one layer (LeNet's fc1 holds 614,400 of its 797,248
quantized weights), so that layer's format sets most of a message's size. In a run of the FP8
family, a named layer trains with QAT in its format (its weight and its input, with the run's
``qat`` rounding) and its weight travels in it both ways (with the run's ``wire`` rounding);
ServerOptimize and the round records use each tensor's own format. The names are the model's
QAT weight layers (``layer_names``), checked when the run config is validated.

``downlink-format`` (also here) replaces ``format`` for the downlink's tensors that
``layer-formats`` does not name: the server may broadcast in a wider format than the clients
send (e.g. E3M2 down, E4M3 up) or a narrower one.
"""

from __future__ import annotations

from functools import cache

import torch

from fp8fl.federated.seams import RunView
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import prepare_qat, quantized_weight_names
from fp8fl.numerics.formats import FloatFormat

__all__ = [
    "LayerFormats",
    "downlink_format_problems",
    "layer_formats_problems",
    "layer_names",
    "parse_layer_formats",
]

LayerFormats = tuple[tuple[str, FloatFormat], ...]
"""(layer name, its format) pairs, in the order given: hashable, for frozen components."""


def _parse(value: str) -> tuple[LayerFormats, list[str]]:
    """The pairs of ``value`` and every problem found in it."""
    if not value.strip():
        return (), []
    pairs: list[tuple[str, FloatFormat]] = []
    problems: list[str] = []
    for item in value.split(","):
        layer, sep, name = (part.strip() for part in item.partition(":"))
        if not sep or not layer or ":" in name:
            problems.append(f"layer-formats: expected 'layer:format', got {item.strip()!r}")
            continue
        try:
            fmt = FloatFormat.from_name(name.lower())
        except ValueError as err:
            problems.append(f"layer-formats: {layer}: {err}")
            continue
        if any(seen == layer for seen, _ in pairs):
            problems.append(f"layer-formats names {layer} twice")
        pairs.append((layer, fmt))
    return tuple(pairs), problems


def parse_layer_formats(value: str) -> LayerFormats:
    """The (layer, format) pairs of a ``layer-formats`` value (``""``: none); raises
    ``ValueError`` listing every problem."""
    pairs, problems = _parse(value)
    if problems:
        raise ValueError("; ".join(problems))
    return pairs


@cache
def layer_names(model: str) -> tuple[str, ...]:
    """The QAT weight layers of ``model`` (``conv1``, ``fc1``, ...), in state order; built on
    the meta device, so no weights are allocated."""
    with torch.device("meta"):
        prepared = prepare_qat(build_model(model, 10))
    return tuple(name.removesuffix(".weight") for name in quantized_weight_names(prepared))


def layer_formats_problems(value: str, qat: str, run: RunView) -> list[str]:
    """What is wrong with a ``layer-formats`` value in a run of the FP8 family with ``qat``."""
    pairs, problems = _parse(value)
    if not pairs and not problems:
        return []
    if qat == "none":
        return [
            "layer-formats needs a method of the FP8 family with QAT (qat = nearest or "
            f"stochastic): its layers train and travel in minifloat formats; {run.method!r} "
            "has no QAT layers",
            *problems,
        ]
    try:
        known = layer_names(run.model)
    except ValueError:
        return problems  # an unknown model is reported on its own
    unknown = [layer for layer, _ in pairs if layer not in known]
    if unknown:
        problems.append(
            f"layer-formats names {', '.join(unknown)}, not a quantized layer of "
            f"{run.model} (its layers: {', '.join(known)})"
        )
    return problems


def downlink_format_problems(value: str, wire: str, run: RunView) -> list[str]:
    """What is wrong with a ``downlink-format`` value in a run of the FP8 family with ``wire``."""
    if not value:
        return []
    problems = []
    try:
        FloatFormat.from_name(value)
    except ValueError as err:
        problems.append(f"downlink-format: {err}")
    if wire == "fp32":
        problems.append(
            "downlink-format needs a method of the FP8 family with a minifloat wire (wire = "
            f"nearest or stochastic); {run.method!r} sends float32 or another codec"
        )
    return problems
