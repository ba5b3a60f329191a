"""Low precision local training (Li et al., "Low Precision Local Training is Enough for Federated
Learning", NeurIPS 2024) through the seams: no master copy, the server moving average (also as a
switch of the other methods), exact bytes, the ConvNet, presets and option errors."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fp8fl.data.tasks import TaskData
from fp8fl.federated.seams import ClientUpdate, TrainsItself
from fp8fl.federated.wire import WireError
from fp8fl.methods.fp8 import Average, ServerOptimize
from fp8fl.methods.lpt import BlockFPCodec, BlockFPTraining, UniformAverage, weight_block
from fp8fl.methods.moving_average import MovingAverage
from fp8fl.models.architectures import ConvNet, build_model
from fp8fl.numerics.blockfp import bfp_decode, bfp_encode, bfp_encode_exact, bfp_quantize, on_grid
from fp8fl.run.components import build
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import LocalUpdate, build_run_model, round_local_update, run_layout
from tests.simulation import declared_bytes, simulate, tiny_config


def lpt_model(method: str = "lpt8", model: str = "lenet", **extra: str):
    config = RunConfig.from_mapping({"method": method, "model": model, **extra})
    torch.manual_seed(0)
    return config, build_run_model(config, 10)


def all_on_grid(model: torch.nn.Module, bits: int, linear_block: str) -> bool:
    return all(on_grid(p, bits, weight_block(p.shape, linear_block)) for p in model.parameters())


def random_task(n: int = 40) -> TaskData:
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TaskData(inputs, labels, 10, lambda x, train, generator: x)


# ---------------------------------------------------------------------------- presets and options
@pytest.mark.parametrize(
    ("method", "bits", "lam"), [("lpt8", "8", "0.9"), ("lpt6", "6", "0.9"), ("lpt8-noma", "8", "0")]
)
def test_presets_resolve_to_the_lpt_components(method, bits, lam):
    config = RunConfig.from_mapping({"method": method})
    assert config.method == method and config.family.name == "lpt"
    assert (config.to_mapping()["lpt-bits"], config.to_mapping()["lpt-ma-lambda"]) == (bits, lam)
    parts = config.components
    assert (parts.quantizer, parts.codec, parts.aggregator, parts.downlink) == (
        "block-fp-training",
        "block-fp",
        "uniform-average",
        "fp32",
    )
    built = build(config, ("conv1.weight",))
    assert isinstance(built.quantizer, BlockFPTraining) and built.quantizer.bits == int(bits)
    assert built.codec == BlockFPCodec(int(bits), "element")
    if lam == "0":
        assert isinstance(built.aggregator, UniformAverage)
    else:
        assert isinstance(built.aggregator, MovingAverage) and built.aggregator.lam == 0.9
        assert isinstance(built.aggregator.inner, UniformAverage)


def test_options_choose_components_and_rename_the_method():
    config = RunConfig.from_mapping(
        {"method": "lpt8", "lpt-average": "nk", "lpt-downlink": "bfp", "lpt-linear-block": "row"}
    )
    assert config.method == "lpt8"  # none of these is a preset setting
    parts = config.components
    assert (parts.aggregator, parts.downlink_codec) == ("average", "block-fp")
    built = build(config, ())
    assert built.downlink_codec == BlockFPCodec(8, "row") and isinstance(
        built.aggregator.inner, Average
    )
    assert RunConfig.from_mapping({"method": "lpt8", "lpt-ma-lambda": "0"}).method == "lpt8-noma"
    assert RunConfig.from_mapping({"method": "lpt8", "lpt-bits": "5"}).method == "lpt-custom"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "lpt8", "lpt-bits": "1"}, r"lpt-bits must be an integer in 2\.\.16"),
        ({"method": "lpt8", "lpt-bits": "eight"}, "lpt-bits must be an integer"),
        ({"method": "lpt8", "lpt-ma-lambda": "1"}, r"lpt-ma-lambda must be in \[0, 1\)"),
        ({"method": "lpt8", "lpt-ma-lambda": "x"}, "lpt-ma-lambda must be a number"),
        ({"method": "lpt8", "lpt-linear-block": "kernel"}, "lpt-linear-block must be one of"),
        ({"method": "lpt8", "lpt-downlink": "fp8"}, "lpt-downlink must be one of fp32, bfp"),
        ({"method": "lpt8", "lpt-average": "median"}, "lpt-average must be one of"),
        ({"method": "lpt8", "moving-average": 0.5}, "LPT-FL uses lpt-ma-lambda"),
        ({"method": "lpt-custom"}, "lpt-bits must be set"),
        ({"method": "lpt8", "wire": "nearest"}, "wire applies to the FP8 methods only"),
        ({"method": "uq", "lpt-bits": "8"}, "lpt-bits applies to the LPT-FL methods only"),
        ({"method": "uq", "moving-average": 1.0}, r"moving-average must be in \[0, 1\)"),
        ({"model": "convnet", "task": "speechcommands"}, "model 'convnet' does not fit"),
        (
            {"method": "lpt8", "optimizer": "sgd"},
            r"lpt8 trains with its quantizer's own adam step .*got 'sgd'",
        ),
    ],
)
def test_bad_option_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


# ---------------------------------------------------------------------------- the model
def test_convnet_shape_and_parameter_count():
    model = build_model("convnet", 10)
    assert isinstance(model, ConvNet)
    assert sum(p.numel() for p in model.parameters()) == 320_010
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [c.weight.shape for c in convs] == [(128, 3, 3, 3), (128, 128, 3, 3), (128, 128, 3, 3)]
    assert all(c.padding == (1, 1) for c in convs)
    assert all(n.num_groups == n.num_channels == 128 for n in norms) and len(norms) == 3
    assert model.classifier.weight.shape == (10, 128 * 4 * 4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------------------- local training
@pytest.mark.parametrize("method", ["lpt8", "lpt6"])
@pytest.mark.parametrize("linear_block", ["element", "row"])
def test_no_master_copy_every_weight_is_on_its_grid_after_a_step(method, linear_block):
    config, model = lpt_model(method, "lenet", **{"lpt-linear-block": linear_block})
    bits = int(config.to_mapping()["lpt-bits"])
    quantizer = build(config, ()).quantizer
    assert isinstance(quantizer, TrainsItself)
    assert not all_on_grid(model, bits, linear_block)  # FP32 initialisation
    optimizer = quantizer.local_optimizer(model, 1e-3, 0.0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    assert all_on_grid(model, bits, linear_block)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(
        on_grid(p.grad, bits, weight_block(p.shape, linear_block)) for p in model.parameters()
    )


def test_local_update_runs_adam_on_the_grid_and_is_reproducible():
    config, model = lpt_model("lpt6", "convnet")
    update = round_local_update(config, 1)
    assert isinstance(update.quantizer, BlockFPTraining)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data, rows = random_task(), np.arange(40)
    states = []
    for _ in range(2):
        model.load_state_dict(start)
        torch.manual_seed(5)
        update.run(model, data, rows, torch.Generator().manual_seed(1), torch.device("cpu"))
        assert all_on_grid(model, 6, "element")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in start)


def test_activations_and_errors_are_quantized_in_training_only():
    _, model = lpt_model("lpt6")
    fp32 = build_model("lenet", 10)
    fp32.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), fp32.eval()(x))  # the server evaluates w̄ in FP32
    model.train()
    logits = model(x)
    assert on_grid(logits, 6, "tensor") and not on_grid(fp32(x), 6, "tensor")


@pytest.mark.parametrize(
    ("method", "optimizer", "resolved"),
    [("lpt8", "auto", "adam"), ("lpt6", "adam", "adam"), ("fp32", "auto", "sgd")],
)
def test_auto_optimizer_is_the_quantizers_own_step(method, optimizer, resolved):
    """The record names the step that trained: LPT-FL's Adam, never the SGD default."""
    config = RunConfig.from_mapping({"method": method, "optimizer": optimizer})
    assert config.optimizer == resolved


def test_other_quantizers_keep_the_run_optimizer():
    update = LocalUpdate("sgd", 0.1, 0.0, 10, 1)
    assert update.quantizer is None
    config = RunConfig.from_mapping({"method": "uq"})
    assert not isinstance(round_local_update(config, 1).quantizer, TrainsItself)


def test_optimizer_adam_gives_fp32_methods_lpts_local_step():
    """``optimizer = "adam"``: constant lr in every round, and Adam's first step moves each
    weight by lr·g/(|g| + ε), i.e. by lr wherever |g| ≫ ε = 1e-8 (an SGD step would move it by
    lr·g instead)."""
    config = RunConfig.from_mapping(
        {"method": "fp32", "optimizer": "adam", "lr": 1e-3, "weight-decay": 0.0}
    )
    assert {round_local_update(config, r).lr for r in (1, 5, 10)} == {1e-3}
    update = dataclasses.replace(round_local_update(config, 1), steps=1, batch_size=8)
    model = build_run_model(config, 10)
    start = [p.detach().clone() for p in model.parameters()]
    update.run(model, random_task(), np.arange(40), torch.Generator(), torch.device("cpu"))
    moved = torch.cat(
        [(p.detach() - p0).abs().flatten() for p, p0 in zip(model.parameters(), start)]
    )
    grad = torch.cat([p.grad.abs().flatten() for p in model.parameters()])  # the step's g
    # rtol 1e-3: lr·|g|/(|g| + 1e-8) is within it of lr for |g| > 1e-5, and float32 rounding of
    # w ± lr at |w| < 1 errs by < 2^-24 absolute, 6e-5 of lr (weights behind dead ReLUs get g = 0)
    clear = grad > 1e-5
    assert clear.sum() > 100_000
    assert torch.allclose(moved[clear], torch.full_like(moved[clear], 1e-3), rtol=1e-3)


# ---------------------------------------------------------------------------- moving average
def updates_of(values: list[list[float]], sizes: list[int]) -> list[ClientUpdate]:
    return [
        ClientUpdate(i, n, {"w": torch.tensor(v), "b": torch.tensor(v[:1])})
        for i, (v, n) in enumerate(zip(values, sizes))
    ]


def test_lambda_zero_is_plain_uniform_fedavg():
    updates = updates_of([[0.0, 1.0], [1.0, 3.0], [2.0, 8.0]], [1, 1, 10])
    plain = build(RunConfig.from_mapping({"method": "lpt8-noma"}), ("w",)).aggregator
    expected = {"w": torch.tensor([1.0, 4.0]), "b": torch.tensor([1.0])}
    for aggregator in (plain, MovingAverage(UniformAverage(), 0.0)):
        for rnd in (1, 2):
            state = aggregator.aggregate({}, updates, rnd).state
            assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_a_sequence_of_rounds_matches_a_hand_computation_and_resumes_exactly():
    aggregator = build(RunConfig.from_mapping({"method": "lpt8"}), ("w",)).aggregator
    rounds = [
        [[1.0, 2.0], [3.0, 6.0]],  # w_agg = [2, 4]: w̄ = w_agg
        [[4.0, 0.0], [6.0, 2.0]],  # w_agg = [5, 1]: w̄ = 0.9·[2, 4] + 0.1·[5, 1] = [2.3, 3.7]
        [[0.0, 0.0], [0.0, 0.0]],  # w̄ = 0.9·[2.3, 3.7] = [2.07, 3.33]
    ]
    hand = [[2.0, 4.0], [2.3, 3.7], [2.07, 3.33]]
    for rnd, (values, expected) in enumerate(zip(rounds, hand), start=1):
        state = aggregator.aggregate({}, updates_of(values, [5, 1]), rnd).state
        torch.testing.assert_close(state["w"], torch.tensor(expected), rtol=0, atol=1e-6)
        if rnd == 2:
            saved = aggregator.state_dict()
    resumed = build(RunConfig.from_mapping({"method": "lpt8"}), ("w",)).aggregator
    resumed.load_state_dict(saved)
    assert set(saved) == {"moving_average.w", "moving_average.b"}
    again = resumed.aggregate({}, updates_of(rounds[2], [5, 1]), 3).state
    assert torch.equal(again["w"], state["w"]) and torch.equal(again["b"], state["b"])
    with pytest.raises(ValueError, match="did not write"):
        resumed.load_state_dict({"x": torch.zeros(1)})


def test_the_fp8_switch_at_zero_builds_the_old_aggregator_and_wraps_it_otherwise():
    for method, kind in (("uq", Average), ("uq+", ServerOptimize), ("cq4", object)):
        old = build(RunConfig.from_mapping({"method": method}), ("w",)).aggregator
        assert not isinstance(old, MovingAverage) and isinstance(old, kind)
        config = RunConfig.from_mapping({"method": method, "moving-average": 0.0})
        assert build(config, ("w",)).aggregator == old
        wrapped = build(
            RunConfig.from_mapping({"method": method, "moving-average": 0.5}), ("w",)
        ).aggregator
        assert isinstance(wrapped, MovingAverage) and wrapped.inner == old and wrapped.lam == 0.5


# ---------------------------------------------------------------------------- wire
@pytest.mark.parametrize("model", ["lenet", "convnet"])
@pytest.mark.parametrize("method", ["lpt8", "lpt6"])
@pytest.mark.parametrize("linear_block", ["element", "row"])
def test_layout_bytes_are_the_packed_arrays_and_on_grid_weights_travel_exactly(
    model, method, linear_block
):
    config, net = lpt_model(method, model, **{"lpt-linear-block": linear_block})
    bits = int(config.to_mapping()["lpt-bits"])
    layout = run_layout(config, net)
    assert layout.quantized == tuple(n for n, _ in net.named_parameters()) and not layout.dense
    codec = build(config, layout.quantized).codec
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(bfp_quantize(p, bits, weight_block(p.shape, linear_block), True, generator))
    state = net.state_dict()
    arrays = layout.pack(state, codec, generator)
    assert sum(a.nbytes for a in arrays) == layout.nbytes(codec)
    assert [(a.dtype, a.size) for a in arrays] == [
        (s.dtype, s.size) for s in layout.array_specs(codec)
    ]
    decoded = layout.unpack(arrays, codec)
    assert all(torch.equal(decoded[k], state[k]) for k in state)
    if linear_block == "element":  # one int8 exponent per Linear weight
        linear = sum(p.numel() for p in net.parameters() if p.dim() == 2)
        assert arrays[1].size > linear


def test_off_grid_weights_are_rounded_stochastically_and_bad_exponents_rejected():
    config, net = lpt_model("lpt8", **{"lpt-downlink": "bfp"})
    layout = run_layout(config, net)
    codec = build(config, layout.quantized).downlink_codec
    state = {k: v.clone() for k, v in net.state_dict().items()}
    arrays = layout.pack(state, codec, torch.Generator().manual_seed(0))
    decoded = layout.unpack(arrays, codec)
    assert all_on_grid(_loaded(net, decoded), 8, "element")
    assert not torch.equal(decoded["fc1.weight"], state["fc1.weight"])
    arrays[1] = arrays[1].copy()
    arrays[1][:] = 127
    arrays[0] = np.zeros_like(arrays[0])  # mantissa −2^7 with exponent 127
    with pytest.raises(WireError, match=r"conv1\.weight: .*−2\^128"):
        layout.unpack(arrays, codec)


def _loaded(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net.load_state_dict(state)
    return net


# ---------------------------------------------------------------------------- simulation
@pytest.mark.integration  # a Flower simulation on real data
def test_an_lpt8_run_completes_and_the_ledger_counts_what_the_codecs_declare(tmp_path):
    config = tiny_config(tmp_path, method="lpt8", lr=1e-3)
    _, rounds = simulate(config)
    up, down, fp32 = declared_bytes(config)
    assert down == fp32 and up < fp32 / 2  # the authors' FP32 downlink; 8-bit codes + exponents
    assert [r["round"] for r in rounds if r["round"] > 0] == [1, 2]
    for record in rounds[1:]:
        assert record["clients_ok"] == 2 and record["aggregated"] and not record["rejected"]
        assert record["array_bytes_up"] == 2 * up and record["array_bytes_down"] == 2 * down
    assert rounds[-1]["accuracy"] is not None


def test_exact_encoding_keeps_a_block_whose_low_end_is_minus_two_to_the_e0():
    x = torch.tensor([-2.0, 1 / 64])  # Q's output for e = 0: e0 = 1 would round 1/64 away
    assert on_grid(x, 8, "tensor")
    shape = tuple(x.shape)
    assert torch.equal(bfp_decode(*bfp_encode_exact(x, 8, "tensor"), shape, 8, "tensor"), x)
    assert not torch.equal(bfp_decode(*bfp_encode(x, 8, "tensor"), shape, 8, "tensor"), x)
    with pytest.raises(ValueError, match="not on the 8-bit"):
        bfp_encode_exact(torch.tensor([1.0, 1 / 1024]), 8, "tensor")
