"""LPT-FL's quantization points (Li et al., NeurIPS 2024; digbangbang/LPT-FL ``models.py``): after
every conv, activation and pooling call and after the classifier, forward (activations) and
backward (errors), never on the raw input; and the points before issue 34 on request."""

from collections import Counter

import pytest
import torch
from torch import nn

from fp8fl.methods.lpt import ActivationPoints, BlockFPTraining
from fp8fl.models.architectures import build_model
from fp8fl.numerics.blockfp import on_grid
from fp8fl.run.components import build_quantizer
from fp8fl.run.config import ConfigError, RunConfig

INPUTS = {
    "lenet": (2, 3, 32, 32),
    "convnet": (2, 3, 32, 32),
    "resnet18": (2, 3, 32, 32),
    "matchboxnet": (2, 64, 40),
    "kwt1": (2, 98, 40),
}


def lpt_model(model: str, points: str = "authors", bits: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return BlockFPTraining(bits, "element", points).prepare(build_model(model, 10)).train()


def test_the_run_config_chooses_the_points_and_defaults_to_the_authors():
    for points in ("authors", "conv-linear-io"):
        config = RunConfig.from_mapping({"method": "lpt8", "lpt-points": points})
        assert build_quantizer(config).points == points and config.method == "lpt8"
    assert RunConfig.from_mapping({"method": "lpt8"}).to_mapping()["lpt-points"] == "authors"
    with pytest.raises(ConfigError, match="lpt-points must be one of authors, conv-linear-io"):
        RunConfig.from_mapping({"method": "lpt8", "lpt-points": "inputs"})


def points_of(model: nn.Module) -> ActivationPoints:
    [points] = [h.__self__ for h in model._forward_pre_hooks.values()]
    assert isinstance(points, ActivationPoints)
    return points


class ErrorSpy(nn.Module):
    """Runs the real quantizer and records, per point, the error arriving from above (gradient
    of the quantized output) and the error it passes down (gradient of the raw output)."""

    def __init__(self, quant: nn.Module) -> None:
        super().__init__()
        self.quant, self.arriving, self.passed = quant, [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.register_hook(self.passed.append)
        y = self.quant(x)
        y.register_hook(self.arriving.append)
        return y


def test_convnet_has_the_authors_ten_points_in_their_order():
    model = lpt_model("convnet")
    model(torch.randn(INPUTS["convnet"]))
    # their ConvNet: conv → Q → GroupNorm → ReLU → Q → AvgPool → Q, three times; classifier → Q
    assert points_of(model).points == ["conv2d", "relu", "avg_pool2d"] * 3 + ["output"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("lenet", {"conv2d": 2, "relu": 4, "max_pool2d": 2, "output": 1}),
        ("resnet18", {"conv2d": 20, "relu": 17, "adaptive_avg_pool2d": 1, "output": 1}),
        ("matchboxnet", {"conv1d": 14, "relu": 6, "output": 1}),
        ("kwt1", {"gelu": 12, "output": 1}),
    ],
)
def test_every_model_is_quantized_after_each_conv_activation_pooling_and_its_classifier(
    model, expected
):
    """LeNet: two conv → ReLU → max-pool stages, ReLU after fc1 and fc2. ResNet18: 17 convs + 3
    shortcut convs, the shared ReLU module called 17 times, the average pool. MatchboxNet: 14
    convs (separable ones count twice), a ReLU per block, its mean over time is no pooling call.
    KWT-1: no conv or pooling, a GELU per MLP."""
    net = lpt_model(model)
    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in net.modules())
    assert convs == expected.get("conv2d", expected.get("conv1d", 0))
    net(torch.randn(INPUTS[model]))
    assert Counter(points_of(net).points) == expected


@pytest.mark.parametrize("model", ["convnet", "lenet"])
def test_the_raw_input_reaches_the_first_layer_unchanged(model):
    x = torch.randn(INPUTS[model])
    for points in ("authors", "conv-linear-io"):
        net = lpt_model(model, points)
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        seen: list[torch.Tensor] = []
        first.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        net(x)
        # with the points before issue 34 the image itself was put on a 6-bit grid
        assert torch.equal(seen[0], x) == (points == "authors")


@pytest.mark.parametrize("model", ["convnet", "lenet", "matchboxnet"])
def test_activations_forward_and_errors_backward_are_on_the_grid_at_every_point(model):
    net = lpt_model(model, bits=6)
    points = points_of(net)
    spy = ErrorSpy(points.quant)
    points.quant = spy
    outputs = []
    for module in net.modules():  # what the layers after a point receive
        if isinstance(module, (nn.GroupNorm, nn.Linear)):
            module.register_forward_pre_hook(lambda m, args: outputs.append(args[0]))
    net(torch.randn(INPUTS[model])).square().sum().backward()
    assert len(spy.passed) == len(spy.arriving) == len(points.points)
    assert all(on_grid(e, 6, "tensor") for e in spy.passed)  # errors quantized on the way back
    assert not all(on_grid(e, 6, "tensor") for e in spy.arriving)  # …which they were not before
    if model == "convnet":  # GroupNorm gets the quantized conv, the classifier the quantized pool
        assert all(on_grid(x, 6, "tensor") for x in outputs)


def test_evaluation_runs_without_points_and_a_failed_forward_leaves_no_mode_behind():
    net = lpt_model("convnet").eval()
    net(torch.randn(INPUTS["convnet"]))
    assert points_of(net).points == []
    net.train()
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 5, 32, 32))  # wrong channel count: the first conv raises
    assert torch.overrides._get_current_function_mode_stack() == []
