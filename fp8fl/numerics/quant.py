"""FP8 quantization onto the flexible-bias grid: ``quantize`` (no autograd) and ``fake_quant`` (QAT).

Nearest rounding is round-half-to-even onto the grid (Wang et al. 2024, arXiv:2407.02610, eq. 3-4)
after clamping to [−α, α].
Stochastic rounding is Q(x) = s·floor(x/s + u), u ~ U[0,1) (the appendix's uniform p; eq. 5's
"Bernoulli" would be biased), so E[Q(x)] = x for |x| <= α. Here s is the grid step at x, i.e. the
two candidates are the grid neighbours of x. The comparison with u is done exactly; u takes values
k·2^-24 (a SplitMix64 stream keyed by one draw from ``generator``, see ``kernels``), so the
probability of rounding up equals the fractional position of x between its neighbours to within
2^-24.

Both results are exact for every float32 input: see ``gridtables`` for how.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp8fl.numerics.formats import E4M3, FloatFormat, as_alpha
from fp8fl.numerics.gridtables import grid_tables
from fp8fl.numerics.kernels import RoundResult, draw_key, fake_quant_grads, round_to_grid

__all__ = ["Rounding", "fake_quant", "quantize", "round_tensor"]


def check_float32(x: object, what: str = "x") -> torch.Tensor:
    """Reject anything that is not a float32 tensor (rounding another dtype first would be lossy)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype}; convert it with .float() first")
    return x


def round_tensor(
    x: torch.Tensor,
    alpha: float | torch.Tensor,
    fmt: FloatFormat,
    stochastic: bool,
    generator: torch.Generator | None,
    want_codes: bool,
    want_values: bool,
) -> RoundResult:
    """Validate inputs, draw u if needed, round, and reject non-finite data (shared by the codec)."""
    check_float32(x)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, got {type(fmt).__name__}")
    tables = grid_tables(fmt, as_alpha(alpha, fmt))
    key = draw_key(generator) if stochastic else 0
    result = round_to_grid(x, tables, bool(stochastic), key, want_codes, want_values)
    if result.nonfinite:
        nan = int(torch.isnan(x).sum())
        raise ValueError(
            f"x contains {result.nonfinite} non-finite value(s) ({nan} NaN, "
            f"{result.nonfinite - nan} inf) among {x.numel()} elements; refusing to quantize"
        )
    return result


@torch.no_grad()
def quantize(
    x: torch.Tensor,
    alpha: float | torch.Tensor,
    fmt: FloatFormat = E4M3,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantize float32 ``x`` onto the grid of ``fmt`` with clipping value ``alpha``.

    Nearest: clamp to [−α, α], round half to even onto the grid. Stochastic: s·floor(x/s + u) with
    u ~ U[0,1) from ``generator``; unbiased for |x| <= α. Returns a new float32 tensor, no autograd.
    """
    result = round_tensor(x, alpha, fmt, stochastic, generator, want_codes=False, want_values=True)
    return result.values.view(x.shape)


def memory_order(x: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation of ``x``'s dimensions that is contiguous in memory (e.g. (0, 2, 3, 1) for a
    channels-last image batch), or None when ``x`` is contiguous already or not dense."""
    if x.is_contiguous():
        return None
    order = tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))
    return order if x.permute(order).is_contiguous() else None


def _in_memory_order(x: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    return x if order is None else x.permute(order)


def _back_from(y: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    return y if order is None else y.permute(tuple(order.index(d) for d in range(len(order))))


def _fake_quant_values(
    x: torch.Tensor,
    alpha: float,
    fmt: FloatFormat,
    stochastic: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``quantize(x)`` in ``x``'s own memory layout (a channels-last activation stays one).
    Nearest rounding is element-wise, so it runs over the tensor in memory order; stochastic
    rounding keeps the element-indexed uniform stream of the logical order, so it rounds a
    contiguous copy and lays the result out as ``x``."""
    check_float32(x)
    order = None if stochastic else memory_order(x)
    flat = _in_memory_order(x, order)
    values = round_tensor(flat, alpha, fmt, stochastic, generator, False, True).values
    q = _back_from(values.view(flat.shape), order)
    return q if order is not None or x.is_contiguous() else torch.empty_like(x).copy_(q)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha_tensor, alpha, fmt, stochastic, generator):  # type: ignore[override]
        q = _fake_quant_values(x, alpha, fmt, stochastic, generator)
        ctx.save_for_backward(x, q)
        ctx.alpha = alpha
        return q

    @staticmethod
    def backward(ctx, grad_q):  # type: ignore[override]
        x, q = ctx.saved_tensors
        # element-wise but for the sum of dL/dα: in x's memory order when q shares its layout
        order = memory_order(x) if q.stride() == x.stride() else None
        grad_x, grad_alpha = fake_quant_grads(
            _in_memory_order(grad_q, order),
            _in_memory_order(x, order),
            _in_memory_order(q, order),
            ctx.alpha,
        )
        grad_x = _back_from(grad_x, order)
        alpha_grad = None
        if ctx.needs_input_grad[1]:
            alpha_grad = torch.full((), grad_alpha, dtype=torch.float32, device=x.device)
        return (grad_x if ctx.needs_input_grad[0] else None), alpha_grad, None, None, None, None


def fake_quant(
    x: torch.Tensor,
    alpha: float | torch.Tensor,
    fmt: FloatFormat = E4M3,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantization-aware-training op: forward = ``quantize``; backward as in Kuzmin et al. 2022.

    With s = 2^(c − b(α) − m) and the per-element exponent c = max(floor(log2|x| + b), 1) held
    constant, s is proportional to α (b contains −log2 α), and round(·) passes gradients straight
    through. For q = clamp-and-round(x):

        dq/dx = 1 if |x| <= α else 0                         (straight-through inside the clip)
        dq/dα = (q − x)/α if |x| <= α else sign(x)           (through the scale; through the clip)

    The in-range term is d/dα[s·round(x/s)] = (s/α)·(round(x/s) − x/s) under the STE; it differs
    from the derivative q/α of the staircase itself by the straight-through term −x/α.
    ``alpha`` may be a float (no gradient) or a 0-d tensor, typically a learnable parameter.
    """
    alpha_value = as_alpha(alpha, fmt)
    alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha_value)
    return _FakeQuant.apply(x, alpha_tensor, alpha_value, fmt, bool(stochastic), generator)


@dataclass(frozen=True)
class Rounding:
    """A grid and how to round onto it — the format and nearest or stochastic rounding — as one
    value, so that the federated layer passes one object instead of ``(fmt, stochastic)``."""

    fmt: FloatFormat = E4M3
    stochastic: bool = False

    @classmethod
    def named(cls, fmt: FloatFormat, mode: str) -> Rounding:
        """``mode`` is ``"nearest"`` or ``"stochastic"``."""
        if mode not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be nearest or stochastic, got {mode!r}")
        return cls(fmt, mode == "stochastic")

    @property
    def mode(self) -> str:
        return "stochastic" if self.stochastic else "nearest"

    def quantize(
        self, x: torch.Tensor, alpha: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return quantize(x, alpha, self.fmt, self.stochastic, generator)
