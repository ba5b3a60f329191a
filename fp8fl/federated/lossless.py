"""The lossless stage: entropy coding of a message's integer arrays after any codec.

With the run-config key ``lossless = true``, ``StateLayout.pack`` replaces each integer array of
the codec (minifloat codes, int-B codes, block-FP mantissas and exponents) by a uint8 array that
codes it tensor by tensor, and ``StateLayout.unpack`` restores the codec's exact array before any
other check runs, so models are bit-identical with and without the stage. Float arrays (scales,
dense tensors, clips, the FP32 codec's weights) travel unchanged.

Each ``CodeRun`` (one tensor's codes, ``bits`` wide; see ``DescribesCodes``) is coded with rANS
(``constriction``'s ``AnsCoder``, Rust) under a static order-0 model of that run's codes, sent
alongside. One coded array is, per run in order (little-endian):

* ``mode`` u1: 0 = stored, 1 = rANS; ``crc32`` u4 of the run's packed bytes;
* stored: the packed bytes unchanged;
* rANS: a presence bitmap of the 2^bits symbols (bit ``s % 8`` of byte ``s // 8``); one u2
  frequency per present symbol (counts scaled so the largest is 65535, at least 1); the number of
  32-bit ANS words u4; the words.

The encoder keeps the smaller of the two modes, so a run never costs more than five bytes over
its packed size. The decoder checks every length against what remains, the bitmap and
frequencies, that the ANS coder ends empty and the CRC of every run, and raises ``ValueError``
naming the array and the tensor (``StateLayout`` turns it into a ``WireError``): a corrupted or
truncated payload is rejected, never decoded into a wrong model. Symbol counts are never sent:
both ends know them from the layout.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import constriction
import numpy as np

from fp8fl.methods.seams import ArraySpec, Codec, CodeRun, DescribesCodes
from fp8fl.numerics.codec import pack_codes, packed_length, unpack_codes

__all__ = ["code_runs", "compress", "decompress"]

STORED, ANS = 0, 1
FREQUENCY_MAX = 0xFFFF
U2, U4 = np.dtype("<u2"), np.dtype("<u4")


def code_runs(
    codec: Codec, specs: Sequence[ArraySpec], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[CodeRun, ...]]:
    """The runs of every one-byte integer array among ``specs`` (the codec's description, or one
    run of bytes named after the array); other arrays are absent (they travel unchanged)."""
    described = codec.code_runs(shapes) if isinstance(codec, DescribesCodes) else {}
    runs: dict[str, tuple[CodeRun, ...]] = {}
    for spec in specs:
        if spec.dtype.kind not in "iu" or spec.dtype.itemsize != 1:
            continue
        runs[spec.name] = tuple(described.get(spec.name, [CodeRun(spec.name, spec.size, 8)]))
        covered = sum(packed_length(run.count, run.bits) for run in runs[spec.name])
        if covered != spec.size or not all(1 <= run.bits <= 8 for run in runs[spec.name]):
            raise ValueError(
                f"codec {codec.name!r}: the code runs of {spec.name} cover {covered} bytes of "
                f"{spec.size} (or a run is wider than 8 bits)"
            )
    return runs


# ---------------------------------------------------------------------------- encoding
def compress(array: np.ndarray, runs: Sequence[CodeRun]) -> np.ndarray:
    """The coded form (uint8) of one integer array of a codec, run by run."""
    stream = np.ascontiguousarray(array).view(np.uint8)
    parts, offset = [], 0
    for run in runs:
        size = packed_length(run.count, run.bits)
        parts.append(_compress_run(stream[offset : offset + size], run))
        offset += size
    return np.frombuffer(b"".join(parts), np.uint8)


def _compress_run(packed: np.ndarray, run: CodeRun) -> bytes:
    crc = np.array([zlib.crc32(packed)], U4).tobytes()
    stored = bytes([STORED]) + crc + packed.tobytes()
    if run.count == 0:
        return stored
    symbols = unpack_codes(packed, run.count, run.bits)
    counts = np.bincount(symbols, minlength=1 << run.bits).astype(np.int64)
    present = counts > 0
    frequencies = np.maximum(1, counts[present] * FREQUENCY_MAX // counts.max())
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(present, frequencies))
    words = coder.get_compressed()
    coded = b"".join(
        [
            bytes([ANS]),
            crc,
            np.packbits(present, bitorder="little").tobytes(),
            frequencies.astype(U2).tobytes(),
            np.array([words.size], U4).tobytes(),
            words.astype(U4).tobytes(),
        ]
    )
    return coded if len(coded) < len(stored) else stored


def _model(present: np.ndarray, frequencies: np.ndarray) -> object:
    """The categorical model both ends build from the sent frequencies (absent symbols get
    constriction's smallest probability)."""
    probabilities = np.zeros(present.size, np.float64)
    probabilities[present] = frequencies
    return constriction.stream.model.Categorical(probabilities, perfect=False)


# ---------------------------------------------------------------------------- decoding
def decompress(blob: np.ndarray, runs: Sequence[CodeRun], spec: ArraySpec) -> np.ndarray:
    """The codec's array ``spec`` from its coded form ``blob`` (a 1-D uint8 array); raises
    ``ValueError`` naming the array and the tensor when the payload is corrupt or truncated."""
    reader = _Reader(blob.tobytes(), spec.name)
    parts = []
    for run in runs:
        reader.tensor = run.name
        parts.append(_decompress_run(reader, run))
    reader.tensor = None
    if reader.remaining():
        raise reader.error(f"{reader.remaining()} trailing bytes after the last tensor")
    return np.frombuffer(b"".join(parts), np.uint8).view(spec.dtype).copy()


def _decompress_run(reader: _Reader, run: CodeRun) -> bytes:
    size = packed_length(run.count, run.bits)
    mode = reader.take(1, "mode")[0]
    (crc,) = np.frombuffer(reader.take(4, "checksum"), U4)
    if mode == STORED:
        packed, exhausted = reader.take(size, "stored codes"), True
    elif mode == ANS and run.count > 0:
        packed, exhausted = _decode_ans(reader, run)
    else:
        raise reader.error(f"unknown mode {mode}: corrupt payload")
    if not exhausted or zlib.crc32(packed) != int(crc):
        raise reader.error("checksum mismatch: corrupt payload")
    return packed


def _decode_ans(reader: _Reader, run: CodeRun) -> tuple[bytes, bool]:
    """The packed codes of a rANS run, and whether the coder ended empty (as it must)."""
    alphabet = 1 << run.bits
    bitmap = np.frombuffer(reader.take((alphabet + 7) // 8, "symbol bitmap"), np.uint8)
    present = np.unpackbits(bitmap, bitorder="little").astype(bool)
    if present[alphabet:].any() or not present.any():
        raise reader.error("symbol bitmap is corrupt")
    present = present[:alphabet]
    frequencies = np.frombuffer(reader.take(2 * int(present.sum()), "frequencies"), U2)
    if not frequencies.all():
        raise reader.error("a present symbol has frequency 0: corrupt payload")
    (count,) = np.frombuffer(reader.take(4, "word count"), U4)
    words = np.frombuffer(reader.take(4 * int(count), "ANS words"), U4).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_model(present, frequencies.astype(np.int64)), run.count)
        exhausted = coder.is_empty()
    except Exception as err:  # constriction rejects some malformed word streams itself
        raise reader.error(f"ANS decoding failed ({err})") from None
    return pack_codes(np.asarray(symbols).astype(np.uint8), run.bits).tobytes(), exhausted


class _Reader:
    """A cursor over a coded array that names the array and tensor in every error."""

    def __init__(self, data: bytes, array: str) -> None:
        self.data, self.array, self.offset = data, array, 0
        self.tensor: str | None = None

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining():
            raise self.error(f"truncated: {what} need {size} bytes, {self.remaining()} remain")
        self.offset += size
        return self.data[self.offset - size : self.offset]

    def error(self, problem: str) -> ValueError:
        where = self.array if self.tensor is None else f"{self.array}, tensor {self.tensor}"
        return ValueError(f"{where}: lossless payload {problem}")
