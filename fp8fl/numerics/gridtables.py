"""Exact rounding tables for one (format, α): the grid, its rounding thresholds and cell look-ups.

Rounding a float32 x onto the grid is a counting problem: the magnitude code of |x| is the number of
thresholds t_i with t_i <= |x|. For round-to-nearest-even the thresholds are the smallest float32
numbers that round up past each midpoint (ties go to the even mantissa, eq. 3-4); for the floor used
by stochastic rounding they are the grid points themselves. Both are derived once, in float64 where
every midpoint of two float32 numbers is exact, so the count is exact for every float32 input.

Positive float32 numbers are ordered like their int32 bit patterns, so counting is done on bits: the
bit range is cut into cells of 2^shift patterns, fine enough (q = m + 2 mantissa bits) that each cell
holds at most one threshold; a cell look-up then gives ``base + (bits >= next)`` in O(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from fp8fl.numerics.formats import FloatFormat

__all__ = ["CellLookup", "GridTables", "grid_tables"]

_NO_THRESHOLD = np.int32(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class CellLookup:
    """Counts thresholds <= a positive float32 bit pattern ``a`` as ``base[k] + (a >= next[k])``,
    where ``k = clip((a >> shift) - kmin, 0, len(base) - 1)``."""

    shift: int
    kmin: int
    base: np.ndarray  # int32, thresholds <= the first pattern of the cell
    next: np.ndarray  # int32, the one threshold inside the cell, or int32 max

    @classmethod
    def build(cls, thresholds: np.ndarray, man_bits: int) -> CellLookup:
        bits = np.ascontiguousarray(thresholds, dtype=np.float32).view(np.int32)
        shift = 23 - (man_bits + 2)
        kmin = int(bits[0] >> shift) - 1  # cell 0 lies wholly below the first threshold
        kmax = int(bits[-1] >> shift) + 1  # the last cell lies wholly above the last one
        starts = np.arange(kmin, kmax + 1, dtype=np.int64) << shift
        base = np.searchsorted(bits, starts, side="right")
        inside = np.searchsorted(bits, starts + (1 << shift), side="left") - base
        if inside.max() > 1:
            raise AssertionError("cell look-up is too coarse for this grid")
        padded = np.append(bits, _NO_THRESHOLD)
        nxt = np.where(inside == 1, padded[np.minimum(base, len(bits))], _NO_THRESHOLD)
        return cls(shift, kmin, base.astype(np.int32), nxt.astype(np.int32))

    def count(self, abs_bits: np.ndarray) -> np.ndarray:
        """Reference evaluation in numpy (the kernels do the same, fused)."""
        k = np.clip((abs_bits >> self.shift) - self.kmin, 0, len(self.base) - 1)
        return self.base[k] + (abs_bits >= self.next[k])


@dataclass(frozen=True)
class GridTables:
    """Everything needed to round onto and decode from the grid of ``fmt`` at clipping value α."""

    fmt: FloatFormat
    alpha: float  # float32-representable
    magnitudes: np.ndarray  # float32 value of every magnitude code, increasing, last == alpha
    signed: np.ndarray  # float32 value of every full code (sign bit on top), the decode table

    # Each look-up is built on first use: QAT learns α and β, so every step rounds at a new α,
    # and a step rounds either to nearest or stochastically, never both.
    @cached_property
    def nearest(self) -> CellLookup:
        """Counts the round-to-nearest-even thresholds."""
        return CellLookup.build(nearest_thresholds(self.fmt, self.magnitudes), self.fmt.man_bits)

    @cached_property
    def floor(self) -> CellLookup:
        """Counts the grid points above zero (the floor used by stochastic rounding)."""
        return CellLookup.build(self.magnitudes[1:], self.fmt.man_bits)

    @cached_property
    def nearest_cell_pairs(self) -> np.ndarray:
        """Per cell k of ``nearest``, the grid value below its threshold at 2k and the one at or
        above it at 2k + 1 (float32): rounding then needs no code, one look-up fewer per element,
        and the choice between the two is an index, not a branch."""
        lookup, last = self.nearest, len(self.magnitudes) - 1
        pairs = np.empty(2 * len(lookup.base), dtype=np.float32)
        pairs[0::2] = self.magnitudes[np.minimum(lookup.base, last)]
        pairs[1::2] = self.magnitudes[np.minimum(lookup.base + 1, last)]
        return pairs

    @property
    def sign_code(self) -> int:
        """The sign bit within a code."""
        return 1 << (self.fmt.exp_bits + self.fmt.man_bits)


def nearest_thresholds(fmt: FloatFormat, magnitudes: np.ndarray) -> np.ndarray:
    """For each code c >= 1, the smallest float32 that rounds (half to even) to code >= c."""
    lo = magnitudes[:-1].astype(np.float64)
    hi = magnitudes[1:].astype(np.float64)
    mid = (lo + hi) / 2.0  # exact: both are float32 of similar magnitude
    codes = np.arange(len(lo))
    p, k = codes >> fmt.man_bits, codes & ((1 << fmt.man_bits) - 1)
    lower_mantissa = np.where(p == 0, k, (1 << fmt.man_bits) + k)
    tie_goes_up = (lower_mantissa & 1) == 1  # round half to even on the lower binade's scale
    nearest32 = mid.astype(np.float32)
    up32 = np.nextafter(nearest32, np.float32(np.inf))
    exact = nearest32.astype(np.float64) == mid
    below = nearest32.astype(np.float64) < mid
    return np.where(exact, np.where(tie_goes_up, nearest32, up32), np.where(below, up32, nearest32))


@lru_cache(maxsize=512)
def grid_tables(fmt: FloatFormat, alpha: float) -> GridTables:
    """Tables for ``fmt`` at a validated float32 ``alpha`` (see ``formats.as_alpha``). Cached."""
    mags = fmt.magnitudes(alpha)
    signed = np.concatenate([mags, -mags])
    return GridTables(fmt=fmt, alpha=alpha, magnitudes=mags, signed=signed)
