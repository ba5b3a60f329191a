"""Slow, obviously-correct references for the numerics tests (independent of the kernels)."""

from __future__ import annotations

import numpy as np
import torch

from fp8fl.numerics.formats import FloatFormat


def mantissa_is_odd(fmt: FloatFormat, magnitude_code: np.ndarray) -> np.ndarray:
    """Whether the integer mantissa M of a magnitude code is odd."""
    p = magnitude_code >> fmt.man_bits
    k = magnitude_code & ((1 << fmt.man_bits) - 1)
    mantissa = np.where(p == 0, k, (1 << fmt.man_bits) + k)
    return mantissa % 2 == 1


def brute_force_nearest(x: torch.Tensor, fmt: FloatFormat, alpha: float) -> torch.Tensor:
    """Nearest grid point by exhaustive search in float64 (exact for float32 inputs and grid).

    A tie between neighbours lo < hi is eq. 3's half-to-even on lo's scale s: x/s = M_lo + 1/2
    rounds to the even one of M_lo and M_lo + 1, i.e. up iff M_lo is odd."""
    mags = fmt.magnitudes(alpha).astype(np.float64)
    ax = np.abs(x.double().numpy())[:, None]
    out = np.empty(ax.shape[0])
    for start in range(0, ax.shape[0], 4096):
        dist = np.abs(ax[start : start + 4096] - mags[None, :])
        lower = np.argmax(dist == dist.min(axis=1, keepdims=True), axis=1)  # first (lower) minimum
        upper = np.minimum(lower + 1, len(mags) - 1)
        rows = np.arange(len(lower))
        tie = dist[rows, upper] == dist[rows, lower]
        choice = np.where(tie & (upper > lower) & mantissa_is_odd(fmt, lower), upper, lower)
        out[start : start + 4096] = mags[choice]
    signed = np.where(x.numpy() < 0, -out, out)
    return torch.from_numpy(signed.astype(np.float32))


def hard_inputs(fmt: FloatFormat, alpha: float, random_count: int, seed: int) -> torch.Tensor:
    """Random values across all scales, plus every midpoint of the grid and its float32
    neighbours (the only places where rounding can go wrong), grid points and out-of-range values."""
    rng = np.random.default_rng(seed)
    mags = fmt.magnitudes(alpha)
    smallest = float(mags[1])
    log_uniform = np.exp(rng.uniform(np.log(smallest / 4), np.log(alpha * 1.5), random_count))
    uniform = rng.uniform(-1.3 * alpha, 1.3 * alpha, random_count)
    mids = (mags[:-1].astype(np.float64) + mags[1:]) / 2
    mid32 = mids.astype(np.float32)
    around = np.concatenate(
        [mid32, np.nextafter(mid32, np.float32(np.inf)), np.nextafter(mid32, np.float32(0))]
    )
    values = np.concatenate(
        [
            log_uniform * rng.choice([-1, 1], random_count),
            uniform,
            around,
            -around,
            mags,
            -mags,
            [alpha * 1e6, -alpha * 1e6, 0.0, -0.0],
        ]
    ).astype(np.float32)
    return torch.from_numpy(values)
