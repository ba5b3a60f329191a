"""A 2-D convolution whose input gradient skips oneDNN when the layer has few input channels.

QAT learns each layer's input range β, so it needs the gradient with respect to the input of an
image model's first convolution, which FP32 training never computes. On CPU, oneDNN's
backward-data for so few input channels runs far below torch's native im2col + GEMM convolution:
LeNet's conv1 (3 → 64 channels, 5×5, batch 50, one thread) takes 21 ms there against 8 ms native,
which made that one gradient most of the cost of QAT over FP32 (``python -m experiments.bench
round``). The forward pass and the weight gradient stay with oneDNN, which is the faster there.

Both paths multiply the same operands and differ only in the order of the sums. The choice
depends only on the layer's shape, never on a timing, so runs stay bit-reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["FEW_INPUT_CHANNELS", "conv2d"]

FEW_INPUT_CHANNELS = 4
"""Up to this many input channels the input gradient takes the native path."""

_backward = torch.ops.aten.convolution_backward.default


@contextmanager
def _without_onednn() -> Iterator[None]:
    """torch's native kernels instead of oneDNN's; every other oneDNN setting is left alone."""
    enabled = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(enabled, None, None, None)


class _FewChannelConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        common = (list(stride), list(padding), list(dilation), False, [0, 0], groups)
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            with _without_onednn():
                # in the contiguous layout, where the native kernels are fastest (and the
                # result does not depend on the input's layout)
                grad_input, _, _ = _backward(
                    grad.contiguous(), x.contiguous(), weight, None, *common, [True, False, False]
                )
        if needs_weight or needs_bias:
            _, grad_weight, grad_bias = _backward(
                grad, x, weight, ctx.bias_sizes, *common, [False, needs_weight, needs_bias]
            )
        return grad_input, grad_weight, grad_bias, None, None, None, None


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``F.conv2d`` with zero padding given as numbers; on CPU, with at most
    ``FEW_INPUT_CHANNELS`` input channels and an input that needs its gradient, the input
    gradient is computed by torch's native convolution instead of oneDNN's."""
    if x.device.type == "cpu" and x.requires_grad and weight.shape[1] <= FEW_INPUT_CHANNELS:
        return _FewChannelConv2d.apply(x, weight, bias, stride, padding, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
