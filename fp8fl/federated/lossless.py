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

With ``lossless = "context"``, an uplink run may also be coded against a *reference*: the codes of
the same tensor in the downlink message the client received (both ends hold them: the client
decoded them, the server sent them). The symbol is the change ``(code - reference) mod 2^bits``,
modelled per context ``reference >> shift`` (``shift`` = 0: one model per reference code, the
order-1 model; ``shift`` = bits: one model for all changes), each context with its own static
model, sent alongside; the encoder picks the ``shift`` whose estimated size (order-0 entropy of
the changes per context, plus the tables) is smallest. Mode 2 (context rANS) is ``shift`` u1, then
per context present in the reference (ascending) its bitmap and frequencies as in mode 1, then the
word count u4 and the words; the symbols are coded context by context, each in tensor order.

The encoder keeps the smallest of the modes, so a run never costs more than five bytes over
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

from fp8fl.federated.seams import ArraySpec, Codec, CodeRun, DescribesCodes
from fp8fl.numerics.codec import pack_codes, packed_length, unpack_codes

__all__ = ["code_runs", "compress", "decompress"]

STORED, ANS, CONTEXT = 0, 1, 2
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
def compress(
    array: np.ndarray, runs: Sequence[CodeRun], reference: np.ndarray | None = None
) -> np.ndarray:
    """The coded form (uint8) of one integer array of a codec, run by run; with a ``reference``
    (the same array of the downlink the receiver holds), runs may be coded against it."""
    stream = np.ascontiguousarray(array).view(np.uint8)
    known = None if reference is None else np.ascontiguousarray(reference).view(np.uint8)
    if known is not None and known.size != stream.size:
        raise ValueError(f"the reference has {known.size} bytes, the array {stream.size}")
    parts, offset = [], 0
    for run in runs:
        size = packed_length(run.count, run.bits)
        ref = None if known is None else known[offset : offset + size]
        parts.append(_compress_run(stream[offset : offset + size], run, ref))
        offset += size
    return np.frombuffer(b"".join(parts), np.uint8)


def _compress_run(packed: np.ndarray, run: CodeRun, reference: np.ndarray | None) -> bytes:
    crc = np.array([zlib.crc32(packed)], U4).tobytes()
    stored = bytes([STORED]) + crc + packed.tobytes()
    if run.count == 0:
        return stored
    symbols = unpack_codes(packed, run.count, run.bits)
    coded = [stored, bytes([ANS]) + crc + _ans_order0(symbols, run.bits)]
    if reference is not None:
        known = unpack_codes(reference, run.count, run.bits)
        coded.append(bytes([CONTEXT]) + crc + _ans_context(symbols, known, run.bits))
    return min(coded, key=len)


def _ans_order0(symbols: np.ndarray, bits: int) -> bytes:
    """Mode 1 after its header: one static model of the run's codes, then the words."""
    table, model = _table(np.bincount(symbols, minlength=1 << bits))
    return table + _words([(symbols, model)])


def _ans_context(symbols: np.ndarray, reference: np.ndarray, bits: int) -> bytes:
    """Mode 2 after its header: the changes from ``reference``, one static model per context."""
    changes = _changes(symbols, reference, bits)
    shift = _best_shift(changes, reference, bits)
    groups = _context_groups(reference, shift)
    tables, segments = [bytes([shift])], []
    for positions in groups:
        part = changes[positions]
        table, model = _table(np.bincount(part, minlength=1 << bits))
        tables.append(table)
        segments.append((part, model))
    return b"".join(tables) + _words(segments)


def _changes(symbols: np.ndarray, reference: np.ndarray, bits: int) -> np.ndarray:
    return ((symbols.astype(np.int32) - reference.astype(np.int32)) % (1 << bits)).astype(np.int32)


def _best_shift(changes: np.ndarray, reference: np.ndarray, bits: int) -> int:
    """The context ``reference >> shift`` with the smallest estimated size: the order-0 entropy
    of the changes in each context plus its table (bitmap, two bytes per present symbol). One
    joint histogram of (reference code, change); a coarser context sums its rows."""
    alphabet = 1 << bits
    bitmap = 8 * ((alphabet + 7) // 8)
    joint = np.bincount(reference.astype(np.int64) * alphabet + changes, minlength=alphabet**2)
    joint = joint.reshape(alphabet, alphabet)

    def size(shift: int) -> float:
        counts = joint.reshape(alphabet >> shift, 1 << shift, alphabet).sum(axis=1)
        counts = counts[counts.sum(axis=1) > 0]
        totals = counts.sum(axis=1, keepdims=True)
        present = counts > 0
        information = -np.sum(counts[present] * np.log2((counts / totals)[present]))
        return float(information + bitmap * len(counts) + 16 * present.sum())

    return min(range(bits + 1), key=size)


def _context_groups(reference: np.ndarray, shift: int) -> list[np.ndarray]:
    """The positions of each context ``reference >> shift`` present, ascending, in tensor order
    (one-byte contexts: numpy's stable sort is a radix sort)."""
    contexts = (reference >> shift).astype(np.uint8)
    order = np.argsort(contexts, kind="stable")
    counts = np.bincount(contexts)
    return np.split(order, np.cumsum(counts[counts > 0])[:-1])


def _table(counts: np.ndarray) -> tuple[bytes, object]:
    """The sent form of a static model of ``counts`` (bitmap of the present symbols, one u2
    frequency each, scaled so the largest is 65535, at least 1) and the model it stands for."""
    present = counts > 0
    frequencies = np.maximum(1, counts[present].astype(np.int64) * FREQUENCY_MAX // counts.max())
    table = np.packbits(present, bitorder="little").tobytes() + frequencies.astype(U2).tobytes()
    return table, _model(present, frequencies)


def _words(segments: list[tuple[np.ndarray, object]]) -> bytes:
    """The word count u4 and the 32-bit ANS words of the segments (each symbols and their
    model), coded so that the decoder reads them in order."""
    coder = constriction.stream.stack.AnsCoder()
    for symbols, model in reversed(segments):  # a stack: the first segment is pushed last
        coder.encode_reverse(symbols.astype(np.int32), model)
    words = coder.get_compressed()
    return np.array([words.size], U4).tobytes() + words.astype(U4).tobytes()


def _model(present: np.ndarray, frequencies: np.ndarray) -> object:
    """The categorical model both ends build from the sent frequencies (absent symbols get
    constriction's smallest probability)."""
    probabilities = np.zeros(present.size, np.float64)
    probabilities[present] = frequencies
    return constriction.stream.model.Categorical(probabilities, perfect=False)


# ---------------------------------------------------------------------------- decoding
def decompress(
    blob: np.ndarray, runs: Sequence[CodeRun], spec: ArraySpec, reference: np.ndarray | None = None
) -> np.ndarray:
    """The codec's array ``spec`` from its coded form ``blob`` (a 1-D uint8 array), with the
    ``reference`` the sender coded against, if any; raises ``ValueError`` naming the array and
    the tensor when the payload is corrupt or truncated."""
    reader = _Reader(blob.tobytes(), spec.name)
    known = None if reference is None else np.ascontiguousarray(reference).view(np.uint8)
    parts, offset = [], 0
    for run in runs:
        reader.tensor = run.name
        size = packed_length(run.count, run.bits)
        ref = None if known is None else known[offset : offset + size]
        parts.append(_decompress_run(reader, run, ref))
        offset += size
    reader.tensor = None
    if reader.remaining():
        raise reader.error(f"{reader.remaining()} trailing bytes after the last tensor")
    return np.frombuffer(b"".join(parts), np.uint8).view(spec.dtype).copy()


def _decompress_run(reader: _Reader, run: CodeRun, reference: np.ndarray | None) -> bytes:
    size = packed_length(run.count, run.bits)
    mode = reader.take(1, "mode")[0]
    (crc,) = np.frombuffer(reader.take(4, "checksum"), U4)
    if mode == STORED:
        packed, exhausted = reader.take(size, "stored codes"), True
    elif mode == ANS and run.count > 0:
        packed, exhausted = _decode_ans(reader, run)
    elif mode == CONTEXT and reference is None:
        raise reader.error("is coded against a downlink reference this receiver lacks")
    elif mode == CONTEXT and run.count > 0:
        packed, exhausted = _decode_context(reader, run, reference)
    else:
        raise reader.error(f"unknown mode {mode}: corrupt payload")
    if not exhausted or zlib.crc32(packed) != int(crc):
        raise reader.error("checksum mismatch: corrupt payload")
    return packed


def _decode_ans(reader: _Reader, run: CodeRun) -> tuple[bytes, bool]:
    """The packed codes of a rANS run, and whether the coder ended empty (as it must)."""
    model = _read_table(reader, run.bits)
    symbols, exhausted = _read_words(reader, [(run.count, model)])
    return pack_codes(symbols[0].astype(np.uint8), run.bits).tobytes(), exhausted


def _decode_context(reader: _Reader, run: CodeRun, reference: np.ndarray) -> tuple[bytes, bool]:
    """The packed codes of a run coded against ``reference`` (packed), and whether the coder
    ended empty."""
    (shift,) = reader.take(1, "context shift")
    if shift > run.bits:
        raise reader.error(f"context shift {shift} exceeds the {run.bits}-bit codes")
    known = unpack_codes(reference, run.count, run.bits)
    groups = _context_groups(known, shift)
    models = [_read_table(reader, run.bits) for _ in groups]
    decoded, exhausted = _read_words(reader, [(g.size, m) for g, m in zip(groups, models)])
    changes = np.empty(run.count, np.int32)
    for positions, part in zip(groups, decoded):
        changes[positions] = part
    codes = (known.astype(np.int32) + changes) % (1 << run.bits)
    return pack_codes(codes.astype(np.uint8), run.bits).tobytes(), exhausted


def _read_table(reader: _Reader, bits: int) -> object:
    """The model of one sent table (bitmap, frequencies), checked."""
    alphabet = 1 << bits
    bitmap = np.frombuffer(reader.take((alphabet + 7) // 8, "symbol bitmap"), np.uint8)
    present = np.unpackbits(bitmap, bitorder="little").astype(bool)
    if present[alphabet:].any() or not present.any():
        raise reader.error("symbol bitmap is corrupt")
    present = present[:alphabet]
    frequencies = np.frombuffer(reader.take(2 * int(present.sum()), "frequencies"), U2)
    if not frequencies.all():
        raise reader.error("a present symbol has frequency 0: corrupt payload")
    return _model(present, frequencies.astype(np.int64))


def _read_words(
    reader: _Reader, segments: list[tuple[int, object]]
) -> tuple[list[np.ndarray], bool]:
    """The symbols of each segment (count, model) from the word count and the ANS words, and
    whether the coder ended empty (as it must)."""
    (count,) = np.frombuffer(reader.take(4, "word count"), U4)
    words = np.frombuffer(reader.take(4 * int(count), "ANS words"), U4).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = [np.asarray(coder.decode(model, size)) for size, model in segments]
        exhausted = coder.is_empty()
    except Exception as err:  # constriction rejects some malformed word streams itself
        raise reader.error(f"ANS decoding failed ({err})") from None
    return symbols, exhausted


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
