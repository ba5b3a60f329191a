"""The clipped uniform method (Bozorgasl & Chen, arXiv:2405.13365) through the seams: presets,
bits per layer, QAT, the codec's exact bytes and bad side information, inverse-MSE averaging."""

import math

import numpy as np
import pytest
import torch

from fp8fl.federated.seams import ClientUpdate
from fp8fl.federated.wire import WireError
from fp8fl.methods.clipped_uniform import MSE_SUFFIX, ClippedUniformCodec, UniformQAT
from fp8fl.models.architectures import build_model
from fp8fl.numerics.uniform import GRIDS, octav_clip, quantize_uniform
from fp8fl.run.components import build
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import build_run_model, run_layout
from tests.simulation import declared_bytes, simulate, tiny_config

LENET_WEIGHTS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]


@pytest.mark.parametrize(
    ("method", "bits", "rounding"),
    [
        ("cq4", "4", "stochastic"),
        ("cq4-det", "4", "nearest"),
        ("cq2", "2", "stochastic"),
        ("cq8", "8", "stochastic"),
    ],
)
def test_presets(method, bits, rounding):
    config = RunConfig.from_mapping({"method": method})
    assert config.method == method
    assert (config.to_mapping()["cq-bits"], config.to_mapping()["cq-rounding"]) == (bits, rounding)
    assert config.to_mapping()["cq-average"] == "inverse-mse"
    parts = config.components
    assert (parts.quantizer, parts.codec, parts.aggregator) == (
        "uniform-qat",
        "clipped-uniform",
        "inverse-mse",
    )
    assert parts.downlink == "fp32"  # the paper's downlink


def test_a_changed_setting_renames_the_method_within_its_family():
    assert RunConfig.from_mapping({"method": "cq4", "cq-rounding": "nearest"}).method == "cq4-det"
    custom = RunConfig.from_mapping({"method": "cq4", "cq-bits": "3"})
    assert custom.method == "cq-custom" and custom.components.codec == "clipped-uniform"
    assert RunConfig.from_mapping({"method": "cq4", "cq-average": "nk"}).components.aggregator == (
        "average"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "cq4", "cq-bits": "4,2,2,4"}, "cq-bits lists 4 entries but the model has 5"),
        ({"method": "cq4", "cq-bits": "9"}, "cq-bits must be in 2..8"),
        ({"method": "cq4", "cq-bits": "1,4"}, "cq-bits must be in 2..8"),
        ({"method": "cq4", "cq-bits": "four"}, "integers separated by commas"),
        ({"method": "cq4", "cq-rounding": "up"}, "cq-rounding must be one of"),
        ({"method": "cq4", "cq-mse-floor": 0.0}, "cq-mse-floor must be > 0"),
        ({"method": "cq4", "cq-grid": "midtread"}, "cq-grid must be one of symmetric, twos"),
        ({"method": "cq4", "wire": "nearest"}, "wire applies to the FP8 methods only"),
    ],
)
def test_bad_settings_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_bits_per_layer_follow_the_list():
    config = RunConfig.from_mapping({"method": "cq4", "cq-bits": "8,4,2,2,8"})
    model = build_run_model(config, 10)
    assert [m.uq_bits for m in model.modules() if hasattr(m, "uq_bits")] == [8, 4, 2, 2, 8]
    assert run_layout(config, model).quantized == tuple(LENET_WEIGHTS)


def test_the_grid_is_symmetric_unless_cq_grid_says_twos_complement():
    for method in ("cq8", "cq4", "cq4-det", "cq2"):
        config = RunConfig.from_mapping({"method": method})
        assert config.to_mapping()["cq-grid"] == "symmetric" and config.method == method
        model = build_run_model(config, 10)
        assert {m.uq_grid for m in model.modules() if hasattr(m, "uq_grid")} == {"symmetric"}
        layout = run_layout(config, model)
        assert build(config, layout.quantized).codec.grid == "symmetric"
    old = RunConfig.from_mapping({"method": "cq4", "cq-grid": "twos-complement"})
    assert old.method == "cq4"  # a variant of the preset, as the report labels it
    assert build(old, ("w",)).codec.grid == "twos-complement"


@pytest.mark.parametrize("grid", GRIDS)
def test_qat_forward_uses_the_octav_clipped_weights_and_trains(grid):
    torch.manual_seed(0)
    model = UniformQAT((4,), grid).prepare(build_model("lenet", 10))
    fc3 = model.fc3
    w = fc3.weight.detach()
    _, expected = quantize_uniform(w, octav_clip(w, 4, grid=grid), 4, False, grid=grid)
    x = torch.randn(3, 192)
    torch.testing.assert_close(fc3(x), torch.nn.functional.linear(x, expected, fc3.bias))
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert fc3.weight.grad is not None and fc3.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", ["2", "3", "4", "8", "8,4,2,3,4"])
def test_the_codec_round_trips_and_states_its_exact_size(bits, grid):
    config = RunConfig.from_mapping({"method": "cq4-det", "cq-bits": bits, "cq-grid": grid})
    torch.manual_seed(1)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    codec = build(config, layout.quantized).codec
    state = model.state_dict()
    arrays = layout.pack(state, codec)
    assert sum(a.nbytes for a in arrays) == layout.nbytes(codec)
    # the 797,248 LeNet weights at B bits each, packed densely
    per_layer = [int(b) for b in bits.split(",")] if "," in bits else [int(bits)] * 5
    counts = [math.prod(state[n].shape) for n in LENET_WEIGHTS]
    assert arrays[0].nbytes == sum((c * b + 7) // 8 for c, b in zip(counts, per_layer))
    decoded, side = layout.unpack_with_side(arrays, codec)
    for name, b in zip(LENET_WEIGHTS, per_layer):
        w = state[name]
        clip = float(np.float32(octav_clip(w, b, grid=grid)))
        expected = quantize_uniform(w, clip, b, False, grid=grid)[1]
        assert torch.equal(decoded[name], expected.view(w.shape))
        error = float(side[name + MSE_SUFFIX])
        assert error == pytest.approx(float((w - decoded[name]).double().pow(2).mean()), rel=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
def test_nearest_rounding_decodes_to_the_grid_point(grid):
    codec = ClippedUniformCodec((4,), stochastic=False, grid=grid)
    w = torch.randn(1000)
    (stream, clips, errors) = codec.encode({"w": w}, {}, None)
    out = codec.decode([stream, clips, errors], {"w": (1000,)}, {})
    _, expected = quantize_uniform(w, float(clips[0]), 4, stochastic=False, grid=grid)
    assert torch.equal(out["w"], expected)


@pytest.mark.parametrize(
    ("array", "value", "message"),
    [
        (1, 0.0, "clip s is 0.0"),
        (1, -1.0, "clip s is -1.0"),
        (1, float("nan"), "clip s is nan"),
        (2, float("inf"), "quantization MSE is inf"),
        (2, -1e-3, "quantization MSE is -0.001"),
    ],
)
def test_bad_side_information_is_a_wire_error_naming_the_layer(array, value, message):
    config = RunConfig.from_mapping({"method": "cq4"})
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    codec = build(config, layout.quantized).codec
    arrays = layout.pack(model.state_dict(), codec, torch.Generator().manual_seed(0))
    arrays[array] = arrays[array].copy()
    arrays[array][2] = value
    with pytest.raises(WireError, match=f"fc1.weight: {message}"):
        layout.unpack(arrays, codec)


def test_inverse_mse_average_leans_to_the_better_client_and_averages_the_rest_by_nk():
    config = RunConfig.from_mapping({"method": "cq4"})
    aggregator = build(config, ("w",)).aggregator
    updates = [
        ClientUpdate(
            0,
            1,
            {"w": torch.zeros(3), "b": torch.zeros(2)},
            {},
            {"w" + MSE_SUFFIX: torch.tensor(1e-3)},
        ),
        ClientUpdate(
            1,
            3,
            {"w": torch.ones(3), "b": torch.ones(2)},
            {},
            {"w" + MSE_SUFFIX: torch.tensor(1e-2)},
        ),
    ]
    result = aggregator.aggregate({}, updates, 1).state
    # weights 1/e: 1000 vs 100 -> w̄ = 100/1100 = 1/11; the bias by n_k: 3/4
    torch.testing.assert_close(result["w"], torch.full((3,), 1 / 11))
    torch.testing.assert_close(result["b"], torch.full((2,), 0.75))
    same = [
        ClientUpdate(
            u.partition, u.num_examples, u.state, {}, {"w" + MSE_SUFFIX: torch.tensor(5e-3)}
        )
        for u in updates
    ]
    torch.testing.assert_close(aggregator.aggregate({}, same, 1).state["w"], torch.full((3,), 0.5))


@pytest.mark.integration  # a Flower simulation on real data
@pytest.mark.parametrize("downlink", ["fp32", "quantized"])
def test_a_cq4_run_completes_and_the_ledger_counts_what_the_codecs_declare(tmp_path, downlink):
    config = tiny_config(tmp_path, method="cq4", cq_downlink=downlink)
    _, rounds = simulate(config)
    up, down, fp32_down = declared_bytes(config)
    for record in rounds[1:]:
        assert record["clients_ok"] == 2 and record["aggregated"] and not record["rejected"]
        assert record["array_bytes_up"] == 2 * up and record["array_bytes_down"] == 2 * down
        assert "unchanged_codes" not in record  # measured for minifloat codes only
    assert (down == fp32_down) == (downlink == "fp32")
    assert up < fp32_down / 7  # 4-bit codes: about 1/8 of float32, plus s and e per layer
    assert rounds[-1]["accuracy"] is not None
