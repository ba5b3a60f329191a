"""Clipped uniform integer quantization with an OCTAV clip and inverse-MSE averaging.

Bozorgasl & Chen, "Communication-Efficient Federated Learning via Clipped Uniform Quantization"
(arXiv:2405.13365): each client quantizes every layer to B-bit integers on a symmetric grid
clipped at an MSE-optimal s, uploads the codes, s and its quantization MSE e, and the server may
average with weights 1/e. The clip is the OCTAV fixed point (Sakr et al., "Optimal Clipping and
Magnitude-aware Differentiation for Improved Quantization-aware Training", ICML 2022).

Grid (B bits, 2 <= B <= 8, clip s > 0)::

    Δ = s·2^(1−B),   code c ∈ [−2^(B−1), 2^(B−1) − 1],   value = c·Δ

exactly 2^B levels. The paper's midtread form clip(Δ·round(x/Δ), −s, s) would have 2^B + 1 levels
and not fit in B bits, so the top code is dropped: the grid is asymmetric by one level, bottom −s,
top s − Δ (the usual two's-complement range).

Choices where the paper is silent:

* Nearest rounding: round half to even of x/Δ (computed in float64), then clamp the code.
* Stochastic rounding: floor(x/Δ + u), u ~ U[0,1) from ``torch.rand`` with the caller's
  generator, then clamp. E[value] = x for −s <= x <= s − Δ (both neighbours are codes); above
  s − Δ the clamp makes it biased downwards, as any clip does.
* The clip is one s per tensor, from s0 = max|w|, in float64; iteration stops when the relative
  change is below ``tol`` or after ``max_iter`` updates. An all-zero tensor gets
  ``ZERO_TENSOR_CLIP`` (any positive clip quantizes zeros exactly, to code 0).
* Wire: each code is sent as offset binary, c + 2^(B−1) as an unsigned B-bit field, packed densely
  MSB first by ``codec.pack_codes`` (zero padding bits, checked on decode); s and e travel apart.
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
]

MIN_BITS = 2
MAX_BITS = 8
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


def _code_range(bits: int) -> tuple[int, int]:
    half = 1 << (bits - 1)
    return -half, half - 1


def _step(s: float, bits: int) -> float:
    return s * 2.0 ** (1 - bits)  # exact: a power-of-two scaling of a float64


# ----------------------------------------------------------------------------- OCTAV clip


def octav_clip(w: torch.Tensor, bits: int, tol: float = 1e-4, max_iter: int = 30) -> float:
    """The OCTAV clip for B-bit symmetric uniform quantization of ``w`` (one s per tensor).

    OCTAV minimises the modelled mean squared error

        J(s) = (4^−B/3)·s²·P(|w| <= s) + E[(|w| − s)²·1{|w| > s}]

    (rounding noise Δ²/12 with Δ = s·2^(1−B) inside the clip, clipping noise outside) by the
    fixed-point iteration, from s0 = max|w|,

        s_{n+1} = E[|w|·1{|w| > s_n}] / ((4^−B/3)·P(|w| <= s_n) + P(|w| > s_n)),

    with expectations over the elements of ``w``, in float64. It stops when
    |s_{n+1} − s_n| < tol·s_n or after ``max_iter`` updates. The iteration is OCTAV's
    Newton step on dJ/ds that drops the terms in the density of |w| at s; the fixed point
    therefore lies slightly above the exact minimiser of J when 4^−B is not small: for Gaussian
    weights by about 3 % at B = 2, 1.2 % at B = 3, 0.5 % at B = 4 (J itself is within 0.4 %).

    Nothing lies strictly above s0 = max|w|, so the map sends s0 to 0, which is no usable clip;
    whenever the map gives 0 the map at 0 is taken instead,
    s1 = E|w| / ((4^−B/3)·P(w = 0) + P(w ≠ 0)) > 0. So every iterate is > 0 and nothing divides
    by a zero clip (the map's own denominator is >= 4^−B/3 > 0).

    An all-zero ``w`` returns ``ZERO_TENSOR_CLIP`` (every positive clip quantizes it exactly).
    Raises ValueError for an empty or non-finite ``w``, bits outside 2..8, tol <= 0 or
    max_iter < 1.
    """
    _check_tensor(w, "w")
    bits = _check_bits(bits)
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
    noise = 4.0**-bits / 3.0
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` onto the B-bit grid clipped at ``s``; returns (int16 codes, float32 values).

    Grid: Δ = s·2^(1−B), codes in [−2^(B−1), 2^(B−1) − 1] (2^B levels, bottom −s, top s − Δ),
    value = code·Δ. Nearest: round half to even of x/Δ, then clamp. Stochastic:
    floor(x/Δ + u), u ~ U[0,1) drawn by ``torch.rand`` from ``generator``, then clamp; unbiased
    for −s <= x <= s − Δ. Both have the shape of ``x``; no autograd.
    """
    _check_tensor(x, "x")
    s = _check_clip(s)
    bits = _check_bits(bits)
    low, high = _code_range(bits)
    scaled = x.detach().to(torch.float64) / _step(s, bits)
    if stochastic:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        rounded = torch.floor(scaled + u)
    else:
        rounded = torch.round(scaled)  # half to even
    codes = rounded.clamp_(low, high).to(_CODE_DTYPE)
    return codes, dequantize_uniform(codes, s, bits)


def dequantize_uniform(codes: torch.Tensor, s: float, bits: int) -> torch.Tensor:
    """Values of integer ``codes`` on the grid: float32(code·Δ), the product taken in float64."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    s = _check_clip(s)
    bits = _check_bits(bits)
    return (codes.to(torch.float64) * _step(s, bits)).to(torch.float32)


class _FakeQuantUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, bits, stochastic, generator):  # type: ignore[override]
        _, values = quantize_uniform(x, s, bits, stochastic, generator)
        ctx.save_for_backward(x.detach().to(torch.float64).abs() <= s)  # s exactly, not float32(s)
        return values.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_q):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        grad_x = grad_q * inside.to(grad_q.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


def fake_quant_uniform(
    x: torch.Tensor,
    s: float,
    bits: int,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """QAT op: forward = ``quantize_uniform`` values (in x's dtype); backward = straight-through
    estimator, dq/dx = 1 for |x| <= s and 0 outside. ``s`` is a float and gets no gradient."""
    s = _check_clip(s)
    bits = _check_bits(bits)
    return _FakeQuantUniform.apply(x, s, bits, bool(stochastic), generator)


# ----------------------------------------------------------------------------- wire


def encode_uniform(codes: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes (flattened in C order) as offset-binary B-bit fields, MSB first.

    Each code c becomes the unsigned value c + 2^(B−1); ``codec.pack_codes`` packs them densely
    (``packed_length(count, bits)`` bytes, zero padding bits). Returns a 1-D uint8 array.
    """
    bits = _check_bits(bits)
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"codes must be a torch.Tensor or numpy array, got {type(codes).__name__}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    flat = codes.reshape(-1).astype(np.int64)
    low, high = _code_range(bits)
    if flat.size and (flat.min() < low or flat.max() > high):
        raise ValueError(
            f"codes must lie in [{low}, {high}] for {bits} bits, got values in "
            f"[{flat.min()}, {flat.max()}]"
        )
    offset = (flat - low).astype(np.uint8)
    return np.ascontiguousarray(pack_codes(offset, bits))


def decode_uniform(stream: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of ``encode_uniform``: ``count`` int16 codes from a packed uint8 stream.

    Raises ValueError when the stream's length is not ``packed_length(count, bits)`` or its
    padding bits are not zero (a corrupt or truncated upload).
    """
    bits = _check_bits(bits)
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
    offset = unpack_codes(flat, count, bits)
    return offset.astype(np.int16) + np.int16(_code_range(bits)[0])


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
