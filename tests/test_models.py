"""The four models: parameter counts, architecture details, registry errors, FP32 and QAT training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fp8fl.models.architectures import MODELS, build_model, model_options
from fp8fl.models.qat import QuantConfig, calibrate, prepare_qat, range_parameter_names

INPUTS = {
    "lenet": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "matchboxnet": (64, 101),
    "kwt1": (98, 40),
    "convnet": (3, 32, 32),
}
CLASSES = {"lenet": 10, "resnet18": 10, "matchboxnet": 35, "kwt1": 35, "convnet": 10}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "classes", "count"),
    [
        ("lenet", 10, 797_962),
        ("lenet", 100, 815_332),
        ("resnet18", 10, 11_173_962),
        ("resnet18", 100, 11_220_132),
        ("matchboxnet", 35, 77_859),
        ("matchboxnet", 12, 74_892),
        ("kwt1", 35, 608_931),
        ("kwt1", 12, 607_436),
        ("convnet", 10, 320_010),
        ("convnet", 100, 504_420),
    ],
)
def test_parameter_counts(name, classes, count):
    assert param_count(build_model(name, classes)) == count


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat"])
def test_forward_and_backward_reach_every_parameter(name, qat):
    torch.manual_seed(0)
    model = build_model(name, CLASSES[name])
    x = torch.randn(3, *INPUTS[name])
    if qat:
        prepare_qat(model, QuantConfig())
        calibrate(model, x)
    out = model(x)
    assert out.shape == (3, CLASSES[name]) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets a zero gradient"
    ranges = range_parameter_names(model)
    assert bool(ranges) == qat


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(
        ValueError, match="valid models: lenet, resnet18, matchboxnet, kwt1, convnet"
    ):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match=r"no option.*depth.*valid options: frames, features"):
        build_model("kwt1", 35, depth=6)
    with pytest.raises(ValueError, match="valid options: none"):
        build_model("lenet", 10, width=2)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            build_model("lenet", bad)
    assert model_options("resnet18") == ("norm_groups",)


def test_lenet_layers_follow_feddyn():
    model = build_model("lenet", 10)
    shapes = [tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")]
    assert shapes == [(64, 3, 5, 5), (64, 64, 5, 5), (384, 1600), (192, 384), (10, 192)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_lenet_pools_before_its_relu_with_identical_values_and_gradients(channels_last):
    """LeNet runs ReLU after max pooling; FedDyn writes it before. Both orders give the same
    outputs and gradients bit for bit, also where a pooling window holds ties or no positive value."""
    torch.manual_seed(5)
    model = build_model("lenet", 10)
    with torch.no_grad():
        model.conv1.bias[:8] -= 10.0  # channels whose windows are all negative: ties at 0
        model.conv1.weight[8:12] = 0.0  # constant channels: ties at a positive value
        model.conv1.bias[8:12] = 0.5
    x = torch.randn(6, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def feddyn(x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(model.conv1(x)), 2)
        x = F.max_pool2d(F.relu(model.conv2(x)), 2)
        x = F.relu(model.fc1(x.flatten(1)))
        return model.fc3(F.relu(model.fc2(x)))

    outputs, grads = [], []
    for forward in (model, feddyn):
        model.zero_grad()
        y = forward(x)
        y.square().sum().backward()
        outputs.append(y)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(outputs[0], outputs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_resnet18_has_cifar_stem_and_groupnorm():
    model = build_model("resnet18", 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert not norms and groups == {2}
    assert {
        m.num_groups
        for m in build_model("resnet18", 10, norm_groups=32).modules()
        if isinstance(m, nn.GroupNorm)
    } == {32}


def test_matchboxnet_follows_nemo_3x1x64():
    model = build_model("matchboxnet", 35)
    blocks = list(model.encoder)
    assert [b.conv[0].kernel_size[0] for b in blocks] == [11, 13, 15, 17, 29, 1]
    assert [b.conv[-1].out_channels for b in blocks] == [128, 64, 64, 64, 128, 128]
    assert [b.residual is not None for b in blocks] == [False, True, True, True, False, False]
    assert blocks[4].conv[0].dilation == (2,) and blocks[0].conv[0].groups == 64
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    for frames in (50, 101):
        assert model(torch.randn(2, 64, frames)).shape == (2, 35)


def test_kwt1_is_post_norm_and_checks_its_input():
    model = build_model("kwt1", 35)
    assert len(model.layers) == 12 and model.layers[0].attn.heads == 1
    assert model.layers[0].mlp[0].out_features == 256 and model.pos_embedding.shape == (1, 99, 64)
    tokens = model.layers(torch.randn(2, 99, 64))  # post-norm: each token leaves a LayerNorm
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 99), atol=1e-5)
    assert torch.allclose(tokens.var(-1, unbiased=False), torch.ones(2, 99), atol=1e-3)
    with pytest.raises(ValueError, match=r"N×98×40"):
        model(torch.randn(2, 1, 98, 40))
