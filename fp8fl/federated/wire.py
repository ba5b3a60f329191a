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

With ``lossless`` (the run-config key), every integer array of the codec travels entropy-coded
(``fp8fl.federated.lossless``) and is restored exactly before those checks. With ``lossless =
"context"``, an uplink is coded against a ``Reference``: the integer arrays of the downlink its
client received (``StateLayout.reference``), which the server passes back to ``unpack``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fp8fl.federated.lossless import code_runs, compress, decompress
from fp8fl.federated.seams import ArraySpec, Codec, CodeRun, State
from fp8fl.models.qat import quantized_weight_names, range_parameter_names

__all__ = [
    "WIRE_VERSION",
    "Reference",
    "StateLayout",
    "WireError",
    "concat_float32",
    "split_float32",
]

WIRE_VERSION = 1
FLOAT32 = np.dtype(np.float32)
UINT8 = np.dtype(np.uint8)
Reference = dict[str, np.ndarray]
"""The integer arrays of a downlink message as its codec wrote them, by array name."""


class WireError(ValueError):
    """A message that does not match the layout both ends agreed on."""


@dataclass(frozen=True)
class StateLayout:
    """Which state entries travel through the codec, as scales (α/β) and as dense FP32 tensors."""

    shapes: dict[str, tuple[int, ...]]  # every state entry, in state_dict order
    quantized: tuple[str, ...]
    scales: tuple[str, ...]
    dense: tuple[str, ...]
    lossless: bool = False  # entropy-code the codec's integer arrays

    @classmethod
    def from_model(
        cls, model: nn.Module, quantized: list[str] | None = None, lossless: bool = False
    ) -> StateLayout:
        """The layout of ``model``; ``quantized`` names what the codec carries (default: the
        weights of its QAT layers); ``lossless`` switches the lossless stage on."""
        state = model.state_dict()
        quantized = tuple(quantized_weight_names(model) if quantized is None else quantized)
        scales = tuple(range_parameter_names(model))
        taken = set(quantized) | set(scales)
        dense = tuple(name for name in state if name not in taken)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        return cls(shapes, quantized, scales, dense, lossless)

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
        """Exact bytes of a message's array data with ``codec`` (without container headers), before
        any lossless stage."""
        return sum(spec.size * spec.dtype.itemsize for spec in self.array_specs(codec))

    # ------------------------------------------------------------------ pack / unpack
    def pack(
        self,
        state: dict[str, torch.Tensor],
        codec: Codec,
        generator: torch.Generator | None = None,
        reference: Reference | None = None,
    ) -> list[np.ndarray]:
        """The arrays of a message: the codec's, then the scales and the dense tensors; with
        ``lossless``, integer arrays coded against the downlink ``reference`` when given."""
        weights = {n: state[n] for n in self.quantized}
        arrays = [
            *codec.encode(weights, state, generator),
            concat_float32([state[n] for n in self.scales]),
            concat_float32([state[n] for n in self.dense]),
        ]
        if not self.lossless:
            return arrays
        runs, known = self._code_runs(codec), reference or {}
        return [
            compress(array, runs[spec.name], known.get(spec.name)) if spec.name in runs else array
            for array, spec in zip(arrays, self.array_specs(codec))
        ]

    def _code_runs(self, codec: Codec) -> dict[str, tuple[CodeRun, ...]]:
        return code_runs(codec, self.array_specs(codec), self.quantized_shapes)

    def decompressed(
        self, arrays: list[np.ndarray], codec: Codec, reference: Reference | None = None
    ) -> list[np.ndarray]:
        """The arrays of a message as the codec wrote them: with ``lossless``, every coded array
        decoded, against ``reference`` where the sender coded against it (``WireError`` naming
        the array and tensor when it is corrupt or truncated)."""
        if not self.lossless:
            return arrays
        runs, out, known = self._code_runs(codec), list(arrays), reference or {}
        for i, (array, spec) in enumerate(zip(arrays, self.array_specs(codec))):
            if spec.name in runs:
                blob = _checked_kind(array, spec.name, UINT8)
                try:
                    out[i] = decompress(blob, runs[spec.name], spec, known.get(spec.name))
                except ValueError as err:
                    raise WireError(str(err)) from None
        return out

    def reference(self, arrays: list[np.ndarray], codec: Codec) -> Reference:
        """The integer arrays of a downlink message with ``codec`` (decoded from the lossless
        stage): what an uplink in the same codec is coded against with ``lossless = "context"``."""
        return self._reference(self._checked_arrays(arrays, codec, None), codec)

    def _reference(self, checked: list[np.ndarray], codec: Codec) -> Reference:
        runs = self._code_runs(codec)
        return {s.name: a for a, s in zip(checked, self.array_specs(codec)) if s.name in runs}

    def unpack_received(
        self, arrays: list[np.ndarray], codec: Codec
    ) -> tuple[dict[str, torch.Tensor], Reference]:
        """``unpack`` of a downlink, and its ``reference``, from one decoding of the lossless
        stage (a client codes its uplink against it with ``lossless = "context"``)."""
        checked = self._checked_arrays(arrays, codec, None)
        return self._state(checked, codec)[0], self._reference(checked, codec)

    def unpack(
        self, arrays: list[np.ndarray], codec: Codec, reference: Reference | None = None
    ) -> dict[str, torch.Tensor]:
        """Validate a message and return the state it carries (float32 CPU tensors)."""
        return self.unpack_with_side(arrays, codec, reference)[0]

    def unpack_with_side(
        self, arrays: list[np.ndarray], codec: Codec, reference: Reference | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``unpack``, and the codec's side information (e.g. quantization errors) apart; an
        uplink coded against its downlink needs that downlink's ``reference``."""
        return self._state(self._checked_arrays(arrays, codec, reference), codec)

    def _checked_arrays(
        self, arrays: list[np.ndarray], codec: Codec, reference: Reference | None
    ) -> list[np.ndarray]:
        """The arrays of a message, decoded from the lossless stage, each of its spec's kind
        and size (``WireError`` otherwise)."""
        specs = self.array_specs(codec)
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(specs):
            count = len(arrays) if isinstance(arrays, (list, tuple)) else type(arrays).__name__
            names = ", ".join(spec.name for spec in specs)
            raise WireError(f"expected {len(specs)} arrays ({names}), got {count}")
        arrays = self.decompressed(list(arrays), codec, reference)
        return [_checked(a, spec) for a, spec in zip(arrays, specs)]

    def _state(
        self, checked: list[np.ndarray], codec: Codec
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The state and side information of checked arrays: α/β positive and finite, dense
        tensors finite, the codec's arrays decoded by the codec."""
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
    name, array = spec.name, _checked_kind(array, spec.name, spec.dtype)
    if array.size != spec.size:
        kind = "truncated" if array.size < spec.size else "oversized"
        raise WireError(f"{name}: {kind}, {array.size} elements where the model needs {spec.size}")
    return array


def _checked_kind(array: object, name: str, dtype: np.dtype) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise WireError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise WireError(f"{name}: expected dtype {dtype}, got {array.dtype}")
    if array.ndim != 1:
        raise WireError(f"{name}: expected a 1-D array, got shape {array.shape}")
    return array


def _require_finite(values: np.ndarray, name: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise WireError(f"{name}: {bad} non-finite value(s) (NaN or inf)")


def concat_float32(tensors: list[torch.Tensor]) -> np.ndarray:
    """The tensors flattened into one float32 array, in order (empty for none)."""
    if not tensors:
        return np.empty(0, np.float32)
    return torch.cat([t.detach().float().cpu().reshape(-1) for t in tensors]).numpy()


def split_float32(flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> State:
    """The inverse of ``concat_float32``: one tensor per name of ``shapes``, in order."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = torch.from_numpy(flat[offset : offset + size].copy()).view(shape)
        offset += size
    return out
