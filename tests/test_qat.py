"""QAT layers: exact composition of fake_quant, state names, calibration, rounding modes, real data."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fp8fl.models.architectures import MODELS, build_model
from fp8fl.models.attention import SelfAttention
from fp8fl.models.convolution import conv2d
from fp8fl.models.qat import (
    MIN_RANGE,
    QConv1d,
    QConv2d,
    QLinear,
    QSelfAttention,
    QuantConfig,
    alpha_name,
    calibrate,
    clamp_ranges_,
    is_calibrated,
    prepare_qat,
    quantized_weight_names,
    range_parameter_names,
)
from fp8fl.numerics.formats import E4M3, E5M2, FloatFormat
from fp8fl.numerics.quant import fake_quant
from tests.test_models import CLASSES, INPUTS


def qat_model(name: str, rounding: str = "nearest", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(FP32 model, calibrated QAT copy) on a seeded random batch."""
    torch.manual_seed(seed)
    fp32 = build_model(name, CLASSES[name])
    qat = prepare_qat(copy.deepcopy(fp32), QuantConfig(rounding=rounding))
    calibrate(qat, torch.randn(4, *INPUTS[name]))
    return fp32, qat


def test_quant_config_is_validated_and_frozen():
    assert QuantConfig() == QuantConfig(E4M3, "nearest")
    assert QuantConfig(fmt="E5M2").fmt == E5M2
    with pytest.raises(ValueError, match="nearest, stochastic, none"):
        QuantConfig(rounding="round")
    with pytest.raises(TypeError, match="FloatFormat"):
        QuantConfig(fmt=8)
    with pytest.raises(ValueError, match="unknown float format"):
        QuantConfig(fmt="fp8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().rounding = "none"


def test_prepare_qat_adds_only_named_ranges_in_place():
    fp32 = build_model("lenet", 10)
    model = copy.deepcopy(fp32)
    assert prepare_qat(model) is model and isinstance(model.conv1, QConv2d)
    state, ref = model.state_dict(), fp32.state_dict()
    assert [k for k in state if k in ref] == list(ref)
    assert all(torch.equal(state[k], v) for k, v in ref.items())
    assert list(state)[:4] == [
        "conv1.weight",
        "conv1.bias",
        "conv1.weight_alpha",
        "conv1.input_beta",
    ]
    layers = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert range_parameter_names(model) == [
        f"{n}.{r}" for n in layers for r in ("weight_alpha", "input_beta")
    ]
    assert set(state) - set(ref) == set(range_parameter_names(model))
    for n in layers:
        alpha = state[f"{n}.weight_alpha"]
        assert alpha.shape == () and alpha.dtype == torch.float32
        assert alpha == ref[f"{n}.weight"].abs().max()
        assert math.isnan(state[f"{n}.input_beta"])
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(model)
    with pytest.raises(TypeError, match="QuantConfig"):
        prepare_qat(build_model("lenet", 10), "nearest")
    with pytest.raises(ValueError, match=r"no nn\.Conv1d"):
        prepare_qat(nn.Sequential(nn.ReLU()))


def test_uncalibrated_model_refuses_to_run():
    model = prepare_qat(build_model("lenet", 10))
    assert not is_calibrated(model)
    with pytest.raises(RuntimeError, match=r"conv1\.input_beta is not calibrated.*calibrate"):
        model(torch.randn(2, 3, 32, 32))
    calibrate(model, torch.randn(2, 3, 32, 32))
    assert is_calibrated(model)


def test_calibrate_sets_beta_to_max_abs_input_of_the_fp32_model():
    torch.manual_seed(1)
    fp32 = build_model("kwt1", 35)
    model = prepare_qat(copy.deepcopy(fp32)).train()
    x = torch.randn(5, 98, 40)
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[f"{name}.input_beta"] = args[0].abs().max()
            if name.endswith((".attn.q", ".attn.k", ".attn.v")):
                seen[f"{name[:-2]}.{name[-1]}_beta"] = output.abs().max()

        return hook

    for name, module in fp32.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(record(name))
    fp32.eval()(x)
    calibrate(model, x)
    assert model.training and model.layers[3].attn.training  # modes restored
    state = model.state_dict()
    betas = [k for k in range_parameter_names(model) if k.endswith("_beta")]
    assert len(betas) == 74 + 4 * 12
    for key in betas:
        if key.endswith("probs_beta"):
            assert 0 < state[key] <= 1, key
        else:
            assert state[key] == seen[key], key


@pytest.mark.parametrize("name", MODELS)
def test_rounding_none_is_bit_identical_to_fp32(name):
    fp32, model = qat_model(name, rounding="none")
    x = torch.randn(3, *INPUTS[name])
    out_ref, out = fp32(x), model(x)
    assert torch.equal(out, out_ref)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    params = dict(model.named_parameters())
    for key, p in fp32.named_parameters():
        assert torch.equal(params[key].grad, p.grad), key
    assert all(params[k].grad is None for k in range_parameter_names(model))


def set_ranges(layer: nn.Module, alpha: float, beta: float) -> None:
    with torch.no_grad():
        layer.weight_alpha.fill_(alpha)
        layer.input_beta.fill_(beta)


@pytest.mark.parametrize("fmt", [E4M3, E5M2, FloatFormat(2, 1)], ids=str)
@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (lambda: nn.Linear(12, 5), (4, 12)),
        (lambda: nn.Conv1d(4, 6, 5, padding=2, dilation=1), (2, 4, 20)),
        (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 9)),
    ],
    ids=["linear", "conv1d", "conv2d"],
)
def test_qat_layer_equals_fake_quant_composed_by_hand(fmt, layer, shape):
    torch.manual_seed(3)
    ref = layer()
    model = prepare_qat(copy.deepcopy(ref), QuantConfig(fmt))
    assert isinstance(model, (QLinear, QConv1d, QConv2d))
    alpha = 0.6 * ref.weight.detach().abs().max().item()  # clip some weights and some inputs
    set_ranges(model, alpha, 1.5)
    x = torch.randn(shape)
    x_ref, x_q = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = torch.tensor(alpha, requires_grad=True)
    b = torch.tensor(1.5, requires_grad=True)
    qw = fake_quant(ref.weight, a, fmt)
    if isinstance(ref, nn.Conv2d):  # QConv2d convolves through fp8fl.models.convolution
        geometry = (ref.stride, ref.padding, ref.dilation, ref.groups)
        y_ref = conv2d(fake_quant(x_ref, b, fmt), qw, ref.bias, *geometry)
    else:
        y_ref = functional_call(ref, {"weight": qw, "bias": ref.bias}, (fake_quant(x_ref, b, fmt),))
    y = model(x_q)
    assert torch.equal(y, y_ref)
    grad = torch.randn_like(y)
    y_ref.backward(grad)
    y.backward(grad)
    assert torch.equal(x_q.grad, x_ref.grad)
    assert torch.equal(model.weight.grad, ref.weight.grad)
    assert torch.equal(model.bias.grad, ref.bias.grad)
    assert torch.equal(model.weight_alpha.grad, a.grad)
    assert torch.equal(model.input_beta.grad, b.grad)


def test_attention_quantizes_the_matmul_operands_and_keeps_softmax_fp32():
    torch.manual_seed(4)
    ref = SelfAttention(16, heads=2)
    model = prepare_qat(copy.deepcopy(ref))
    x = torch.randn(3, 7, 16)
    calibrate(model, x)
    assert isinstance(model, QSelfAttention) and isinstance(model.q, QLinear)
    beta = {op: getattr(model, f"{op}_beta").detach() for op in ("q", "k", "probs", "v")}

    def proj(p: nn.Linear, name: str) -> torch.Tensor:
        layer = getattr(model, name)
        y = F.linear(
            fake_quant(x, layer.input_beta.detach()),
            fake_quant(p.weight, layer.weight_alpha.detach()),
            p.bias,
        )
        return y.view(3, 7, 2, 8).transpose(1, 2)

    q, k, v = proj(ref.q, "q"), proj(ref.k, "k"), proj(ref.v, "v")
    scores = fake_quant(q, beta["q"]) @ fake_quant(k, beta["k"]).transpose(-2, -1)
    probs = (scores * 8**-0.5).softmax(-1)
    mixed = (fake_quant(probs, beta["probs"]) @ fake_quant(v, beta["v"])).transpose(1, 2).flatten(2)
    expected = F.linear(
        fake_quant(mixed, model.out.input_beta.detach()),
        fake_quant(ref.out.weight, model.out.weight_alpha.detach()),
        ref.out.bias,
    )
    assert torch.equal(model(x), expected)
    assert not torch.equal(expected, ref(x))


def test_stochastic_rounding_varies_between_calls_and_nearest_does_not():
    x = torch.randn(4, *INPUTS["lenet"])
    _, nearest = qat_model("lenet", "nearest")
    _, stochastic = qat_model("lenet", "stochastic")
    assert torch.equal(nearest(x), nearest(x))
    first, second = stochastic(x), stochastic(x)
    assert not torch.equal(first, second)
    assert (first - second).abs().max() < 0.2 * first.abs().max()  # noise, not garbage
    torch.manual_seed(11)
    again = stochastic(x)
    torch.manual_seed(11)
    assert torch.equal(stochastic(x), again)  # reproducible from torch's generator


@pytest.mark.parametrize("name", MODELS)
def test_quantized_weight_names_pair_with_alphas(name):
    fp32, model = qat_model(name)
    names = quantized_weight_names(model)
    state = model.state_dict()
    assert names == [k for k in state if k in set(names)]  # state_dict order
    layers = [m for m in model.modules() if isinstance(m, (QLinear, QConv1d, QConv2d))]
    assert (
        len(names)
        == len(layers)
        == {"lenet": 5, "resnet18": 21, "matchboxnet": 15, "kwt1": 74, "convnet": 4}[name]
    )
    assert all(k.endswith(".weight") and alpha_name(k) in state for k in names)
    assert quantized_weight_names(fp32) == []
    fp8_share = sum(state[k].numel() for k in names) / sum(p.numel() for p in fp32.parameters())
    assert fp8_share > 0.97  # §5.2: what stays FP32 is a small part of the model


def test_alpha_name():
    assert alpha_name("layers.0.attn.q.weight") == "layers.0.attn.q.weight_alpha"
    with pytest.raises(ValueError, match="not the name of a layer weight"):
        alpha_name("conv1.bias")


def test_ranges_are_kept_positive():
    _, model = qat_model("lenet")
    with torch.no_grad():
        model.fc1.weight_alpha.fill_(-0.3)
        model.conv2.input_beta.fill_(0.0)
    out = model(torch.randn(2, *INPUTS["lenet"]))
    assert torch.isfinite(out).all()
    assert model.fc1.weight_alpha.item() == pytest.approx(MIN_RANGE)
    assert model.conv2.input_beta.item() == pytest.approx(MIN_RANGE)
    with torch.no_grad():
        model.fc2.weight_alpha.fill_(-1.0)
    clamp_ranges_(model)
    assert model.fc2.weight_alpha.item() == pytest.approx(MIN_RANGE)
    assert model.fc3.weight_alpha.item() > 0.01  # untouched


def cifar_subset(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fp8fl.data import load_dataset

    ds = load_dataset("cifar10", split="train")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count]
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (ds.mean, ds.std))
    return (ds.inputs[idx].float() / 255 - mean) / std, ds.labels[idx]


def train_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    """SGD as in Wang et al. 2024, arXiv:2407.02610, §5.1 (lr 0.1, weight decay 1e-3, batch 50),
    epochs reshuffled."""
    generator = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    epochs = steps * 50 // len(x) + 1
    order = torch.cat([torch.randperm(len(x), generator=generator) for _ in range(epochs)])
    losses = []
    for step in range(steps):
        batch = order[step * 50 : (step + 1) * 50]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.integration  # end-to-end training on real data (about 30 s)
def test_qat_lenet_learns_real_cifar10_like_fp32():
    """400 steps on 2,000 real images. Seeds 0-2 gave last/first window ratios 0.62-0.67 for both
    FP32 and QAT, and |QAT - FP32| <= 0.1 on the last window; the bounds leave a wide margin."""
    x, y = cifar_subset(2000, seed=0)
    torch.manual_seed(0)
    fp32 = build_model("lenet", 10)
    model = prepare_qat(copy.deepcopy(fp32))
    calibrate(model, x[:50])
    alphas = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_alpha")}
    windows = {}
    for name, m in (("fp32", fp32), ("qat", model)):
        losses = train_losses(m, x, y, steps=400)
        windows[name] = (sum(losses[:50]) / 50, sum(losses[-50:]) / 50)
    print({k: f"first {a:.3f} last {b:.3f}" for k, (a, b) in windows.items()})
    for first, last in windows.values():
        assert 2.0 < first < 2.4  # about ln 10 = 2.303 while the model is still guessing
        assert last < 0.8 * first
    assert abs(windows["qat"][1] - windows["fp32"][1]) < 0.3
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in alphas.items())
