"""Fused rounding kernels: numba on CPU, plain torch on any other device; both bit-identical.

Each kernel makes one pass over the data and evaluates the exact tables of ``gridtables``: a
magnitude code from a cell look-up on the float32 bit pattern (nearest), or the floor code plus a
uniform draw (stochastic, s·floor(x/s + u)), then writes codes and/or values. Non-finite inputs are
counted in the same pass so callers can reject them without another sweep over the data.

Uniform draws come from a counter-based SplitMix64 stream: u_i = top 24 bits of mix(key + i·γ)
times 2^-24, for element i of the flattened tensor and a 64-bit ``key`` drawn once per call from a
torch generator. Results therefore depend only on the generator's state: not on thread count or
device, and the stream costs about 0.1 ns per element instead of 3 ns for ``torch.rand``.
"""

from __future__ import annotations

import os
import threading
from functools import partial

import numba
import numpy as np
import torch
from numba import njit, prange

from fp8fl.numerics.gridtables import CellLookup, GridTables

__all__ = [
    "RoundResult",
    "decode_codes",
    "draw_key",
    "expected_squared_error",
    "fake_quant_grads",
    "round_to_grid",
    "set_threads",
    "uniform_stream",
]

_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_SIGN_BIT = np.int32(-(1 << 31))
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_U24 = 2.0**-24


@njit(inline="always")
def _uniform24(key, i):
    """The i-th draw of the SplitMix64 stream ``key``: a multiple of 2^-24 in [0, 1)."""
    z = key + np.uint64(i) * np.uint64(_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(40)) * _U24


def uniform_stream(key: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The same stream in torch int64 arithmetic (wrapping multiply, masked logical shifts)."""

    def signed(v: int) -> int:
        return v - (1 << 64) if v >= 1 << 63 else v

    def shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
        return (z >> k) & ((1 << (64 - k)) - 1)

    z = torch.arange(count, dtype=torch.int64, device=device) * signed(_GAMMA) + signed(key)
    z = (z ^ shift_right(z, 30)) * signed(_MIX1)
    z = (z ^ shift_right(z, 27)) * signed(_MIX2)
    z = z ^ shift_right(z, 31)
    return shift_right(z, 40).double() * _U24


def draw_key(generator: torch.Generator | None) -> int:
    """One 64-bit stream key from ``generator`` (torch's default generator when None)."""
    device = generator.device if generator is not None else "cpu"
    lo = torch.randint(0, 1 << 32, (2,), generator=generator, device=device, dtype=torch.int64)
    return (int(lo[0]) << 32) | int(lo[1])


@njit(inline="always")
def _magnitude_code(x, xbits, i, key, stochastic, shift, kmin, base, nxt, mags):
    """Magnitude code of x[i]: nearest (``base``/``nxt`` = nearest table) or stochastic (floor)."""
    a = xbits[i] & _ABS_MASK
    k = min(max((a >> shift) - kmin, 0), base.size - 1)
    c = base[k] + (1 if a >= nxt[k] else 0)
    u = _uniform24(key, i) if stochastic else 0.0
    if stochastic and c < mags.size - 1:
        # s·floor(x/s + u) with lo <= |x| < hi = lo + s: for x > 0 the magnitude rounds up iff
        # u·s >= hi − |x|, for x < 0 iff u·s < |x| − lo. Exact in float64 (24-bit factors).
        lo = np.float64(mags[c])
        hi = np.float64(mags[c + 1])
        ax = np.float64(abs(x[i]))
        us = u * (hi - lo)
        if xbits[i] < 0:
            c += 1 if us < ax - lo else 0
        else:
            c += 1 if us >= hi - ax else 0
    return c


@njit(parallel=True, cache=True, nogil=True)
def _codes_kernel(x, key, stochastic, shift, kmin, base, nxt, mags, sign_code, codes):
    """Round float32 ``x`` (1-D) to codes; returns the number of non-finite inputs."""
    xbits = x.view(np.int32)
    nonfinite = 0
    for i in prange(x.size):
        if (xbits[i] & _ABS_MASK) >= _INF_BITS:
            nonfinite += 1
        c = _magnitude_code(x, xbits, i, key, stochastic, shift, kmin, base, nxt, mags)
        codes[i] = c | (sign_code * (xbits[i] < 0))
    return nonfinite


@njit(inline="always")
def _value_at(x, xbits, i, key, stochastic, shift, kmin, base, nxt, mags, values):
    """Round x[i] to its grid value, into values[i]; 1 if x[i] is not finite, else 0."""
    v = mags[_magnitude_code(x, xbits, i, key, stochastic, shift, kmin, base, nxt, mags)]
    values[i] = -v if xbits[i] < 0 else v
    return 1 if (xbits[i] & _ABS_MASK) >= _INF_BITS else 0


@njit(parallel=True, cache=True, nogil=True)
def _values_kernel(x, key, stochastic, shift, kmin, base, nxt, mags, values):
    """Round float32 ``x`` (1-D) to grid values; returns the number of non-finite inputs."""
    xbits = x.view(np.int32)
    nonfinite = 0
    for i in prange(x.size):
        nonfinite += _value_at(x, xbits, i, key, stochastic, shift, kmin, base, nxt, mags, values)
    return nonfinite


@njit(inline="always")
def _nearest_bits_at(xbits, i, shift, kmin, nxt, pairs, vbits):
    """Nearest rounding of element i on bit patterns, without a branch (random signs and cells
    made the branchy form mispredict half the time): the cell's pair gives the value below or at
    or above its threshold, and the sign bit of x is or-ed in, which is -v for every table value.
    Returns 1 if x[i] is not finite, else 0."""
    xb = xbits[i]
    a = xb & _ABS_MASK
    k = min(max((a >> shift) - kmin, 0), nxt.size - 1)
    vbits[i] = pairs[2 * k + (a >= nxt[k])] | (xb & _SIGN_BIT)
    return a >= _INF_BITS


@njit(parallel=True, cache=True, nogil=True)
def _nearest_values_kernel(xbits, shift, kmin, nxt, pairs, vbits):
    """``_values_kernel`` for nearest rounding, on int32 views of x, of the values and of
    ``GridTables.nearest_cell_pairs`` (views taken inside a parallel kernel are not written back)."""
    nonfinite = 0
    for i in prange(xbits.size):
        nonfinite += _nearest_bits_at(xbits, i, shift, kmin, nxt, pairs, vbits)
    return nonfinite


@njit(cache=True, nogil=True)
def _nearest_values_serial(xbits, shift, kmin, nxt, pairs, vbits):
    """``_nearest_values_kernel`` on the calling thread: for a one-thread process, where a parallel
    launch costs about 0.1 ms whatever the size (QAT makes ten a step)."""
    nonfinite = 0
    for i in range(xbits.size):
        nonfinite += _nearest_bits_at(xbits, i, shift, kmin, nxt, pairs, vbits)
    return nonfinite


@njit(parallel=True, cache=True, nogil=True)
def _expected_error_kernel(w, target, stochastic, shift, kmin, base, nxt, mags):
    """Σ E[(Q(w_i) − target_i)²] over i, in float64. With the floor tables and ``stochastic``,
    E[Q] = clamp(w) and Var[Q] = (|w| − lo)(hi − |w|); otherwise Q is the nearest grid point."""
    wbits = w.view(np.int32)
    last = mags.size - 1
    total = 0.0
    for i in prange(w.size):
        c = _magnitude_code(w, wbits, i, np.uint64(0), False, shift, kmin, base, nxt, mags)
        sign = -1.0 if wbits[i] < 0 else 1.0
        t = np.float64(target[i])
        if stochastic and c < last:
            ax = np.float64(abs(w[i]))
            lo = np.float64(mags[c])
            hi = np.float64(mags[c + 1])
            total += (sign * ax - t) ** 2 + (ax - lo) * (hi - ax)
        else:
            total += (sign * np.float64(mags[c]) - t) ** 2
    return total


@njit(parallel=True, cache=True, nogil=True)
def _decode_kernel(codes, table, out):
    for i in prange(codes.size):
        out[i] = table[codes[i]]


@njit(inline="always")
def _ste_at(g, x, q, alpha, inv_alpha, gx, i):
    """dL/dx of element i into gx[i]; returns its term of dL/dα."""
    xi = x[i]
    gi = g[i]
    inside = abs(xi) <= alpha
    gx[i] = gi if inside else np.float32(0.0)
    d = (q[i] - xi) * inv_alpha if inside else (np.float32(1.0) if xi > 0 else np.float32(-1.0))
    return np.float64(gi * d)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _fake_quant_backward_kernel(g, x, q, alpha, gx):
    """STE backward; returns dL/dα (see ``quant.fake_quant`` for the derivative)."""
    inv_alpha = np.float32(1.0) / alpha
    acc = 0.0
    for i in prange(x.size):
        acc += _ste_at(g, x, q, alpha, inv_alpha, gx, i)
    return acc


@njit(cache=True, nogil=True, fastmath=True)
def _fake_quant_backward_serial(g, x, q, alpha, gx):
    """``_fake_quant_backward_kernel`` on the calling thread (see ``_nearest_values_serial``)."""
    inv_alpha = np.float32(1.0) / alpha
    acc = 0.0
    for i in range(x.size):
        acc += _ste_at(g, x, q, alpha, inv_alpha, gx, i)
    return acc


# numba's OpenMP layer is the fastest for a process that owns the machine, but its idle workers
# keep spinning: in a process given one CPU (a Ray actor, OMP_NUM_THREADS=1) that spinning competes
# with the training itself, and two such actors ran 3.5x slower. There the workqueue layer, whose
# threads sleep, is used instead; it must not be entered by two threads at once, hence the lock.
# NUMBA_THREADING_LAYER overrides the choice.
def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads, and the numba threading layer a process started with that
    many picks (it takes effect before the first parallel kernel runs; a benchmark that times
    one-CPU clients calls this first)."""
    torch.set_num_threads(threads)
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue" if threads == 1 else "omp"


set_threads(torch.get_num_threads())
_LAUNCH = threading.Lock()


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _launch(kernel, *args):  # type: ignore[no-untyped-def]
    """Run a parallel kernel on as many threads as torch uses (one in a one-CPU Ray actor)."""
    with _LAUNCH:
        numba.set_num_threads(_threads())
        return kernel(*args)


class RoundResult:
    """Outputs of one rounding pass: flat ``codes`` (uint8) and/or ``values`` (float32)."""

    __slots__ = ("codes", "nonfinite", "values")

    def __init__(self, codes: torch.Tensor | None, values: torch.Tensor | None, nonfinite: int):
        self.codes, self.values, self.nonfinite = codes, values, nonfinite


def round_to_grid(
    x: torch.Tensor,
    tables: GridTables,
    stochastic: bool,
    key: int,
    want_codes: bool,
    want_values: bool,
    force_torch: bool = False,
) -> RoundResult:
    """Round float32 ``x`` onto the grid of ``tables``; stochastic draws use the stream ``key``.
    Uses the numba kernel for CPU tensors, torch ops elsewhere; both give identical results."""
    flat = x.detach().reshape(-1)
    if x.device.type != "cpu" or force_torch:
        return _round_torch(flat, tables, stochastic, key, want_codes, want_values)
    flat = flat.contiguous().numpy()
    lookup = tables.floor if stochastic else tables.nearest
    grid = (lookup.shift, lookup.kmin, lookup.base, lookup.next, tables.magnitudes)
    codes = values = None
    if want_values and not want_codes and not stochastic:
        values = torch.empty(flat.size, dtype=torch.float32)
        pairs = tables.nearest_cell_pairs.view(np.int32)
        cells = (flat.view(np.int32), lookup.shift, lookup.kmin, lookup.next, pairs)
        vbits = values.numpy().view(np.int32)
        if _threads() == 1:
            nonfinite = _nearest_values_serial(*cells, vbits)
        else:
            nonfinite = _launch(_nearest_values_kernel, *cells, vbits)
        return RoundResult(None, values, int(nonfinite))
    args = (flat, np.uint64(key), stochastic, *grid)
    if want_codes:
        codes = torch.empty(flat.size, dtype=torch.uint8)
        nonfinite = _launch(_codes_kernel, *args, tables.sign_code, codes.numpy())
    if want_values:
        values = torch.empty(flat.size, dtype=torch.float32)
        nonfinite = _launch(_values_kernel, *args, values.numpy())
    return RoundResult(codes, values, int(nonfinite))


def _round_torch(
    flat: torch.Tensor,
    tables: GridTables,
    stochastic: bool,
    key: int,
    want_codes: bool,
    want_values: bool,
) -> RoundResult:
    device = flat.device
    lookup: CellLookup = tables.floor if stochastic else tables.nearest
    base = torch.from_numpy(lookup.base).to(device)
    nxt = torch.from_numpy(lookup.next).to(device)
    mags = torch.from_numpy(tables.magnitudes).to(device)
    bits = flat.view(torch.int32)
    a = bits & _ABS_MASK
    k = ((a >> lookup.shift) - lookup.kmin).clamp_(0, base.numel() - 1).long()
    c = base[k] + (a >= nxt[k]).int()
    negative = bits < 0
    if stochastic:
        last = mags.numel() - 1
        below = c < last
        lo = mags[c].double()
        hi = mags[(c + 1).clamp(max=last)].double()
        ax = flat.abs().double()
        us = uniform_stream(key, flat.numel(), device) * (hi - lo)
        up = torch.where(negative, us < ax - lo, us >= hi - ax) & below
        c = c + up.int()
    nonfinite = int((a >= _INF_BITS).sum())
    codes = (c | (negative.int() * tables.sign_code)).to(torch.uint8) if want_codes else None
    values = None
    if want_values:
        v = mags[c.long()]
        values = torch.where(negative, -v, v)
    return RoundResult(codes, values, nonfinite)


def expected_squared_error(
    w: torch.Tensor, target: torch.Tensor, tables: GridTables, stochastic: bool
) -> float:
    """Σ E‖Q(w) − target‖² for the nearest or the stochastic quantizer (CPU float32 tensors)."""
    lookup = tables.floor if stochastic else tables.nearest
    return float(
        _launch(
            _expected_error_kernel,
            w.detach().reshape(-1).contiguous().numpy(),
            target.detach().reshape(-1).contiguous().numpy(),
            stochastic,
            lookup.shift,
            lookup.kmin,
            lookup.base,
            lookup.next,
            tables.magnitudes,
        )
    )


def decode_codes(codes: np.ndarray, tables: GridTables) -> torch.Tensor:
    """Look up the value of every (unpacked) code: a flat float32 tensor."""
    out = torch.empty(codes.size, dtype=torch.float32)
    _launch(_decode_kernel, codes, tables.signed, out.numpy())
    return out


def fake_quant_grads(
    g: torch.Tensor, x: torch.Tensor, q: torch.Tensor, alpha: float, force_torch: bool = False
) -> tuple[torch.Tensor, float]:
    """Gradients of the STE fake-quantizer: (dL/dx, dL/dα) given dL/dq."""
    if x.device.type != "cpu" or force_torch:
        inside = x.abs() <= alpha
        gx = torch.where(inside, g, torch.zeros_like(g))
        d = torch.where(inside, (q - x) * float(np.float32(1.0) / np.float32(alpha)), torch.sign(x))
        return gx, float((g.double() * d.double()).sum())
    g_flat = g.detach().reshape(-1).contiguous()
    gx = torch.empty_like(g_flat)
    serial = _threads() == 1
    galpha = (
        _fake_quant_backward_serial if serial else partial(_launch, _fake_quant_backward_kernel)
    )(
        g_flat.numpy(),
        x.reshape(-1).contiguous().numpy(),
        q.reshape(-1).contiguous().numpy(),
        np.float32(alpha),
        gx.numpy(),
    )
    return gx.view_as(g), float(galpha)
