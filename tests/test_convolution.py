"""fp8fl.models.convolution.conv2d: torch's convolution, with the input gradient of a layer with few
input channels taken from torch's native kernels instead of oneDNN's."""

import pytest
import torch
import torch.nn.functional as F

from fp8fl.models.convolution import FEW_INPUT_CHANNELS, conv2d

GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation, groups, input size)
    (3, 64, 5, (1, 1), (0, 0), (1, 1), 1, 32),  # LeNet's conv1
    (3, 8, 3, (2, 2), (1, 1), (1, 1), 1, 9),
    (4, 6, 3, (1, 1), (2, 2), (2, 2), 2, 11),
]


def grads(fn, x, w, b, g):  # type: ignore[no-untyped-def]
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad, b.grad


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["lenet-conv1", "strided", "grouped"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_few_channel_conv_is_torch_conv_with_the_native_input_gradient(geometry, channels_last):
    cin, cout, k, stride, padding, dilation, groups, size = geometry
    torch.manual_seed(0)
    x = torch.randn(5, cin, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(cout, cin // groups, k, k), torch.randn(cout)

    def torch_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    def ours(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return conv2d(x, w, b, stride, padding, dilation, groups)

    g = torch.randn_like(torch_conv(x, w, b))
    y, gx, gw, gb = grads(ours, x, w, b, g)
    y_ref, gx_onednn, gw_ref, gb_ref = grads(torch_conv, x, w, b, g)
    torch.backends.mkldnn.set_flags(False, None, None, None)
    try:
        _, gx_native, _, _ = grads(torch_conv, x.contiguous(), w, b, g.contiguous())
    finally:
        torch.backends.mkldnn.set_flags(True, None, None, None)
    # the forward pass and the weight and bias gradients are torch's own, bit for bit
    assert torch.equal(y, y_ref) and torch.equal(gw, gw_ref) and torch.equal(gb, gb_ref)
    # the input gradient is the native kernels' bit for bit ...
    assert torch.equal(gx, gx_native)
    # ... and oneDNN's up to the order of its sums: each element sums n = out·k²/groups products;
    # two float32 summations of the same n terms differ by at most 2·γ_n·Σ|terms| (γ_n = n·u/(1 − n·u),
    # u = 2^-24; Higham, Accuracy and Stability of Numerical Algorithms, §3.1)
    n = cout // groups * k * k
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    bound = F.conv_transpose2d(g.abs(), w.abs(), None, stride, padding, 0, groups, dilation)
    bound = bound[..., : x.shape[2], : x.shape[3]]
    assert ((gx - gx_onednn).abs() <= 2 * gamma * bound + 1e-30).all()


def test_only_few_channel_inputs_that_need_a_gradient_take_the_native_path():
    torch.manual_seed(1)
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    few = torch.randn(2, FEW_INPUT_CHANNELS, 8, 8, requires_grad=True)
    many = torch.randn(2, FEW_INPUT_CHANNELS + 1, 8, 8, requires_grad=True)

    def node(x: torch.Tensor) -> str:
        w = torch.randn(3, x.shape[1], 3, 3, requires_grad=True)
        return type(conv2d(x, w, None, *geometry).grad_fn).__name__

    assert node(few) == "_FewChannelConv2dBackward"
    assert node(many) == "ConvolutionBackward0"
    assert node(few.detach()) == "ConvolutionBackward0"  # no input gradient: nothing to change
