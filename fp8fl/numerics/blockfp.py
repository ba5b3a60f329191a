"""SWALP-style block floating point, as used by LPT-FL for low-precision local training.

LPT-FL (Li et al., "Low Precision Local Training is Enough for Federated Learning", NeurIPS 2024;
code digbangbang/LPT-FL, ``quantizer.py``) trains each client with SWALP's quantizer (Yang et al.,
"SWALP: Stochastic Weight Averaging in Low-Precision Training", ICML 2019). A block X gets b bits
per value (sign included) and one shared 8-bit exponent:

    e = clamp(floor(log2 max|X|), −128, 127)
    i = clamp(round(X·2^(b−2−e)), −2^(b−1), 2^(b−1)−1)        round: half to even, or floor(z + u)
    Q(X) = i·2^(e−(b−2))

Blocks (``block``): "tensor" = one exponent per tensor; "row" = one per index of dim 0 (output row /
output channel); "kernel" = one per (dim 0, dim 1) slice, reducing over the trailing dims — for a
conv weight [O, I, kh, kw] one per kernel, and for a 2-D Linear weight [O, I] one per *element*,
which is what the authors' ``small_block='FC', block_dim='BC'`` does in effect (``view(O*I, -1)``);
"element" = one per value. Every block is a contiguous run of the C-order flattening.

Choices where the paper and the code are silent or unusable, made here:

- Tensors with at most one dim are one block under "kernel" and "row" (the authors' ``FC``
  threshold: biases and norm scales get one exponent per tensor); "element" is always per value.
- No ±1e−10 clamp away from zero (the code's first step): zeros stay zeros. An all-zero block
  quantizes to zeros and sends e = −128 (= clamp(log2 0 = −∞)).
- Nearest is half to even (``torch.round``, as the code's ``round_``). Stochastic rounding is
  floor(z + u) with one u per element, drawn as ``torch.rand(x.shape, dtype=float32,
  generator=generator, device=x.device)`` in C order (zeros included), so u = k·2^−24 and the
  probability of rounding up equals the fractional part of z to within 2^−24.
- At e = 127 the lowest mantissa is −(2^(b−1)−1): −2^(b−1)·2^(127−(b−2)) = −2^128 is not a float32.
  With that, every grid value is exactly a float32 (steps are ≥ 2^−142 > 2^−149). The arithmetic
  is float64 and exact for b ≤ 16: nearest for any finite input (float64 inputs beyond float32's
  range clamp e and saturate), stochastic for inputs with ≤ 24-bit significands (float32 and
  narrower; the authors' float32 code instead overflows 2^(b−2−e) for tiny blocks).
- Q is not always idempotent: a block whose most negative value rounds to i = −2^(b−1) has max
  2^(e+1), so re-quantizing it picks e + 1 and halves the block's resolution. ``on_grid`` therefore
  asks whether x is *representable* (some exponent and in-range mantissas fit every value of each
  block), not whether Q(x) == x.
- Wire layout (``bfp_encode``): mantissas as offset binary i + 2^(b−1), packed densely MSB first in
  C order by the codec's ``pack_codes`` (codes wider than 8 bits are split into equal chunks of at
  most 8 bits first, which gives the same dense stream); exponents as int8, one per block in block
  order. ``bfp_nbytes`` counts both (the paper's communication figures count mantissas only).
- Activations and errors (``BFPActErr``): one exponent per tensor, as in SWALP and the code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fp8fl.numerics.codec import check_shape, pack_codes, packed_length, unpack_codes

__all__ = [
    "BLOCKS",
    "EXP_MAX",
    "EXP_MIN",
    "BFPActErr",
    "BFPQuant",
    "bfp_decode",
    "bfp_encode",
    "bfp_encode_exact",
    "bfp_nbytes",
    "bfp_quantize",
    "block_layout",
    "on_grid",
]

BLOCKS = ("tensor", "kernel", "row", "element")
EXP_MIN, EXP_MAX = -128, 127  # the shared 8-bit exponent


# ----------------------------------------------------------------------------------- validation
def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in the range 2..16 (sign included), got {bits!r}")
    return int(bits)


def _check_block(block: object) -> str:
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}: expected one of {', '.join(BLOCKS)}")
    return str(block)


def _check_input(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return x.detach()


# --------------------------------------------------------------------------------------- blocks
def block_layout(shape: Sequence[int] | torch.Size, block: str) -> tuple[int, int]:
    """(number of blocks, values per block): each block is a contiguous run of the C order."""
    dims, block = check_shape(shape), _check_block(block)
    count = math.prod(dims)
    if block == "element":
        return count, 1
    if block == "tensor" or len(dims) <= 1:
        return 1, count
    lead = 2 if block == "kernel" else 1
    blocks = math.prod(dims[:lead])
    return blocks, math.prod(dims[lead:])


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """Exactly 2^k as float64 for integer k in [−1022, 1023], built from the bits."""
    return (k.to(torch.int64) + 1023).bitwise_left_shift_(52).view(torch.float64)


def _shared_exponents(peak: torch.Tensor) -> torch.Tensor:
    """e = clamp(floor(log2 peak), −128, 127) from each block's max|X|; a zero peak gives −128."""
    if peak.dtype not in (torch.float32, torch.float64):
        peak = peak.to(torch.float32)  # exact for float16 / bfloat16
    _, e = torch.frexp(peak)  # peak = f·2^e, f in [0.5, 1), so floor(log2 peak) = e − 1
    e = e.to(torch.int64).sub_(1).clamp_(EXP_MIN, EXP_MAX)
    return e.masked_fill_(peak == 0, EXP_MIN)


def _block_peaks(x: torch.Tensor, blocks: int, size: int) -> torch.Tensor:
    """max|X| per block (NaN or inf when the block holds one); 0 for an empty block."""
    if size == 0:
        return torch.zeros(blocks, dtype=x.dtype, device=x.device)
    mags = x.reshape(blocks, size).abs()
    return mags.reshape(blocks) if size == 1 else mags.amax(dim=1)


def _check_finite(x: torch.Tensor, peaks: torch.Tensor) -> None:
    if not bool(torch.isfinite(peaks).all()):  # a block peak is NaN or inf iff its block holds one
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"x must be finite: it holds {nan} NaN and {inf} inf values")


def _saturate(z: torch.Tensor, e: torch.Tensor, bits: int) -> None:
    """Clamp integer mantissas in place to [−2^(b−1), 2^(b−1)−1]; at e = 127 the low end is
    −(2^(b−1)−1), since −2^(b−1)·2^(127−(b−2)) = −2^128 is not a float32."""
    top = 2 ** (bits - 1) - 1
    z.clamp_(-top - 1, top)
    at_max = e == EXP_MAX
    if bool(at_max.any()):
        z[at_max] = z[at_max].clamp_(min=-top)


def _quantize_blocks(
    x: torch.Tensor, bits: int, block: str, stochastic: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued float64 mantissas [blocks, size] and int64 exponents [blocks] of ``x``.

    Raises ValueError for non-finite ``x``. z = X·2^(b−2−e) scales by a power of two within
    float64's range; for a 24-bit X, z + u with u = k·2^−24 is exact, or too far below an integer
    for its rounding to change floor(z + u), so the stochastic result is exact too."""
    blocks, size = block_layout(x.shape, block)
    peaks = _block_peaks(x, blocks, size)
    _check_finite(x, peaks)
    e = _shared_exponents(peaks)
    z = x.to(torch.float64, copy=True).reshape(blocks, size)
    z.mul_(_pow2(bits - 2 - e).unsqueeze(1))
    if stochastic:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float32, device=x.device)
        z.add_(u.reshape(blocks, size)).floor_()
    else:
        z.round_()  # half to even
    _saturate(z, e, bits)
    return z, e


def _values(z: torch.Tensor, e: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """i·2^(e−(b−2)) as float32 (exact) in ``shape``, from mantissas ``z`` (overwritten); zeros
    come out as +0 so that the decoder, which cannot know a sign of zero, agrees bit for bit."""
    z.mul_(_pow2(e - (bits - 2)).unsqueeze(1))
    return z.to(torch.float32).add_(0.0).view(shape)


# ------------------------------------------------------------------------------------ quantizer
def bfp_quantize(
    x: torch.Tensor,
    bits: int,
    block: str,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Q(x) onto the block floating-point grid: float32, same shape and device, no autograd."""
    bits, block, x = _check_bits(bits), _check_block(block), _check_input(x)
    with torch.no_grad():
        z, e = _quantize_blocks(x, bits, block, stochastic, generator)
        return _values(z, e, bits, tuple(x.shape))


def on_grid(x: torch.Tensor, bits: int, block: str) -> bool:
    """Whether every value of ``x`` is exactly representable in the format, block by block.

    A block is representable when, for some exponent e in [−128, 127], every value is i·2^(e−(b−2))
    with i in the mantissa range. Only e0 = clamp(floor(log2 max|X|)) and e0 − 1 can work (a larger
    e gives a subset of e0's grid within the range; e0 − 1 covers blocks whose max is −2^e0, which
    Q produces). Non-finite values are not representable: the answer is then False."""
    bits, block = _check_bits(bits), _check_block(block)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    x = x.detach()
    blocks, size = block_layout(x.shape, block)
    if blocks * size == 0:
        return True
    peaks = _block_peaks(x, blocks, size)
    if not bool(torch.isfinite(peaks).all()):
        return False
    with torch.no_grad():
        e0 = _shared_exponents(peaks)
        z = x.to(torch.float64).reshape(blocks, size)
        fits = _fits(z, e0, bits) | (_fits(z, e0 - 1, bits) & (e0 > EXP_MIN))
        return bool(fits.all())


def _fits(z: torch.Tensor, e: torch.Tensor, bits: int) -> torch.Tensor:
    """Per block: are all values of ``z`` integer multiples of 2^(e−(b−2)) in the mantissa range?"""
    top = 2 ** (bits - 1) - 1
    low = torch.where(e == EXP_MAX, -top, -top - 1).unsqueeze(1)
    i = z * _pow2(bits - 2 - e).unsqueeze(1)
    return ((i == torch.round(i)) & (i <= top) & (i >= low)).all(dim=1)


# ---------------------------------------------------------------------------------------- codec
def _chunk_width(bits: int) -> int:
    """The widest divisor of ``bits`` that is at most 8: codes are packed as chunks of this width."""
    return max(w for w in range(1, 9) if bits % w == 0)


def _pack_mantissas(codes: np.ndarray, bits: int) -> np.ndarray:
    width = _chunk_width(bits)
    if width == bits:
        return pack_codes(codes.astype(np.uint8, copy=False), bits)
    shifts = width * np.arange(bits // width - 1, -1, -1, dtype=np.int64)
    chunks = (codes[:, None] >> shifts) & ((1 << width) - 1)  # MSB chunk first
    return pack_codes(chunks.astype(np.uint8).reshape(-1), width)


def _unpack_mantissas(stream: np.ndarray, count: int, bits: int) -> np.ndarray:
    width = _chunk_width(bits)
    per_code = bits // width
    chunks = unpack_codes(stream, count * per_code, width).astype(np.int64)
    if per_code == 1:
        return chunks
    shifts = width * np.arange(per_code - 1, -1, -1, dtype=np.int64)
    return (chunks.reshape(count, per_code) << shifts).sum(axis=1)


def bfp_nbytes(shape: Sequence[int] | torch.Size, bits: int, block: str) -> int:
    """Exact wire bytes of ``bfp_encode``: packed mantissas plus one int8 exponent per block."""
    bits = _check_bits(bits)
    blocks, size = block_layout(shape, block)
    return packed_length(blocks * size, bits) + blocks


def bfp_encode(
    x: torch.Tensor,
    bits: int,
    block: str,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(packed b-bit offset-binary mantissas as a uint8 stream, int8 exponents, one per block)."""
    bits, block, x = _check_bits(bits), _check_block(block), _check_input(x)
    with torch.no_grad():
        z, e = _quantize_blocks(x, bits, block, stochastic, generator)
        return _encoded(z, e, bits)


def bfp_encode_exact(x: torch.Tensor, bits: int, block: str) -> tuple[np.ndarray, np.ndarray]:
    """``bfp_encode`` of a tensor that is already representable (``on_grid``), without rounding:
    each block takes the exponent that represents it, e0 or e0 − 1 (a block whose most negative
    value is −2^e0, which Q produces, needs e0 − 1, where re-quantizing would lose its last bit).
    Raises ValueError when ``x`` is not representable."""
    bits, block, x = _check_bits(bits), _check_block(block), _check_input(x)
    blocks, size = block_layout(x.shape, block)
    peaks = _block_peaks(x, blocks, size)
    _check_finite(x, peaks)
    with torch.no_grad():
        e0 = _shared_exponents(peaks)
        z = x.to(torch.float64).reshape(blocks, size)
        at_e0 = _fits(z, e0, bits)
        below = _fits(z, e0 - 1, bits) & (e0 > EXP_MIN)
        if not bool((at_e0 | below).all()):
            raise ValueError(f"x is not on the {bits}-bit {block!r} block floating-point grid")
        e = torch.where(at_e0, e0, e0 - 1)
        return _encoded(z * _pow2(bits - 2 - e).unsqueeze(1), e, bits)


def _encoded(z: torch.Tensor, e: torch.Tensor, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The wire form of integer mantissas ``z`` (overwritten) and exponents ``e``."""
    codes = z.reshape(-1).add_(1 << (bits - 1))  # offset binary, in [0, 2^b)
    codes = codes.to(torch.uint8 if bits <= 8 else torch.int64).cpu().numpy()
    return _pack_mantissas(codes, bits), e.cpu().numpy().astype(np.int8)


def bfp_decode(
    mantissas: np.ndarray,
    exponents: np.ndarray,
    shape: Sequence[int] | torch.Size,
    bits: int,
    block: str,
) -> torch.Tensor:
    """Inverse of ``bfp_encode``: decode(encode(x)) == bfp_quantize(x) bit for bit (CPU float32)."""
    bits, dims = _check_bits(bits), check_shape(shape)
    blocks, size = block_layout(dims, block)
    for name, arr in (("mantissas", mantissas), ("exponents", exponents)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if mantissas.dtype != np.uint8:
        raise TypeError(f"mantissas must be uint8, got {mantissas.dtype}")
    if not np.issubdtype(exponents.dtype, np.integer):
        raise TypeError(f"exponents must be integers, got {exponents.dtype}")
    stream = np.ascontiguousarray(mantissas.reshape(-1))
    count = blocks * size
    expected = packed_length(count, bits)
    if stream.size != expected:
        raise ValueError(
            f"mantissa stream has {stream.size} bytes but shape {dims} needs {expected}: "
            f"{count} mantissas of {bits} bits"
        )
    exps = exponents.reshape(-1).astype(np.int64)
    if exps.size != blocks:
        raise ValueError(
            f"got {exps.size} exponents but shape {dims} with block={block!r} has {blocks} blocks"
        )
    if exps.size and (exps.min() < EXP_MIN or exps.max() > EXP_MAX):
        raise ValueError(
            f"exponents must lie in [{EXP_MIN}, {EXP_MAX}], got values in "
            f"[{exps.min()}, {exps.max()}]"
        )
    codes = _unpack_mantissas(stream, count, bits).reshape(blocks, size)
    if size and bool(((codes == 0) & (exps == EXP_MAX)[:, None]).any()):
        raise ValueError(
            f"mantissa −2^{bits - 1} with exponent {EXP_MAX} would be −2^128, not a float32: "
            "the stream is corrupt"
        )
    z = torch.from_numpy(codes).to(torch.float64).sub_(1 << (bits - 1))
    return _values(z, torch.from_numpy(exps), bits, dims)


# ------------------------------------------------------------------------ activations and errors
class BFPActErr(torch.autograd.Function):
    """Identity whose forward output is Q(x) and whose backward gradient is Q(grad), per tensor.

    ``BFPActErr.apply(x, bits_act, bits_err, stochastic=False, generator=None)``; a bits of None
    leaves that direction in full precision. The gradient is returned in ``x``'s dtype."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        bits_act: int | None,
        bits_err: int | None,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        ctx.bits_err, ctx.stochastic, ctx.generator = bits_err, stochastic, generator
        ctx.in_dtype = x.dtype
        if bits_act is None:
            return x.clone()
        return bfp_quantize(x, bits_act, "tensor", stochastic, generator)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if ctx.bits_err is not None:
            grad = bfp_quantize(grad, ctx.bits_err, "tensor", ctx.stochastic, ctx.generator)
        return grad.to(ctx.in_dtype), None, None, None, None


class BFPQuant(torch.nn.Module):
    """Puts activations (forward) and errors (backward) on a per-tensor block-FP grid (SWALP)."""

    def __init__(
        self,
        bits_act: int | None,
        bits_err: int | None,
        stochastic: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.bits_act = None if bits_act is None else _check_bits(bits_act)
        self.bits_err = None if bits_err is None else _check_bits(bits_err)
        self.stochastic = bool(stochastic)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BFPActErr.apply(x, self.bits_act, self.bits_err, self.stochastic, self.generator)

    def extra_repr(self) -> str:
        return f"bits_act={self.bits_act}, bits_err={self.bits_err}, stochastic={self.stochastic}"
