"""Clipped uniform integer quantization with an OCTAV clip and inverse-MSE averaging.

Bozorgasl & Chen, "Communication-Efficient Federated Learning via Clipped Uniform Quantization"
(arXiv:2405.13365): each client quantizes every layer to B-bit integers on a symmetric grid
clipped at an MSE-optimal s, uploads the codes, s and its quantization MSE e, and the server may
average with weights 1/e. The clip is the OCTAV fixed point (Sakr et al., "Optimal Clipping and
Magnitude-aware Differentiation for Improved Quantization-aware Training", ICML 2022).

Grids (B bits, 2 <= B <= 8, clip s > 0), ``grid``:

    "symmetric" (the default):   Δ = s/(2^(B−1) − 1),  code c ∈ [−(2^(B−1) − 1), 2^(B−1) − 1]
    "twos-complement":           Δ = s·2^(1−B),        code c ∈ [−2^(B−1), 2^(B−1) − 1]

and value = c·Δ. The paper's midtread quantizer Q(x; s) = clip(s·2^(1−B)·round(x·2^(B−1)/s), −s, s)
has the 2^B + 1 levels −s, …, 0, …, s: one more than B bits can name. The symmetric grid keeps the
top and bottom ±s and zero and drops one level by widening the step (2^B − 1 levels): it is odd
(Q(−x) = −Q(x) under nearest rounding) and stochastic rounding is unbiased on all of [−s, s]. The
two's-complement grid keeps the paper's step and drops the top level +s (2^B levels, bottom −s,
top s − Δ): nearest rounding is then not odd and is biased (−0.084σ at B = 2 on a Gaussian), and
stochastic rounding is biased above s − Δ; it is what this app used before issue 34, kept for
comparison (``cq-grid = "twos-complement"``).

Choices where the paper is silent:

* Nearest rounding: round half to even of x/Δ (computed in float64), then clamp the code.
* Stochastic rounding: floor(x/Δ + u), u ~ U[0,1) from ``torch.rand`` with the caller's
  generator, then clamp. E[value] = x wherever both neighbours are codes: all of [−s, s] on the
  symmetric grid, [−s, s − Δ] on the two's-complement one.
* The clip is one s per tensor, from s0 = max|w|, in float64; iteration stops when the relative
  change is below ``tol`` or after ``max_iter`` updates. An all-zero tensor gets
  ``ZERO_TENSOR_CLIP`` (any positive clip quantizes zeros exactly, to code 0).
* Wire: each code is sent as offset binary, c + 2^(B−1) as an unsigned B-bit field, packed densely
  MSB first by ``codec.pack_codes`` (zero padding bits, checked on decode); s and e travel apart.
  On the symmetric grid the field 0 is never sent, and decoding refuses it.
* The QAT op's backward is the straight-through estimator, 1 inside [−s, s] and 0 outside; s is a
  constant there (it is re-estimated by OCTAV, not learned).
* Inverse-MSE averaging floors each error at a caller-chosen ``floor`` > 0, so a client whose
  layer quantized exactly (e = 0) neither divides by zero nor takes all of the weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fp8fl.numerics.codec import pack_codes, packed_length, unpack_codes

__all__ = [
    "GRIDS",
    "MAX_BITS",
    "MIN_BITS",
    "ZERO_TENSOR_CLIP",
    "decode_uniform",
    "dequantize_uniform",
    "encode_uniform",
    "fake_quant_uniform",
    "inverse_mse_average",
    "octav_clip",
    "quantization_mse",
    "quantize_uniform",
    "uniform_code_range",
    "uniform_step",
]

MIN_BITS = 2
MAX_BITS = 8
SYMMETRIC, TWOS_COMPLEMENT = "symmetric", "twos-complement"
GRIDS = (SYMMETRIC, TWOS_COMPLEMENT)
ZERO_TENSOR_CLIP = 1.0
"""Clip returned by ``octav_clip`` for an all-zero tensor: J(s) = 0 for every s > 0 there."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CODE_DTYPE = torch.int16


# ----------------------------------------------------------------------------- validation


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS} (inclusive), got {bits}")
    return int(bits)


def _check_clip(s: object) -> float:
    if isinstance(s, torch.Tensor):
        if s.numel() != 1:
            raise ValueError(f"clip s must be a scalar, got a tensor of shape {tuple(s.shape)}")
        s = s.item()
    if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
        raise TypeError(f"clip s must be a real number, got {type(s).__name__}")
    value = float(s)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"clip s must be finite and > 0, got {value}")
    if value > _FLOAT32_MAX:
        raise ValueError(f"clip s = {value} overflows float32 (max {_FLOAT32_MAX})")
    return value


def _check_tensor(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        nan = int(torch.isnan(x).sum())
        raise ValueError(
            f"{what} contains {bad} non-finite value(s) ({nan} NaN, {bad - nan} inf) among "
            f"{x.numel()} elements"
        )
    return x


def _check_grid(grid: object) -> str:
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    return str(grid)


def uniform_code_range(bits: int, grid: str = SYMMETRIC) -> tuple[int, int]:
    """(lowest, highest) code of the B-bit ``grid``."""
    bits, grid = _check_bits(bits), _check_grid(grid)
    half = 1 << (bits - 1)
    return (-(half - 1) if grid == SYMMETRIC else -half), half - 1


def uniform_step(s: float, bits: int, grid: str = SYMMETRIC) -> float:
    """The grid's step Δ for clip ``s``: s/(2^(B−1) − 1) (symmetric) or s·2^(1−B)."""
    bits = _check_bits(bits)
    if _check_grid(grid) == SYMMETRIC:
        return s / ((1 << (bits - 1)) - 1)
    return s * 2.0 ** (1 - bits)  # exact: a power-of-two scaling of a float64


# ----------------------------------------------------------------------------- OCTAV clip


def octav_clip(
    w: torch.Tensor, bits: int, tol: float = 1e-4, max_iter: int = 30, grid: str = SYMMETRIC
) -> float:
    """The OCTAV clip for B-bit uniform quantization of ``w`` on ``grid`` (one s per tensor).

    OCTAV minimises the modelled mean squared error

        J(s) = c·s²·P(|w| <= s) + E[(|w| − s)²·1{|w| > s}],   c·s² = Δ²/12

    (rounding noise Δ²/12 with the grid's step Δ inside the clip, clipping noise outside:
    c = 1/(12·(2^(B−1) − 1)²) on the symmetric grid, 4^−B/3 on the two's-complement one, whose
    step s·2^(1−B) is OCTAV's own) by the fixed-point iteration, from s0 = max|w|,

        s_{n+1} = E[|w|·1{|w| > s_n}] / (c·P(|w| <= s_n) + P(|w| > s_n)),

    with expectations over the elements of ``w``, in float64. It stops when
    |s_{n+1} − s_n| < tol·s_n or after ``max_iter`` updates. The iteration is OCTAV's
    Newton step on dJ/ds that drops the terms in the density of |w| at s; the fixed point
    therefore lies slightly above the exact minimiser of J when c is not small: for Gaussian
    weights by about 3 % at B = 2, 1.2 % at B = 3, 0.5 % at B = 4 on the two's-complement grid
    (J itself is within 0.4 %).

    Nothing lies strictly above s0 = max|w|, so the map sends s0 to 0, which is no usable clip;
    whenever the map gives 0 the map at 0 is taken instead,
    s1 = E|w| / (c·P(w = 0) + P(w ≠ 0)) > 0. So every iterate is > 0 and nothing divides
    by a zero clip (the map's own denominator is >= c > 0).

    An all-zero ``w`` returns ``ZERO_TENSOR_CLIP`` (every positive clip quantizes it exactly).
    Raises ValueError for an empty or non-finite ``w``, bits outside 2..8, tol <= 0 or
    max_iter < 1.
    """
    _check_tensor(w, "w")
    bits, grid = _check_bits(bits), _check_grid(grid)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if w.numel() == 0:
        raise ValueError("w is empty: no clip can be estimated from zero elements")
    a = w.detach().reshape(-1).to(torch.float64).abs()
    s = float(a.max())
    if s == 0.0:
        return ZERO_TENSOR_CLIP
    noise = _octav_noise(bits, grid)
    n = a.numel()
    for _ in range(max_iter):
        new = _octav_update(a, s, noise, n)
        if new == 0.0:  # only when s >= max|w|: take the update from s = 0 instead
            new = _octav_update(a, 0.0, noise, n)
        converged = abs(new - s) < tol * s
        s = new
        if converged:
            break
    return s


def _octav_noise(bits: int, grid: str) -> float:
    """c with c·s² = Δ²/12, the rounding noise of the grid's step Δ."""
    if grid == SYMMETRIC:
        return 1.0 / (12.0 * ((1 << (bits - 1)) - 1) ** 2)
    return 4.0**-bits / 3.0


def _octav_update(a: torch.Tensor, s: float, noise: float, n: int) -> float:
    above = a > s
    tail_sum = float(torch.where(above, a, 0.0).sum())
    p_above = float(above.sum()) / n
    return (tail_sum / n) / (noise * (1.0 - p_above) + p_above)


# ----------------------------------------------------------------------------- quantizer


@torch.no_grad()
def quantize_uniform(
    x: torch.Tensor,
    s: float,
    bits: int,
    stochastic: bool,
    generator: torch.Generator | None = None,
    grid: str = SYMMETRIC,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` onto the B-bit ``grid`` clipped at ``s``; returns (int16 codes, float32
    values).

    Codes in ``uniform_code_range(bits, grid)``, value = code·Δ (``uniform_step``). Nearest: round
    half to even of x/Δ, then clamp. Stochastic: floor(x/Δ + u), u ~ U[0,1) drawn by
    ``torch.rand`` from ``generator``, then clamp; unbiased on [−s, s] (symmetric) or
    [−s, s − Δ] (two's complement). On the symmetric grid s is taken as float32(s), what the wire
    carries, x/Δ is x·(2^(B−1) − 1)/s, and nearest rounding is exact for float32 x (the code of
    the nearest level c·s/(2^(B−1) − 1), ties to even); on the other grid x/Δ is an exact
    power-of-two scaling. Both have the shape of ``x``; no autograd.
    """
    _check_tensor(x, "x")
    s = _check_clip(s)
    bits, grid = _check_bits(bits), _check_grid(grid)
    low, high = uniform_code_range(bits, grid)
    x64 = x.detach().to(torch.float64)
    if grid == SYMMETRIC:
        s = float(np.float32(s))
        scaled = x64 * float(high) / s
    else:
        scaled = x64 / uniform_step(s, bits, grid)
    if stochastic:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        rounded = torch.floor(scaled + u)
    else:
        rounded = torch.round(scaled)  # half to even
        if grid == SYMMETRIC:
            rounded = _exact_nearest(rounded, x64 * (2 * high), s)
    codes = rounded.clamp_(low, high).to(_CODE_DTYPE)
    return codes, dequantize_uniform(codes, s, bits, grid)


def _exact_nearest(q: torch.Tensor, twice_scaled: torch.Tensor, s: float) -> torch.Tensor:
    """Correct round(x·k/s) where its one rounding moved x across a midpoint: the nearest code
    is decided by 2·x·k against the midpoints (2q ± 1)·s, all exact in float64 for float32 x and s
    (at most 32 significant bits each), ties to the even code."""
    upper, lower = (2 * q + 1) * s, (2 * q - 1) * s
    even = torch.remainder(q, 2) == 0
    up = (twice_scaled > upper) | ((twice_scaled == upper) & ~even)
    down = (twice_scaled < lower) | ((twice_scaled == lower) & ~even)
    return q + up.to(q.dtype) - down.to(q.dtype)


def dequantize_uniform(
    codes: torch.Tensor, s: float, bits: int, grid: str = SYMMETRIC
) -> torch.Tensor:
    """Values of integer ``codes`` on the grid, in float64 then rounded to float32:
    (code·s)/(2^(B−1) − 1) on the symmetric grid (so that ±code give ± the same value and the
    top code gives s exactly), code·s·2^(1−B) on the two's-complement grid."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    s = _check_clip(s)
    bits, grid = _check_bits(bits), _check_grid(grid)
    c = codes.to(torch.float64)
    if grid == SYMMETRIC:
        s32 = float(np.float32(s))
        return (c * s32 / float(uniform_code_range(bits, grid)[1])).to(torch.float32)
    return (c * uniform_step(s, bits, grid)).to(torch.float32)


class _FakeQuantUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, bits, stochastic, generator, grid):  # type: ignore[override]
        _, values = quantize_uniform(x, s, bits, stochastic, generator, grid)
        ctx.save_for_backward(x.detach().to(torch.float64).abs() <= s)  # s exactly, not float32(s)
        return values.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_q):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        grad_x = grad_q * inside.to(grad_q.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None


def fake_quant_uniform(
    x: torch.Tensor,
    s: float,
    bits: int,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    grid: str = SYMMETRIC,
) -> torch.Tensor:
    """QAT op: forward = ``quantize_uniform`` values (in x's dtype); backward = straight-through
    estimator, dq/dx = 1 for |x| <= s and 0 outside. ``s`` is a float and gets no gradient."""
    s = _check_clip(s)
    bits, grid = _check_bits(bits), _check_grid(grid)
    return _FakeQuantUniform.apply(x, s, bits, bool(stochastic), generator, grid)


# ----------------------------------------------------------------------------- wire


def encode_uniform(
    codes: torch.Tensor | np.ndarray, bits: int, grid: str = SYMMETRIC
) -> np.ndarray:
    """Pack integer codes (flattened in C order) as offset-binary B-bit fields, MSB first.

    Each code c (in ``uniform_code_range(bits, grid)``) becomes the unsigned value c + 2^(B−1);
    ``codec.pack_codes`` packs them densely (``packed_length(count, bits)`` bytes, zero padding
    bits). Returns a 1-D uint8 array.
    """
    bits, grid = _check_bits(bits), _check_grid(grid)
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"codes must be a torch.Tensor or numpy array, got {type(codes).__name__}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    flat = codes.reshape(-1).astype(np.int64)
    low, high = uniform_code_range(bits, grid)
    if flat.size and (flat.min() < low or flat.max() > high):
        raise ValueError(
            f"codes must lie in [{low}, {high}] for {bits} bits on the {grid} grid, got values "
            f"in [{flat.min()}, {flat.max()}]"
        )
    offset = (flat + (1 << (bits - 1))).astype(np.uint8)
    return np.ascontiguousarray(pack_codes(offset, bits))


def decode_uniform(stream: np.ndarray, count: int, bits: int, grid: str = SYMMETRIC) -> np.ndarray:
    """Inverse of ``encode_uniform``: ``count`` int16 codes from a packed uint8 stream.

    Raises ValueError when the stream's length is not ``packed_length(count, bits)``, its
    padding bits are not zero, or it holds a code outside the grid (a corrupt or truncated upload).
    """
    bits, grid = _check_bits(bits), _check_grid(grid)
    if not isinstance(stream, np.ndarray):
        raise TypeError(f"stream must be a numpy array, got {type(stream).__name__}")
    if stream.dtype != np.uint8:
        raise TypeError(f"stream must be uint8, got {stream.dtype}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    count = int(count)
    flat = np.ascontiguousarray(stream.reshape(-1))
    expected = packed_length(count, bits)
    if flat.size != expected:
        raise ValueError(
            f"stream has {flat.size} bytes but {count} codes of {bits} bits need {expected}: "
            "it is truncated or has trailing bytes"
        )
    codes = unpack_codes(flat, count, bits).astype(np.int16) - np.int16(1 << (bits - 1))
    low = uniform_code_range(bits, grid)[0]
    if codes.size and codes.min() < low:
        raise ValueError(f"stream holds code {codes.min()}, below {low} of the {grid} grid")
    return codes


# ----------------------------------------------------------------------------- errors, averaging


def quantization_mse(w: torch.Tensor, q: torch.Tensor) -> float:
    """Mean of (w − q)² over all elements, in float64 (the e_ij a client uploads)."""
    _check_tensor(w, "w")
    _check_tensor(q, "q")
    if w.shape != q.shape:
        raise ValueError(f"w and q differ in shape: {tuple(w.shape)} vs {tuple(q.shape)}")
    if w.numel() == 0:
        raise ValueError("w is empty: the mean squared error of zero elements is undefined")
    diff = w.detach().to(torch.float64) - q.detach().to(torch.float64)
    return float((diff * diff).mean())


@torch.no_grad()
def inverse_mse_average(
    values: Sequence[torch.Tensor], errors: Sequence[float], floor: float
) -> torch.Tensor:
    """Inverse-MSE weighted average: w̄ = Σ_j Q_j/e_j ÷ Σ_j 1/e_j, with e_j := max(e_j, floor).

    ``floor`` (> 0) bounds every weight by 1/floor: a client whose tensor quantized exactly
    (e_j = 0, e.g. an all-zero bias) would otherwise divide by zero, and one with a tiny e_j would
    take essentially all the weight. Accumulates in float64; returns float32 of the common shape.
    """
    values = list(values)
    errors = list(errors)
    if not values:
        raise ValueError("values is empty: nothing to average")
    if len(values) != len(errors):
        raise ValueError(f"{len(values)} values but {len(errors)} errors: need one error each")
    floor = float(floor)
    if not math.isfinite(floor) or floor <= 0.0:
        raise ValueError(f"floor must be finite and > 0, got {floor}")
    shape = values[0].shape if isinstance(values[0], torch.Tensor) else None
    weights = []
    for j, (v, e) in enumerate(zip(values, errors)):
        _check_tensor(v, f"values[{j}]")
        if v.shape != shape:
            raise ValueError(f"values[{j}] has shape {tuple(v.shape)}, values[0] {tuple(shape)}")
        e = float(e)
        if not math.isfinite(e) or e < 0.0:
            raise ValueError(f"errors[{j}] must be finite and >= 0, got {e}")
        weights.append(1.0 / max(e, floor))
    total = torch.zeros(shape, dtype=torch.float64, device=values[0].device)
    for v, weight in zip(values, weights):
        total.add_(v.to(torch.float64), alpha=weight)
    return (total / math.fsum(weights)).to(torch.float32)
