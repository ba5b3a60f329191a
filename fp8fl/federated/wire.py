"""A model's state as the arrays of one message — the same layout for downlink and uplink.

A message carries the arrays of the run's codec, then two float32 arrays, whatever the model:

1. the codec's arrays for the quantized weights (``qat.quantized_weight_names``): for the FP32
   codec their float32 values, for the minifloat codec each tensor's codes in its own α, the byte
   streams concatenated (one byte per weight in E4M3), for other codecs what they define;
2. ``scales``: every α and β (float32), in state order;
3. ``dense``: every other tensor (biases, norms, embeddings), float32, concatenated.

Both ends derive the layout from the same model, so shapes and names never travel; few arrays
also keep Flower's per-array overhead (about 480 bytes each) negligible for models with hundreds
of α/β. ``unpack`` checks everything before a value is used and raises ``WireError`` naming the
problem: a bad update is rejected, never averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fp8fl.methods.fp8 import concat_float32, split_float32
from fp8fl.methods.seams import ArraySpec, Codec
from fp8fl.models.qat import quantized_weight_names, range_parameter_names

__all__ = ["WIRE_VERSION", "StateLayout", "WireError"]

WIRE_VERSION = 1
FLOAT32 = np.dtype(np.float32)


class WireError(ValueError):
    """A message that does not match the layout both ends agreed on."""


@dataclass(frozen=True)
class StateLayout:
    """Which state entries travel through the codec, as scales (α/β) and as dense FP32 tensors."""

    shapes: dict[str, tuple[int, ...]]  # every state entry, in state_dict order
    quantized: tuple[str, ...]
    scales: tuple[str, ...]
    dense: tuple[str, ...]

    @classmethod
    def from_model(cls, model: nn.Module, quantized: list[str] | None = None) -> StateLayout:
        """The layout of ``model``; ``quantized`` names what the codec carries (default: the
        weights of its QAT layers)."""
        state = model.state_dict()
        quantized = tuple(quantized_weight_names(model) if quantized is None else quantized)
        scales = tuple(range_parameter_names(model))
        taken = set(quantized) | set(scales)
        dense = tuple(name for name in state if name not in taken)
        return cls({k: tuple(v.shape) for k, v in state.items()}, quantized, scales, dense)

    # ------------------------------------------------------------------ sizes
    def numel(self, names: tuple[str, ...]) -> int:
        return sum(math.prod(self.shapes[n]) for n in names)

    @property
    def quantized_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.shapes[n] for n in self.quantized}

    def array_specs(self, codec: Codec) -> list[ArraySpec]:
        """Every array of a message with ``codec``, in order; their data is what travels."""
        return [
            *codec.array_specs(self.quantized_shapes),
            ArraySpec("scales", FLOAT32, len(self.scales)),
            ArraySpec("dense", FLOAT32, self.numel(self.dense)),
        ]

    def nbytes(self, codec: Codec) -> int:
        """Exact bytes of a message's array data with ``codec`` (without container headers)."""
        return sum(spec.size * spec.dtype.itemsize for spec in self.array_specs(codec))

    # ------------------------------------------------------------------ pack / unpack
    def pack(
        self, state: dict[str, torch.Tensor], codec: Codec, generator: torch.Generator | None = None
    ) -> list[np.ndarray]:
        """The arrays of a message: the codec's, then the scales and the dense tensors."""
        weights = {n: state[n] for n in self.quantized}
        return [
            *codec.encode(weights, state, generator),
            concat_float32([state[n] for n in self.scales]),
            concat_float32([state[n] for n in self.dense]),
        ]

    def unpack(self, arrays: list[np.ndarray], codec: Codec) -> dict[str, torch.Tensor]:
        """Validate a message and return the state it carries (float32 CPU tensors)."""
        return self.unpack_with_side(arrays, codec)[0]

    def unpack_with_side(
        self, arrays: list[np.ndarray], codec: Codec
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``unpack``, and the codec's side information (e.g. quantization errors) apart."""
        specs = self.array_specs(codec)
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(specs):
            count = len(arrays) if isinstance(arrays, (list, tuple)) else type(arrays).__name__
            names = ", ".join(spec.name for spec in specs)
            raise WireError(f"expected {len(specs)} arrays ({names}), got {count}")
        checked = [_checked(a, spec) for a, spec in zip(arrays, specs)]
        *coded, scales, dense = checked
        state: dict[str, torch.Tensor] = {}
        for name, value in zip(self.scales, scales.tolist()):
            if not (math.isfinite(value) and value > 0):
                raise WireError(
                    f"range parameter {name} is {value}: α and β must be positive and finite"
                )
            state[name] = torch.tensor(value, dtype=torch.float32)
        _require_finite(dense, "dense")
        state.update(split_float32(dense, {n: self.shapes[n] for n in self.dense}))
        try:
            decoded = codec.decode(coded, self.quantized_shapes, state)
        except ValueError as err:
            raise WireError(str(err)) from None
        state.update(decoded)
        side = {k: v for k, v in decoded.items() if k not in self.shapes}
        return {name: state[name] for name in self.shapes}, side


def _checked(array: object, spec: ArraySpec) -> np.ndarray:
    name = spec.name
    if not isinstance(array, np.ndarray):
        raise WireError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != spec.dtype:
        raise WireError(f"{name}: expected dtype {spec.dtype}, got {array.dtype}")
    if array.ndim != 1:
        raise WireError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size != spec.size:
        kind = "truncated" if array.size < spec.size else "oversized"
        raise WireError(f"{name}: {kind}, {array.size} elements where the model needs {spec.size}")
    return array


def _require_finite(values: np.ndarray, name: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise WireError(f"{name}: {bad} non-finite value(s) (NaN or inf)")
