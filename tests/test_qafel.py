"""QAFeL / FedBuff through the seams (``fp8fl.methods.qafel``): presets and keys, the delta codecs,
the buffered aggregator's hidden state, its FedAvg special case and its checkpoint."""

import numpy as np
import pytest
import torch
from torch import nn

from fp8fl.federated.buffered import HiddenState
from fp8fl.federated.seams import ClientUpdate
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import StateLayout, WireError
from fp8fl.methods.qafel import START_VERSION, BufferedAggregator, delta_codec
from fp8fl.numerics.qsgd import (
    anchored_minmax_quantize,
    minmax_quantize,
    qsgd_levels,
    qsgd_quantize,
)
from fp8fl.run.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fp8fl.run.components import build, build_quantizer
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import run_layout

PRESETS = {
    "fedbuff": ("fp32", "fp32", "hidden"),
    "qafel": ("qsgd4", "qsgd8", "hidden"),
    "qafel-fp8": ("fp8", "fp8", "hidden"),
    "qafel-naive": ("qsgd4", "qsgd8", "naive"),
}


def _config(method: str = "qafel", **values) -> RunConfig:
    return RunConfig.from_mapping({"method": method, **values})


def _layout(config: RunConfig) -> tuple[StateLayout, dict[str, torch.Tensor]]:
    """A small model in the run's training form (LeNet's 800k weights make QSGD slow here)."""
    torch.manual_seed(0)
    model = build_quantizer(config).prepare(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(36, 10))
    )
    return run_layout(config, model), {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("method", "settings"), sorted(PRESETS.items()))
def test_presets_set_the_wires_and_the_start(method, settings):
    config = _config(method)
    keys = ("qafel-uplink", "qafel-downlink", "qafel-start")
    assert tuple(config.to_mapping()[k] for k in keys) == settings
    assert config.method == method
    parts = config.components
    assert (parts.quantizer, parts.aggregator, parts.server_loop) == (
        "fp32-deltas",
        "buffered",
        "buffered-simulated",
    )


def test_keys_are_validated_together_and_name_themselves():
    assert _config(**{"async-mode": "real"}).components.server_loop == "buffered-real"
    assert _config(**{"qafel-uplink": "qsgd8", "qafel-downlink": "qsgd8"}).method == "qafel-custom"
    assert _config(**{"qafel-downlink": "qsgd8b512"}).method == "qafel-custom"
    with pytest.raises(ConfigError) as err:
        _config(
            **{
                "qafel-uplink": "qsgd9",
                "qafel-downlink": "qsgd8b0",
                "buffer-size": 0,
                "server-lr": -1.0,
                "async-mode": "both",
                "moving-average": 0.5,
            }
        )
    message = str(err.value)
    for part in (
        "qafel-uplink must be",
        "qafel-downlink must be",
        "buckets of n elements",
        "buffer-size must be >= 1",
        "server-lr must be > 0",
    ):
        assert part in message
    assert "async-mode must be one of simulated, real" in message
    with pytest.raises(ConfigError, match="moving-average applies to synchronous methods only"):
        _config(**{"moving-average": 0.5})
    with pytest.raises(ConfigError, match="qafel-uplink applies to the QAFeL methods only"):
        RunConfig.from_mapping({"method": "uq", "qafel-uplink": "qsgd4"})


# ------------------------------------------------------------------------------ codecs


@pytest.mark.parametrize(
    "wire",
    [
        "fp32",
        "fp8",
        "qsgd2",
        "qsgd4",
        "qsgd8",
        "qsgd4b64",
        "qsgd8b512",
        "minmax4",
        "minmax8",
        "minmax4:anchored",
    ],
)
def test_delta_codecs_send_exactly_what_they_declare_and_decode_their_quantizer(wire):
    wire, _, grid = wire.partition(":")
    config = _config(**{"qafel-uplink": wire, "qafel-minmax": grid or "flsim"})
    layout, state = _layout(config)
    assert layout.dense == () and layout.scales == ()  # every tensor goes through the codec
    codec = delta_codec(wire, config.fmt, config.settings.minmax)
    delta = {k: 0.01 * torch.randn_like(v) for k, v in state.items()}
    arrays = layout.pack(delta, codec, seeded_generator(0, "t"))
    assert sum(a.nbytes for a in arrays) == layout.nbytes(codec)
    decoded = layout.unpack(arrays, codec)
    bits_text, _, bucket_text = wire.lstrip("qsgdminax").partition("b")
    bucket = int(bucket_text) if bucket_text else None
    if wire.startswith("qsgd"):  # one generator, tensors in layout order: QSGD of each tensor
        levels, g = qsgd_levels(int(bits_text)), seeded_generator(0, "t")
        expected = {k: qsgd_quantize(v, levels, g, bucket) for k, v in delta.items()}
    elif wire.startswith("minmax"):
        quantize = anchored_minmax_quantize if grid == "anchored" else minmax_quantize
        expected = {k: quantize(v, int(bits_text)) for k, v in delta.items()}
    else:
        expected = delta if wire == "fp32" else None
    for name, value in delta.items():
        if expected is not None:
            assert torch.equal(decoded[name], expected[name]), name
        else:  # E4M3 with α = max|v|: a stochastic rounding lands on a neighbour, within a
            # binade's spacing 2^(e−3) ≤ |v|/8 of v, or below α·2^-9 (the smallest subnormal)
            alpha = value.abs().max()
            bound = torch.maximum(value.abs() / 8, alpha * 2.0**-9) * (1 + 1e-6)
            assert ((decoded[name] - value).abs() <= bound).all(), name
    # b bits per element, plus per tensor at most a byte of padding and 8 bytes of side
    # information, and 4 bytes per bucket; min-max keeps 1-D tensors as float32
    bits = 32 if wire == "fp32" else 8 if wire == "fp8" else int(bits_text)
    fp32_rows = sum(v.numel() for v in delta.values() if v.dim() <= 1 and "minmax" in wire)
    numel = sum(v.numel() for v in delta.values())
    buckets = sum(-(-v.numel() // bucket) for v in delta.values()) if bucket else 0
    bound = bits * (numel - fp32_rows) / 8 + 4 * fp32_rows + 9 * len(delta) + 4 * buckets
    assert layout.nbytes(codec) <= bound


def test_a_corrupt_delta_is_a_wire_error():
    config = _config()
    layout, state = _layout(config)
    codec = delta_codec("qsgd4", config.fmt)
    arrays = layout.pack(state, codec, seeded_generator(0, "t"))
    arrays[1] = arrays[1].copy()
    arrays[1][0] = np.float32(np.inf)
    with pytest.raises(WireError, match="norm"):
        layout.unpack(arrays, codec)
    with pytest.raises(WireError, match="truncated"):
        layout.unpack([arrays[0][:-1], *arrays[1:]], codec)


@pytest.mark.parametrize(("array", "value", "message"), [(1, 0.0, "scale"), (2, 8, "zero point")])
def test_a_bad_minmax_scale_or_zero_point_is_a_wire_error_naming_the_tensor(array, value, message):
    config = _config(**{"qafel-uplink": "minmax4"})
    layout, state = _layout(config)
    codec = delta_codec("minmax4", config.fmt)
    arrays = layout.pack(state, codec, None)
    assert [a.dtype for a in arrays[1:3]] == [np.float32, np.int8]  # scale, zero point per tensor
    arrays[array] = arrays[array].copy()
    arrays[array][0] = value
    with pytest.raises(WireError, match=f"0.weight: min–max {message}"):
        layout.unpack(arrays, codec)


# ------------------------------------------------------------------------------ aggregator


def _aggregator(method: str, **values) -> tuple[BufferedAggregator, StateLayout, dict]:
    config = _config(method, **values)
    layout, state = _layout(config)
    aggregator = build(config, layout.quantized).aggregator
    assert isinstance(aggregator, BufferedAggregator)
    aggregator.start(state, layout)
    return aggregator, layout, state


def _updates(state, count, seed, versions) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [
        ClientUpdate(
            k,
            100,
            {n: 0.02 * torch.randn(v.shape, generator=g) for n, v in state.items()},
            {START_VERSION: versions[k]},
        )
        for k in range(count)
    ]


@pytest.mark.parametrize("method", ["qafel", "qafel-fp8"])
def test_a_client_following_the_broadcast_messages_holds_the_servers_hidden_state(method):
    aggregator, layout, state = _aggregator(method, **{"buffer-size": 3})
    client = HiddenState(state)  # a client that joined at version 0
    for t in range(6):
        versions = [max(0, t - k) for k in range(3)]  # stale updates, too
        aggregator.aggregate(aggregator.server.x, _updates(state, 3, t, versions), t + 1)
        client.apply(layout.unpack(aggregator.broadcast, aggregator.downlink))
        for name, value in aggregator.server.hidden.state.items():
            assert torch.equal(client.state[name], value), (t, name)
            assert torch.equal(aggregator.starts[t + 1][name], value)
    assert aggregator.server.staleness[-3:] == [0, 1, 2]


def test_fedbuff_with_k_clients_and_no_staleness_is_fedavg_with_server_lr():
    lr = 0.7
    aggregator, _, x0 = _aggregator("fedbuff", **{"buffer-size": 4, "server-lr": lr})
    updates = _updates(x0, 4, 1, [0, 0, 0, 0])
    result = aggregator.aggregate(x0, updates, 1)
    assert result.metrics["staleness"] == [0, 0, 0, 0]
    for name, x in x0.items():
        # FedAvg of the clients' y_k = x + Δ_k with equal n_k and server lr η_g, in the server's
        # order of operations (Σ in float64, /K, to float32, x + η_g·avg): bit for bit
        total = sum(u.state[name].double() for u in updates)
        expected = x + (total / 4).float() * lr
        assert torch.equal(result.state[name], expected), name
        # FedBuff's clients start from x itself, not from x̂ = x̂ + (x − x̂) (one rounding off)
        assert torch.equal(aggregator.starts[1][name], result.state[name])


def test_aggregator_state_survives_a_checkpoint_and_the_run_continues_bit_identically(tmp_path):
    values = {"buffer-size": 2, "server-momentum": 0.5}
    first, _, state = _aggregator("qafel", **values)
    for t in range(3):
        first.aggregate(first.server.x, _updates(state, 2, t, [t, max(0, t - 1)]), t + 1)
    first.keep([2, 3])
    save_checkpoint(
        tmp_path, Checkpoint(3, first.server.x, {"up": 0, "down": 0}, {}, {}, first.state_dict())
    )
    second, _, _ = _aggregator("qafel", **values)
    second.load_state_dict(load_checkpoint(tmp_path).aggregator)
    assert sorted(second.starts) == [2, 3] and second.version == 3
    for t in range(3, 6):
        for aggregator in (first, second):
            aggregator.aggregate(aggregator.server.x, _updates(state, 2, t, [t, t - 1]), t + 1)
    for name in state:
        assert torch.equal(first.server.x[name], second.server.x[name])
        assert torch.equal(first.server.hidden.state[name], second.server.hidden.state[name])
    assert first.server.staleness == second.server.staleness
    assert first.broadcast[0].tobytes() == second.broadcast[0].tobytes()


def test_a_skipped_step_advances_the_version_and_keeps_the_model():
    aggregator, _, state = _aggregator("qafel", **{"buffer-size": 2})
    aggregator.skip()
    assert aggregator.version == 1 and aggregator.broadcast == []
    for name, value in state.items():
        assert torch.equal(aggregator.server.x[name], value)
        assert torch.equal(aggregator.starts[1][name], aggregator.starts[0][name])
    with pytest.raises(ValueError, match="K = 2 updates, got 1"):
        aggregator.aggregate(state, _updates(state, 1, 0, [1]), 2)
