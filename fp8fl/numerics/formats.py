"""Low-precision floating-point formats with a flexible, α-dependent exponent bias.

A format has one sign bit, ``exp_bits`` exponent bits and ``man_bits`` mantissa bits. Following
Wang et al. 2024 (arXiv:2407.02610, §3.2, eq. 2-4) and Kuzmin et al. 2022, the exponent bias is not
fixed: it is chosen from
a clipping value α so that the largest representable magnitude is exactly α::

    b(α) = 2^e − log2 α + log2(2 − 2^−m) − 1

Every one of the 2^(1+e+m) codes is a finite number (no inf/NaN encodings): biased exponent p = 0
holds the subnormals (0 included), p ≥ 1 the normals. Hence the grid has 2·(2^(e+m) − 1) + 1
distinct values. Nothing here is specific to E4M3: every format goes through the same code.

Exact values. For magnitude code c = p·2^m + k the value is α·M·2^j / D, where
M = k (p = 0) or 2^m + k (p ≥ 1), j = max(p, 1) − (2^e − 1) and D = 2^(m+1) − 1. It is computed as
``float32((float64(α)·M) / D · 2^j)``: α·M is exact in float64, the one division is correctly
rounded, the power-of-two scaling is exact, so the maximum (M = D, j = 0) is exactly α. This single
definition is used by the grid, the quantizer and the wire codec alike.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

__all__ = ["E2M1", "E2M3", "E3M2", "E3M4", "E4M3", "E5M2", "FloatFormat", "as_alpha"]

_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class FloatFormat:
    """A sign + ``exp_bits`` + ``man_bits`` floating-point format (at most 8 bits in all)."""

    exp_bits: int
    man_bits: int

    NAMED: ClassVar[tuple[str, ...]] = ("e4m3", "e5m2", "e3m4", "e2m3", "e3m2", "e2m1")

    def __post_init__(self) -> None:
        for field in ("exp_bits", "man_bits"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"FloatFormat.{field} must be an int, got {value!r}")
        if self.exp_bits < 1:
            raise ValueError(f"FloatFormat needs exp_bits >= 1, got {self.exp_bits}")
        if self.man_bits < 0:
            raise ValueError(f"FloatFormat needs man_bits >= 0, got {self.man_bits}")
        if self.bits > 8:
            raise ValueError(
                f"FloatFormat(e={self.exp_bits}, m={self.man_bits}) has {self.bits} bits; "
                "1 + exp_bits + man_bits must be at most 8"
            )

    @classmethod
    def from_name(cls, name: str) -> FloatFormat:
        """Parse a name such as ``"e4m3"`` or ``"E5M2"`` (any valid eXmY is accepted)."""
        if not isinstance(name, str):
            raise TypeError(f"format name must be a str, got {type(name).__name__}")
        match = re.fullmatch(r"e(\d)m(\d)", name.strip().lower())
        if match is None:
            raise ValueError(
                f"unknown float format {name!r}: expected 'eXmY' such as {', '.join(cls.NAMED)}"
            )
        try:
            return cls(int(match.group(1)), int(match.group(2)))
        except ValueError as err:
            raise ValueError(f"invalid float format {name!r}: {err}") from None

    @property
    def name(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}"

    @property
    def bits(self) -> int:
        """Bits per code: sign + exponent + mantissa."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def num_magnitudes(self) -> int:
        """Number of non-negative codes, 2^(e+m); code 0 is zero, the last is α."""
        return 1 << (self.exp_bits + self.man_bits)

    @property
    def grid_size(self) -> int:
        """Distinct representable values: 2·(2^(e+m) − 1) + 1."""
        return 2 * (self.num_magnitudes - 1) + 1

    def bias(self, alpha: float | torch.Tensor) -> float:
        """The flexible exponent bias b = 2^e − log2 α + log2(2 − 2^−m) − 1 (Wang et al. 2024,
        arXiv:2407.02610, §3.3)."""
        a = as_alpha(alpha, self)
        return 2.0**self.exp_bits - math.log2(a) + math.log2(2.0 - 2.0**-self.man_bits) - 1.0

    def magnitudes(self, alpha: float | torch.Tensor) -> np.ndarray:
        """Value of every magnitude code 0 … 2^(e+m) − 1 as float32, strictly increasing, last = α."""
        return _magnitudes(self, as_alpha(alpha, self))

    def grid(self, alpha: float | torch.Tensor) -> torch.Tensor:
        """Every representable value for clipping value α: sorted, unique, float32."""
        mags = self.magnitudes(alpha)
        return torch.from_numpy(np.concatenate([-mags[:0:-1], mags]))

    def min_alpha(self) -> float:
        """Smallest α whose finest grid step is still a normal float32 number."""
        smallest_unit = 2.0 ** (2 - 2**self.exp_bits) / (2 ** (self.man_bits + 1) - 1)
        return _FLOAT32_TINY / smallest_unit

    def __str__(self) -> str:
        return self.name


def _magnitudes(fmt: FloatFormat, alpha: float) -> np.ndarray:
    """Exact float32 magnitudes (see the module docstring for why this order of operations)."""
    codes = np.arange(fmt.num_magnitudes)
    p, k = codes >> fmt.man_bits, codes & ((1 << fmt.man_bits) - 1)
    mantissa = np.where(p == 0, k, (1 << fmt.man_bits) + k).astype(np.float64)
    j = np.maximum(p, 1) - ((1 << fmt.exp_bits) - 1)
    denominator = float((1 << (fmt.man_bits + 1)) - 1)
    return np.ldexp(alpha * mantissa / denominator, j).astype(np.float32)


def as_alpha(alpha: float | torch.Tensor, fmt: FloatFormat) -> float:
    """Validate a clipping value and return it rounded to float32 (its wire representation)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1 or alpha.dim() > 1:
            raise ValueError(
                f"alpha must be a 0-d tensor or a float, got shape {tuple(alpha.shape)}"
            )
        if not alpha.dtype.is_floating_point:
            raise TypeError(f"alpha must be a floating-point tensor, got {alpha.dtype}")
        value = float(alpha.detach().reshape(()).item())
    elif isinstance(alpha, (float, int, np.floating, np.integer)) and not isinstance(alpha, bool):
        value = float(alpha)
    else:
        raise TypeError(f"alpha must be a positive float or 0-d tensor, got {type(alpha).__name__}")
    if math.isnan(value):
        raise ValueError("alpha is NaN; the clipping value must be a positive finite number")
    if math.isinf(value):
        raise ValueError(f"alpha is {value}; the clipping value must be a positive finite number")
    if value <= 0.0:
        raise ValueError(f"alpha must be > 0, got {value}")
    if value > _FLOAT32_MAX:
        raise ValueError(f"alpha={value} overflows float32")
    value32 = float(np.float32(value))
    if value32 < fmt.min_alpha():
        raise ValueError(
            f"alpha={value:.3e} is too small for {fmt.name}: its smallest grid step would fall "
            f"below float32's normal range (need alpha >= {fmt.min_alpha():.3e})"
        )
    return value32


E4M3 = FloatFormat(4, 3)
E5M2 = FloatFormat(5, 2)
E3M4 = FloatFormat(3, 4)
E2M3 = FloatFormat(2, 3)
E3M2 = FloatFormat(3, 2)
E2M1 = FloatFormat(2, 1)
