"""The wire codec, used for both directions: float32 tensor <-> packed FP8 codes (+ α, sent apart).

A code is sign | biased exponent p | mantissa k, MSB first: for E4M3 that is bit-for-bit the layout of
``torch.float8_e4m3fn`` except that 0x7F/0xFF mean ±α here (all 256 codes are finite). Formats
narrower than 8 bits are packed densely, MSB first: two E2M1 codes per byte, four 6-bit codes in
three bytes; unused trailing bits are zero and are checked on decode.

    decode(encode(x, α, stochastic=False), α) == quantize(x, α)      exactly
    decode(all codes) == grid(α)                                      exactly
    encode(decode(c)) == c                                            for every code
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fp8fl.numerics.formats import E4M3, FloatFormat, as_alpha
from fp8fl.numerics.gridtables import grid_tables
from fp8fl.numerics.kernels import decode_codes
from fp8fl.numerics.quant import round_tensor

__all__ = ["check_shape", "decode", "encode", "pack_codes", "packed_length", "unpack_codes"]


def packed_length(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits each."""
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack one-code-per-byte ``codes`` (low ``bits`` bits used) into a dense MSB-first stream."""
    if bits == 8:
        return codes
    per_code = np.unpackbits(codes.reshape(-1, 1), axis=1)[:, 8 - bits :]
    return np.packbits(per_code.reshape(-1))


def unpack_codes(stream: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``; rejects a stream whose padding bits are not zero."""
    if bits == 8:
        return stream
    all_bits = np.unpackbits(stream)
    if all_bits[count * bits :].any():
        raise ValueError("packed code stream has non-zero padding bits: it is corrupt or truncated")
    per_code = np.zeros((count, 8), dtype=np.uint8)
    per_code[:, 8 - bits :] = all_bits[: count * bits].reshape(count, bits)
    return np.packbits(per_code, axis=1).reshape(count)


def encode(
    x: torch.Tensor,
    alpha: float | torch.Tensor,
    fmt: FloatFormat = E4M3,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Quantize ``x`` (float32, any shape, flattened in C order) to packed uint8 codes."""
    result = round_tensor(x, alpha, fmt, stochastic, generator, want_codes=True, want_values=False)
    return pack_codes(result.codes.cpu().numpy(), fmt.bits)


def decode(
    codes: np.ndarray,
    alpha: float | torch.Tensor,
    fmt: FloatFormat = E4M3,
    shape: Sequence[int] | torch.Size | None = None,
) -> torch.Tensor:
    """Turn packed codes back into a float32 tensor of ``shape`` (1-D when omitted)."""
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"codes must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, got {type(fmt).__name__}")
    stream = np.ascontiguousarray(codes.reshape(-1))
    if shape is None:
        if fmt.bits != 8:
            raise ValueError(
                f"decoding packed {fmt.name} codes needs shape=: the element count cannot be "
                "recovered from the byte length"
            )
        shape = (stream.size,)
    shape = check_shape(shape)
    count = math.prod(shape)
    expected = packed_length(count, fmt.bits)
    if stream.size != expected:
        raise ValueError(
            f"{stream.size} bytes of {fmt.name} codes do not match shape {tuple(shape)}: "
            f"{count} codes of {fmt.bits} bits need {expected} bytes"
        )
    tables = grid_tables(fmt, as_alpha(alpha, fmt))
    return decode_codes(unpack_codes(stream, count, fmt.bits), tables).view(shape)


def check_shape(shape: Sequence[int] | torch.Size) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints, or a TypeError/ValueError naming it."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"shape must hold non-negative ints, got {tuple(shape)!r}")
    return tuple(int(d) for d in dims)
