"""The two quantizers of QAFeL (Ortega & Jafarkhani, arXiv:2410.00242): QSGD and min–max scalar.

**QSGD** (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding", arXiv:1610.02132), per tensor, with ``s`` levels:

    Q(v)_i = ‖v‖₂ · sign(v_i) · ℓ_i / s,   ℓ_i = ⌊r_i⌋ + Bernoulli(r_i − ⌊r_i⌋),   r_i = s|v_i|/‖v‖₂

so E[Q(v)] = v and E‖Q(v) − v‖² ≤ min(d/s², √d/s)·‖v‖² (Lemma 3.1). With ``bucket = n`` the same
rule runs on each run of n consecutive elements with its own norm (the QSGD paper's buckets):
the bound becomes min(n/s², √n/s) per bucket, whatever the tensor's size, for 4 more bytes per
bucket. Per tensor, an 8-bit QSGD of a 614,400-element layer has relative variance up to
√d/s ≈ 6; with buckets of 512 it is at most 0.18. Each norm is rounded to float32 once (it is
what travels) and r uses that same float32 norm, so the reconstruction is unbiased up to the
final float32 rounding of each element. A tensor with ‖v‖₂ < ``QSGD_NORM_THRESHOLD`` = 1e−10 is
sent as zero (the threshold of the authors' ``qsgd`` in TomasOrtega/FLSim); the generator advances
by ``numel`` uniforms on every call whatever the data, so a replay stays in step.

Wire form: one code of ``1 + bit_length(s)`` bits per element, sign in the MSB (set only when
ℓ > 0, so zero is canonical) and ℓ below it, packed densely by ``codec.pack_codes``, plus the
float32 norms. Bits ↔ levels: a "b-bit QSGD" here has s = 2^(b−1) − 1 levels, one sign bit and
b − 1 bits of ℓ ∈ [0, s], so b is exactly the bits per element on the wire (2 bits: ternary,
4 bits: s = 7, 8 bits: s = 127). The authors' logistic-regression plots instead label s levels as
"log₂ s bits" (s = 8 → "3-bit"), which needs 2 + log₂ s bits per element once sign and ℓ = s are
counted; use ``qsgd_levels`` for the honest mapping and pass ``levels`` directly for theirs.

**Min–max scalar** (``minmax<b>``): FLSim's ``ScalarQuantizationChannel`` as QAFeL's neural-net
experiments use it (facebookresearch/FLSim and the fork TomasOrtega/FLSim,
``flsim/channels/scalar_quantization_channel.py``): deterministic, per tensor, n bits, through
torch's own quantization path,

    observer = MinMaxObserver(qint8, per_tensor_affine, quant_min = −2ⁿ⁻¹, quant_max = 2ⁿ⁻¹ − 1)
    scale = max((max(v, 0) − min(v, 0)) / (2ⁿ − 1), eps_float32),   zp = qmin − round(min(v, 0)/scale)
    q = torch.quantize_per_tensor(v, scale, zp, qint8),   v̂ = q.dequantize() = (q − zp)·scale

so the range always includes 0 (an exact zero is sent as q = zp and comes back as 0) and rounding
is torch's (round half to even of v·(1/scale) in float32). Tensors with ndim ≤ 1 (biases, norm
scales) stay FP32 and travel as raw little-endian float32, as in FLSim. Wire: the codes q − qmin as
unsigned n-bit fields (``codec.pack_codes``), the float32 scale (the observer's, exactly) and the
zero point as int8 (it lies in [qmin, qmax]): 5 bytes per tensor, where FLSim counts 12 (a float64
scale and an int32 zero point). One deviation from torch, forced by the n-bit wire: torch clamps
codes to int8, not to [qmin, qmax], so a tensor whose range ends fall on rounding ties can get a
code one outside it (v = [[−1.5, 13.5]] at 4 bits: scale 1, zp −6, codes −8 and 8); here such a
code is clamped to [qmin, qmax]. Every other tensor is bit-identical to torch's path, and at 8 bits
all are.

**Anchored min–max** (``minmaxa<b>``, the grid this app used before issue 34): the tensor's own
[min, max] with min on the grid,

    q = round((v − min) / (max − min) · (2ⁿ − 1)),   v̂ = min + q · (max − min) / (2ⁿ − 1),

round half to even, sent with min and max as float32 (8 bytes). It loses exact zeros and is biased
on heavy-tailed tensors; it is kept to compare with the records made with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.ao.quantization.observer import MinMaxObserver

from fp8fl.numerics.codec import pack_codes, packed_length, unpack_codes

__all__ = [
    "QSGD_NORM_THRESHOLD",
    "anchored_minmax_decode",
    "anchored_minmax_encode",
    "anchored_minmax_nbytes",
    "anchored_minmax_quantize",
    "minmax_code_range",
    "minmax_decode",
    "minmax_encode",
    "minmax_nbytes",
    "minmax_qparams",
    "minmax_quantize",
    "qsgd_code_bits",
    "qsgd_decode",
    "qsgd_encode",
    "qsgd_levels",
    "qsgd_nbytes",
    "qsgd_norm_count",
    "qsgd_quantize",
]

QSGD_NORM_THRESHOLD = 1e-10
"""A tensor whose float32 L2 norm is below this is quantized to zero (and sent with norm 0)."""


# ----------------------------------------------------------------------------------------- QSGD


def qsgd_levels(bits: int) -> int:
    """Levels s = 2^(bits−1) − 1 of a ``bits``-bit QSGD code (1 sign bit + bits−1 bits of ℓ)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"QSGD bits must be an int in [2, 8], got {bits!r}")
    return 2 ** (bits - 1) - 1


def qsgd_code_bits(levels: int) -> int:
    """Bits per element on the wire for ``levels``: one sign bit plus enough bits for ℓ ≤ s."""
    _check_levels(levels)
    return 1 + int(levels).bit_length()


def qsgd_norm_count(count: int, bucket: int | None = None) -> int:
    """Norms sent for ``count`` elements: one per bucket of ``bucket`` elements (the last one may be
    shorter), or one for the whole tensor when ``bucket`` is None."""
    _check_bucket(bucket)
    return 1 if bucket is None else -(-count // bucket)


def qsgd_nbytes(count: int, levels: int, bucket: int | None = None) -> int:
    """Bytes ``qsgd_encode`` sends for ``count`` elements: the packed codes and the float32 norms."""
    return packed_length(count, _wire_bits(levels)) + 4 * qsgd_norm_count(count, bucket)


def qsgd_quantize(
    v: torch.Tensor,
    levels: int,
    generator: torch.Generator | None = None,
    bucket: int | None = None,
) -> torch.Tensor:
    """Unbiased QSGD with ``levels`` levels over the whole tensor, or over each bucket of
    ``bucket`` consecutive elements (C order); float32, same shape as ``v``."""
    negative, ell, _, norm = _qsgd_levels_of(v, levels, generator, bucket)
    return _qsgd_values(negative, ell, norm, levels).view(v.shape)


def qsgd_encode(
    v: torch.Tensor,
    levels: int,
    generator: torch.Generator | None = None,
    bucket: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Packed sign|ℓ codes (C order) and the float32 norms (one per bucket); decodes to
    ``qsgd_quantize``'s result."""
    bits = _wire_bits(levels)
    negative, ell, norms, _ = _qsgd_levels_of(v, levels, generator, bucket)
    codes = (negative.to(torch.int64) << (bits - 1)) | ell
    return pack_codes(codes.to(torch.uint8).cpu().numpy(), bits), norms


def qsgd_decode(
    codes: np.ndarray,
    norms: np.ndarray | float,
    count: int,
    levels: int,
    bucket: int | None = None,
) -> torch.Tensor:
    """Inverse of ``qsgd_encode``: a 1-D float32 tensor of ``count`` elements (reshape as needed)."""
    bits = _wire_bits(levels)
    stream = _check_stream(codes, packed_length(count, bits))
    norms32 = np.asarray(norms, dtype=np.float32).reshape(-1)
    expected = qsgd_norm_count(count, bucket)
    if norms32.size != expected:
        raise ValueError(f"QSGD message holds {norms32.size} norms, {expected} expected")
    if not (np.isfinite(norms32).all() and (norms32 >= 0).all()):
        raise ValueError(f"QSGD norm must be finite and non-negative, got {norms32.min()!r}")
    raw = torch.from_numpy(unpack_codes(stream, count, bits).astype(np.int64))
    ell = raw & ((1 << (bits - 1)) - 1)
    negative = (raw >> (bits - 1)).bool()
    if (ell > levels).any():
        raise ValueError(f"QSGD code holds a level above s = {levels}: the stream is corrupt")
    if (negative & (ell == 0)).any():
        raise ValueError("QSGD code holds a negative zero: the stream is corrupt")
    return _qsgd_values(negative, ell, _per_element(norms32, count, bucket), levels)


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"QSGD levels must be a positive int, got {levels!r}")


def _check_bucket(bucket: int | None) -> None:
    if bucket is not None and (
        isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or bucket < 1
    ):
        raise ValueError(f"QSGD bucket must be None or a positive int, got {bucket!r}")


def _wire_bits(levels: int) -> int:
    bits = qsgd_code_bits(levels)
    if bits > 8:
        raise ValueError(f"QSGD wire codes hold at most 127 levels (8 bits), got s = {levels}")
    return bits


def _float_input(v: torch.Tensor) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {type(v).__name__}")
    flat = v.detach().reshape(-1).to(torch.float64)
    if not torch.isfinite(flat).all():
        raise ValueError("cannot quantize a tensor holding inf or NaN")
    return flat


def _bucket_norms(flat: torch.Tensor, bucket: int | None) -> np.ndarray:
    """The float32 L2 norm of the tensor, or of each bucket (computed in float64, rounded once);
    norms below ``QSGD_NORM_THRESHOLD`` are 0, and their elements are sent as zero."""
    if bucket is None:
        norms = np.array([torch.linalg.vector_norm(flat).item()], dtype=np.float32)
    else:
        rows = torch.nn.functional.pad(flat, (0, -flat.numel() % bucket)).view(-1, bucket)
        norms = torch.linalg.vector_norm(rows, dim=1).cpu().numpy().astype(np.float32)
    if not np.isfinite(norms).all():
        raise ValueError("the tensor's L2 norm overflows float32")
    norms[norms < QSGD_NORM_THRESHOLD] = 0.0
    return norms


def _per_element(norms: np.ndarray, count: int, bucket: int | None) -> torch.Tensor:
    """Each element's float32 norm, as float64."""
    norms64 = torch.from_numpy(norms.astype(np.float64))
    if bucket is None:
        return norms64.expand(count)
    return norms64.repeat_interleave(bucket)[:count]


def _qsgd_levels_of(
    v: torch.Tensor, levels: int, generator: torch.Generator | None, bucket: int | None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
    """(negative mask, ℓ as int64, float32 norms, each element's norm as float64) for the
    flattened tensor."""
    _check_levels(levels)
    flat = _float_input(v)
    u = torch.rand(flat.shape, generator=generator, dtype=torch.float64, device=flat.device)
    norms = _bucket_norms(flat, bucket)
    norm = _per_element(norms, flat.numel(), bucket).to(flat.device)
    zero = norm == 0.0
    # Rounding a norm to float32 is monotone, so norm ≥ max|v_i| still and r ≤ s; clamp anyway.
    r = (flat.abs() * (levels / torch.where(zero, 1.0, norm))).clamp_(0.0, float(levels))
    low = r.floor()
    ell = (low + (u < r - low).to(torch.float64)).to(torch.int64).masked_fill_(zero, 0)
    return (flat < 0) & (ell > 0), ell, norms, norm


def _qsgd_values(
    negative: torch.Tensor, ell: torch.Tensor, norm: torch.Tensor, levels: int
) -> torch.Tensor:
    magnitude = (ell.to(torch.float64) * (norm / levels)).to(torch.float32)
    return torch.where(negative, -magnitude, magnitude)


# -------------------------------------------------------------------------------------- min–max
def minmax_code_range(bits: int) -> tuple[int, int]:
    """(quant_min, quant_max) = (−2ⁿ⁻¹, 2ⁿ⁻¹ − 1), FLSim's integer range for n bits."""
    _check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def minmax_nbytes(shape: tuple[int, ...] | torch.Size, bits: int) -> int:
    """Bytes ``minmax_encode`` sends for a tensor of ``shape``: packed codes, the float32 scale and
    the int8 zero point, or 4 bytes per element for a tensor with ndim ≤ 1 (kept FP32)."""
    _check_bits(bits)
    count = math.prod(shape)
    if len(shape) <= 1:
        return 4 * count
    return packed_length(count, bits) + 5


def minmax_qparams(v: torch.Tensor, bits: int) -> tuple[np.float32, int]:
    """(scale, zero point) of torch's ``MinMaxObserver`` on ``v`` as FLSim configures it; an empty
    tensor gets (1, 0), the observer's default."""
    flat = _float_input(v).to(torch.float32)
    if flat.numel() == 0:
        return np.float32(1.0), 0
    quant_min, quant_max = minmax_code_range(bits)
    observer = MinMaxObserver(
        dtype=torch.qint8,
        qscheme=torch.per_tensor_affine,
        quant_min=quant_min,
        quant_max=quant_max,
        reduce_range=False,
    )
    observer(flat)
    scale, zero_point = observer.calculate_qparams()
    return np.float32(scale.item()), int(zero_point.item())


def minmax_quantize(v: torch.Tensor, bits: int) -> torch.Tensor:
    """FLSim's per-tensor min–max quantization to ``bits`` bits (torch's observer, quantizer and
    dequantizer); ndim ≤ 1 returned as FP32."""
    _check_bits(bits)
    if v.dim() <= 1:
        return _float_input(v).to(torch.float32).view(v.shape)
    codes, scale, zero_point = _flsim_codes(v, bits)
    return _flsim_values(codes, scale, zero_point).view(v.shape)


def minmax_encode(v: torch.Tensor, bits: int) -> tuple[np.ndarray, np.float32, int]:
    """(packed codes q − qmin, scale, zero point). For ndim ≤ 1 the bytes are the raw little-endian
    float32 values and scale = 1, zero point = 0 are placeholders that are not sent."""
    _check_bits(bits)
    if v.dim() <= 1:
        return _raw_float32(v), np.float32(1.0), 0
    codes, scale, zero_point = _flsim_codes(v, bits)
    offset = (codes.to(torch.int64) - minmax_code_range(bits)[0]).to(torch.uint8)
    return pack_codes(offset.cpu().numpy(), bits), scale, zero_point


def minmax_decode(
    codes: np.ndarray,
    scale: np.float32 | float,
    zero_point: int,
    shape: tuple[int, ...] | torch.Size,
    bits: int,
) -> torch.Tensor:
    """Inverse of ``minmax_encode``: a float32 tensor of ``shape``."""

    def values(offset: torch.Tensor) -> torch.Tensor:
        scale32 = np.float32(scale)
        if not (np.isfinite(scale32) and scale32 > 0):
            raise ValueError(f"min–max scale must be finite and > 0, got {scale}")
        quant_min, quant_max = minmax_code_range(bits)
        if not quant_min <= int(zero_point) <= quant_max:
            raise ValueError(
                f"min–max zero point must lie in [{quant_min}, {quant_max}], got {zero_point}"
            )
        return _flsim_values((offset + quant_min).to(torch.int8), scale32, int(zero_point))

    return _decode_grid(codes, shape, bits, values)


def _flsim_codes(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, np.float32, int]:
    """int8 codes of ``torch.quantize_per_tensor`` with the observer's qparams, clamped to the
    n-bit range (see the module docstring), with the scale and zero point."""
    scale, zero_point = minmax_qparams(v, bits)
    flat = _float_input(v).to(torch.float32)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.int8), scale, zero_point
    quantized = torch.quantize_per_tensor(flat, float(scale), zero_point, torch.qint8)
    return quantized.int_repr().clamp_(*minmax_code_range(bits)), scale, zero_point


def _flsim_values(codes: torch.Tensor, scale: np.float32, zero_point: int) -> torch.Tensor:
    """torch's own dequantization of int8 ``codes`` (bit for bit what FLSim's receiver gets)."""
    quantized = torch._make_per_tensor_quantized_tensor(codes, float(scale), zero_point)
    return quantized.dequantize()


def _raw_float32(v: torch.Tensor) -> np.ndarray:
    raw = _float_input(v).to(torch.float32).cpu().numpy().astype("<f4")
    return raw.view(np.uint8).copy()


def _decoded_shape(shape: tuple[int, ...] | torch.Size, bits: int) -> tuple[tuple[int, ...], int]:
    _check_bits(bits)
    shape = tuple(int(d) for d in shape)
    return shape, math.prod(shape)


def _raw_decode(codes: np.ndarray, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    stream = _check_stream(codes, 4 * count)
    return torch.from_numpy(stream.view("<f4").astype(np.float32)).view(shape)


# ---------------------------------------------------------------------------- anchored min–max


def anchored_minmax_nbytes(shape: tuple[int, ...] | torch.Size, bits: int) -> int:
    """Bytes ``anchored_minmax_encode`` sends for a tensor of ``shape``: packed codes + min + max
    (float32), or 4 bytes per element for a tensor with ndim ≤ 1 (kept FP32, no min/max sent)."""
    _check_bits(bits)
    count = math.prod(shape)
    if len(shape) <= 1:
        return 4 * count
    return packed_length(count, bits) + 8


def anchored_minmax_quantize(v: torch.Tensor, bits: int) -> torch.Tensor:
    """The anchored per-tensor min–max grid (before issue 34); ndim ≤ 1 returned as FP32."""
    _check_bits(bits)
    if v.dim() <= 1:
        return _float_input(v).to(torch.float32).view(v.shape)
    codes, lo, hi = _anchored_codes(v, bits)
    return _anchored_values(codes, lo, hi, bits).view(v.shape)


def anchored_minmax_encode(v: torch.Tensor, bits: int) -> tuple[np.ndarray, np.float32, np.float32]:
    """(packed codes, min, max). For ndim ≤ 1 the bytes are the raw little-endian float32 values
    and min = max = 0 are placeholders that are not sent (see ``anchored_minmax_nbytes``)."""
    _check_bits(bits)
    if v.dim() <= 1:
        return _raw_float32(v), np.float32(0), np.float32(0)
    codes, lo, hi = _anchored_codes(v, bits)
    return pack_codes(codes.to(torch.uint8).cpu().numpy(), bits), np.float32(lo), np.float32(hi)


def anchored_minmax_decode(
    codes: np.ndarray,
    lo: np.float32 | float,
    hi: np.float32 | float,
    shape: tuple[int, ...] | torch.Size,
    bits: int,
) -> torch.Tensor:
    """Inverse of ``anchored_minmax_encode``: a float32 tensor of ``shape``."""

    def values(q: torch.Tensor) -> torch.Tensor:
        lo32, hi32 = np.float32(lo), np.float32(hi)
        if not (np.isfinite(lo32) and np.isfinite(hi32) and lo32 <= hi32):
            raise ValueError(f"min–max range must be finite with min <= max, got [{lo}, {hi}]")
        return _anchored_values(q, float(lo32), float(hi32), bits)

    return _decode_grid(codes, shape, bits, values)


def _decode_grid(
    codes: np.ndarray,
    shape: tuple[int, ...] | torch.Size,
    bits: int,
    values: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """What both min–max decoders share: raw float32 for ndim ≤ 1, else the stream's length
    checked, its codes unpacked (int64) and mapped by ``values`` (which checks its side values)."""
    shape, count = _decoded_shape(shape, bits)
    if len(shape) <= 1:
        return _raw_decode(codes, count, shape)
    stream = _check_stream(codes, packed_length(count, bits))
    q = torch.from_numpy(unpack_codes(stream, count, bits).astype(np.int64))
    return values(q).view(shape)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"min–max bits must be an int in [1, 8], got {bits!r}")


def _anchored_codes(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, float, float]:
    flat = _float_input(v)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.int64), 0.0, 0.0
    # v is float32 on the wire, so its min and max are exact float32 values.
    flat = flat.to(torch.float32).to(torch.float64)
    lo, hi = float(flat.min()), float(flat.max())
    top = 2**bits - 1
    if hi == lo:
        return torch.zeros(flat.shape, dtype=torch.int64), lo, hi
    q = torch.round((flat - lo) * (top / (hi - lo))).clamp_(0, top)
    return q.to(torch.int64), lo, hi


def _anchored_values(q: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    step = (hi - lo) / (2**bits - 1)
    return (lo + q.to(torch.float64) * step).to(torch.float32)


def _check_stream(codes: np.ndarray, expected: int) -> np.ndarray:
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise TypeError("codes must be a uint8 numpy array")
    stream = np.ascontiguousarray(codes.reshape(-1))
    if stream.size != expected:
        raise ValueError(f"expected {expected} bytes of codes, got {stream.size}")
    return stream
