"""A model's state as the arrays of one message — the same layout for downlink and uplink.

A message carries three arrays, whatever the model:

1. ``weights``: the FP8 weights (``qat.quantized_weight_names``) — with a quantized wire, each
   encoded with its own α by ``codec.encode`` and the byte streams concatenated (one byte per
   weight in E4M3); with the FP32 wire, their float32 values concatenated;
2. ``scales``: every α and β (float32), in state order;
3. ``dense``: every other tensor (biases, norms, embeddings), float32, concatenated.

Both ends derive the layout from the same model, so shapes and names never travel; three arrays
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

from fp8fl.models.qat import alpha_name, quantized_weight_names, range_parameter_names
from fp8fl.numerics.codec import decode, encode, packed_length, unpack_codes
from fp8fl.numerics.formats import FloatFormat

__all__ = ["ARRAY_NAMES", "WIRE_VERSION", "StateLayout", "WireError"]

WIRE_VERSION = 1
ARRAY_NAMES = ("weights", "scales", "dense")


class WireError(ValueError):
    """A message that does not match the layout both ends agreed on."""


@dataclass(frozen=True)
class StateLayout:
    """Which state entries travel as FP8 weights, as scales (α/β) and as dense FP32 tensors."""

    shapes: dict[str, tuple[int, ...]]  # every state entry, in state_dict order
    quantized: tuple[str, ...]
    scales: tuple[str, ...]
    dense: tuple[str, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> StateLayout:
        state = model.state_dict()
        quantized = tuple(quantized_weight_names(model))
        scales = tuple(range_parameter_names(model))
        taken = set(quantized) | set(scales)
        dense = tuple(name for name in state if name not in taken)
        return cls({k: tuple(v.shape) for k, v in state.items()}, quantized, scales, dense)

    # ------------------------------------------------------------------ sizes
    def numel(self, names: tuple[str, ...]) -> int:
        return sum(math.prod(self.shapes[n]) for n in names)

    def weight_bytes(self, wire: str, fmt: FloatFormat) -> list[int]:
        """Bytes of each quantized weight in the ``weights`` array."""
        if wire == "fp32":
            return [4 * math.prod(self.shapes[n]) for n in self.quantized]
        return [packed_length(math.prod(self.shapes[n]), fmt.bits) for n in self.quantized]

    def codes(self, weights: np.ndarray, fmt: FloatFormat) -> np.ndarray:
        """One code per weight (uint8), unpacked from a quantized ``weights`` array."""
        parts, offset = [np.empty(0, np.uint8)], 0
        for name, size in zip(self.quantized, self.weight_bytes("nearest", fmt)):
            parts.append(
                unpack_codes(
                    weights[offset : offset + size], math.prod(self.shapes[name]), fmt.bits
                )
            )
            offset += size
        return np.concatenate(parts)

    # ------------------------------------------------------------------ pack / unpack
    def pack(
        self,
        state: dict[str, torch.Tensor],
        wire: str,
        fmt: FloatFormat,
        generator: torch.Generator | None = None,
    ) -> list[np.ndarray]:
        """The three arrays of a message; ``wire`` is "fp32", "nearest" or "stochastic"."""
        if wire == "fp32":
            weights = _concat([state[n] for n in self.quantized])
        else:
            weights = np.concatenate(
                [np.empty(0, np.uint8)]
                + [
                    encode(
                        state[n].detach().float().cpu().contiguous(),
                        state[alpha_name(n)].detach(),
                        fmt,
                        stochastic=wire == "stochastic",
                        generator=generator,
                    )
                    for n in self.quantized
                ]
            )
        return [
            weights,
            _concat([state[n] for n in self.scales]),
            _concat([state[n] for n in self.dense]),
        ]

    def unpack(
        self, arrays: list[np.ndarray], wire: str, fmt: FloatFormat
    ) -> dict[str, torch.Tensor]:
        """Validate a message and return the state it carries (float32 CPU tensors)."""
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(ARRAY_NAMES):
            count = len(arrays) if isinstance(arrays, (list, tuple)) else type(arrays).__name__
            raise WireError(
                f"expected {len(ARRAY_NAMES)} arrays ({', '.join(ARRAY_NAMES)}), got {count}"
            )
        weights, scales, dense = (
            _checked(
                a,
                name,
                np.dtype(np.uint8)
                if name == "weights" and wire != "fp32"
                else np.dtype(np.float32),
                size,
            )
            for a, name, size in zip(
                arrays,
                ARRAY_NAMES,
                (
                    sum(self.weight_bytes(wire, fmt)) // (4 if wire == "fp32" else 1),
                    len(self.scales),
                    self.numel(self.dense),
                ),
            )
        )
        state: dict[str, torch.Tensor] = {}
        for name, value in zip(self.scales, scales.tolist()):
            if not (math.isfinite(value) and value > 0):
                raise WireError(
                    f"range parameter {name} is {value}: α and β must be positive and finite"
                )
            state[name] = torch.tensor(value, dtype=torch.float32)
        _require_finite(dense, "dense")
        state.update(self._split(dense, self.dense))
        if wire == "fp32":
            _require_finite(weights, "weights")
            state.update(self._split(weights, self.quantized))
        else:
            offset = 0
            for name, size in zip(self.quantized, self.weight_bytes(wire, fmt)):
                try:
                    state[name] = decode(
                        weights[offset : offset + size],
                        state[alpha_name(name)],
                        fmt,
                        shape=self.shapes[name],
                    )
                except ValueError as err:
                    raise WireError(f"{name}: {err}") from None
                offset += size
        return {name: state[name] for name in self.shapes}

    def _split(self, flat: np.ndarray, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name in names:
            size = math.prod(self.shapes[name])
            out[name] = torch.from_numpy(flat[offset : offset + size].copy()).view(
                self.shapes[name]
            )
            offset += size
        return out


def _concat(tensors: list[torch.Tensor]) -> np.ndarray:
    if not tensors:
        return np.empty(0, np.float32)
    return torch.cat([t.detach().float().cpu().reshape(-1) for t in tensors]).numpy()


def _checked(array: object, name: str, dtype: np.dtype, size: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise WireError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise WireError(f"{name}: expected dtype {dtype}, got {array.dtype}")
    if array.ndim != 1:
        raise WireError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size != size:
        kind = "truncated" if array.size < size else "oversized"
        raise WireError(f"{name}: {kind}, {array.size} elements where the model needs {size}")
    return array


def _require_finite(values: np.ndarray, name: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise WireError(f"{name}: {bad} non-finite value(s) (NaN or inf)")
