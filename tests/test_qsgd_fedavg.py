"""The fifth family, FedAvg with a QSGD-bucketed uplink and an FP32 downlink (qsgd8b512): its
preset and typed keys, its components, the unbiased Δ it sends, and a run through the real
simulation stack whose global model is the FedAvg of the clients' decoded changes."""

from __future__ import annotations

import pytest
import torch

from fp8fl.federated.seams import SendsChanges
from fp8fl.federated.seeds import seeded_generator
from fp8fl.methods.fp8 import Float32Codec
from fp8fl.methods.qafel import QSGDCodec
from fp8fl.methods.qsgd import QSGDSettings
from fp8fl.run.components import build
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import build_run_model, run_layout
from tests.simulation import declared_bytes, simulate, tiny_config


def test_the_preset_is_8_bits_per_bucket_of_512_up_and_float32_down():
    config = RunConfig.from_mapping({"method": "qsgd8b512"})
    assert config.settings == QSGDSettings("8", "512")
    parts = config.components
    assert (parts.quantizer, parts.codec, parts.downlink_codec, parts.server_loop) == (
        "fp32-deltas",
        "qsgd",
        "fp32",
        "sync",
    )
    built = build(config, ())
    assert built.codec == QSGDCodec(8, 512) and isinstance(built.downlink_codec, Float32Codec)
    assert isinstance(built.quantizer, SendsChanges)
    per_tensor = RunConfig.from_mapping({"method": "qsgd8b512", "qsgd-bucket": "0"})
    assert per_tensor.method == "qsgd-custom" and build(per_tensor, ()).codec == QSGDCodec(8)


def test_its_keys_are_checked_and_belong_to_it():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"method": "qsgd8b512", "qsgd-bits": "9", "qsgd-bucket": "x"})
    assert "qsgd-bits must be an integer in 2..8" in str(err.value)
    assert "qsgd-bucket must be a number of elements" in str(err.value)
    with pytest.raises(ConfigError, match="qsgd-bits applies to the QSGD methods only"):
        RunConfig.from_mapping({"method": "uq", "qsgd-bits": "4"})
    with pytest.raises(ConfigError, match="qsgd-bits must be set"):
        RunConfig.from_mapping({"method": "qsgd-custom", "qsgd-bucket": "512"})


def test_the_decoded_change_is_unbiased():
    """QSGD rounds each element stochastically between two adjacent levels ‖b‖/s apart (b: its
    bucket, s = 127 levels at 8 bits), so one draw's error has variance ≤ (‖b‖/s)²/4 and the
    mean of K draws lies within 6·(‖b‖/s)/(2√K) of Δ for every element (a 6σ bound, fixed
    seeds)."""
    config = RunConfig.from_mapping({"method": "qsgd8b512"})
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    codec = build(config, layout.quantized).codec
    delta = {k: 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    draws = 64
    total = {k: torch.zeros_like(v) for k, v in delta.items()}
    for i in range(draws):
        decoded = layout.unpack(layout.pack(delta, codec, seeded_generator(0, "t", i)), codec)
        for k in total:
            total[k] += decoded[k]
    for name, value in delta.items():
        flat = value.reshape(-1)
        buckets = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 512)).reshape(-1, 512)
        step = (buckets.norm(dim=1) / 127).repeat_interleave(512)[: flat.numel()]
        error = (total[name].reshape(-1) / draws - flat).abs()
        assert bool((error <= 6 * step / (2 * draws**0.5) + 1e-7).all()), name


@pytest.mark.integration
def test_a_run_sends_about_8_bits_per_weight_up_and_float32_down(tmp_path):
    """Two rounds of the tiny simulation: every uplink is the codec's declared size, a quarter of
    FP32's and a bit over it (one norm per 512 weights), the downlink FP32's, and the global model
    moves: the server adds the decoded changes to the model it sent and averages them."""
    config = tiny_config(tmp_path, method="qsgd8b512")
    _, rounds = simulate(config)
    up, down, fp32 = declared_bytes(config)
    assert down == fp32 and 0.25 < up / fp32 < 0.26
    for record in rounds[1:]:
        assert record["clients_ok"] == 2 and record["aggregated"] and not record["rejected"]
        assert record["array_bytes_up"] == 2 * up and record["array_bytes_down"] == 2 * down
    assert len({r["model_sha256"] for r in rounds}) == len(rounds)  # every round moved it
