"""Per-layer formats (``layer-formats``) and the downlink's own format (``downlink-format``):
validation against the model's layers, QAT and the codec per tensor, ServerOptimize per tensor,
composition with ``client-formats`` and ``lossless``, and a short in-process run."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from clients.quantized_client import QuantizedClient
from fp8fl.federated.layer_formats import layer_names, parse_layer_formats
from fp8fl.models.qat import QATModule, alpha_name
from fp8fl.numerics.codec import packed_length
from fp8fl.numerics.formats import E2M1, E3M2, E4M3, FloatFormat
from fp8fl.numerics.quant import Rounding
from fp8fl.run.client_formats import client_config
from fp8fl.run.components import build, build_downlink_codec
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.protocol import ProtocolError, check_instructions, fit_instructions
from fp8fl.run.training import build_run_model, run_layout
from tests.inprocess import run_in_process
from tests.simulation import tiny_config

LENET = {"conv1": 4800, "conv2": 102400, "fc1": 614400, "fc2": 73728, "fc3": 1920}  # weights


def config(**values) -> RunConfig:
    return RunConfig.from_mapping({k.replace("_", "-"): v for k, v in values.items()})


def calibrated(run: RunConfig) -> tuple:
    torch.manual_seed(0)
    model = build_run_model(run, 10)
    layout = run_layout(run, model)
    built = build(run, layout.quantized)
    built.quantizer.calibrate(model, torch.randn(8, 3, 32, 32))
    return model, layout, built


# ---------------------------------------------------------------------------- validation
def test_layer_names_are_the_models_quantized_layers():
    assert layer_names("lenet") == tuple(LENET)
    assert parse_layer_formats(" fc1:E2M1, conv1:e4m3") == (("fc1", E2M1), ("conv1", E4M3))
    assert parse_layer_formats("") == ()


def test_every_problem_of_layer_formats_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config(layer_formats="fc9:e2m1,fc1:e9m9,fc2,fc3:e2m1,fc3:e3m2", downlink_format="e4m4")
    text = str(err.value)
    for problem in (
        "layer-formats names fc9, not a quantized layer of lenet (its layers: conv1, conv2, "
        "fc1, fc2, fc3)",
        "layer-formats: fc1: invalid float format 'e9m9'",
        "expected 'layer:format', got 'fc2'",
        "layer-formats names fc3 twice",
        "downlink-format: invalid float format 'e4m4'",
    ):
        assert problem in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"method": "fp32", "layer_formats": "fc1:e2m1"},
            "layer-formats needs a method of the FP8",
        ),
        (
            {"method": "cq4", "layer_formats": "fc1:e2m1"},
            "layer-formats applies to the FP8 methods",
        ),
        ({"method": "qat-fp32wire", "downlink_format": "e3m2"}, "downlink-format needs"),
        ({"downlink_format": "e3m2", "lossless": "context"}, "minifloat-downlink down"),
    ],
)
def test_runs_where_the_keys_mean_nothing_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        config(**values)


def test_a_client_with_other_layer_formats_is_refused():
    run, other = config(layer_formats="fc1:e2m1"), config(layer_formats="fc1:e3m2")
    assert fit_instructions(run, 1)["layer-formats"] == "fc1:e2m1"
    assert "layer-formats" not in fit_instructions(config(), 1)  # unset: messages unchanged
    with pytest.raises(ProtocolError, match="layer-formats"):
        check_instructions(fit_instructions(run, 1), other)
    with pytest.raises(ProtocolError, match=r"downlink-format|components"):
        check_instructions(fit_instructions(config(downlink_format="e3m2"), 1), config())


# ---------------------------------------------------------------------------- QAT and codec
def test_a_named_layer_trains_and_travels_in_its_own_format():
    run = config(method="bq", layer_formats="fc1:e2m1,conv1:e3m2")
    model, layout, built = calibrated(run)
    formats = {m.qat_name: m.qat_config.fmt for m in model.modules() if isinstance(m, QATModule)}
    assert formats == {"conv1": E3M2, "conv2": E4M3, "fc1": E2M1, "fc2": E4M3, "fc3": E4M3}
    bits = {"conv1": 6, "fc1": 4}
    (spec, *_) = layout.array_specs(built.codec)
    assert spec.size == sum(packed_length(n, bits.get(k, 8)) for k, n in LENET.items())
    state = model.state_dict()
    arrays = layout.pack(state, built.codec)
    decoded = layout.unpack(arrays, built.codec)
    for layer in LENET:  # nearest rounding on the wire: exactly each tensor's own grid
        name = f"{layer}.weight"
        fmt = {"conv1": E3M2, "fc1": E2M1}.get(layer, E4M3)
        expected = Rounding(fmt, False).quantize(state[name], state[alpha_name(name)])
        assert torch.equal(decoded[name], expected)


def test_server_optimize_and_the_downlink_use_each_tensors_format():
    run = config(method="uq+", layer_formats="fc1:e2m1", downlink_format="e3m2")
    built = calibrated(run)[2]
    assert built.aggregator.rounding["fc1.weight"] == Rounding(E2M1, True)
    assert built.aggregator.rounding["fc2.weight"] == Rounding(E4M3, True)
    down = build_downlink_codec(run)
    assert down.rounding_of("fc1.weight").fmt == E2M1
    assert down.rounding_of("conv1.weight").fmt == E3M2
    assert built.codec.rounding_of("conv1.weight").fmt == E4M3


def test_layer_formats_compose_with_client_formats():
    """Each minifloat client group keeps the named layers' formats; its own format is the
    default of the others; an FP32 client has no QAT and sends float32."""
    run = config(client_formats="fp32:0.5,e2m1:0.5", layer_formats="fc1:e4m3")
    e2m1 = build(client_config(run, "e2m1"), ())
    assert e2m1.codec.rounding_of("fc1.weight").fmt == E4M3
    assert e2m1.codec.rounding_of("fc2.weight").fmt == FloatFormat.from_name("e2m1")
    assert build(client_config(run, "fp32"), ()).codec.name == "fp32"


@pytest.mark.parametrize("lossless", [True, "context"])
def test_layer_formats_compose_with_the_lossless_stage(lossless):
    run = config(layer_formats="fc1:e2m1,conv2:e3m2", lossless=lossless)
    model, layout, built = calibrated(run)
    state = model.state_dict()
    downlink = layout.pack(state, built.codec, torch.Generator().manual_seed(0))
    reference = layout.reference(downlink, built.codec) if lossless == "context" else None
    uplink = layout.pack(state, built.codec, torch.Generator().manual_seed(1), reference)
    plain = dataclasses.replace(layout, lossless=False)
    expected = plain.unpack(
        plain.pack(state, built.codec, torch.Generator().manual_seed(1)), built.codec
    )
    got = layout.unpack(uplink, built.codec, reference)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---------------------------------------------------------------------------- a run
def test_a_run_with_layer_formats_a_downlink_format_and_context_coding(tmp_path):
    """fc1 in E2M1 both ways, an E3M2 downlink for the others: both directions shrink by what
    the formats say, and context coding composes (same codec both ways)."""
    runs = {}
    for name, values in {
        "plain": {},
        "layers": {"layer-formats": "fc1:e2m1", "downlink-format": "e3m2"},
        "context": {"layer-formats": "fc1:e2m1", "lossless": "context"},
    }.items():
        run = tiny_config(tmp_path / name, method="uq", **values)
        _, rounds = run_in_process(
            run, lambda pid, run=run: QuantizedClient(run, pid, run.num_clients).to_client()
        )
        runs[name] = rounds
        assert all(r["clients_ok"] == 2 and r["clients_rejected"] == 0 for r in rounds[1:])
        assert all(math.isfinite(r["accuracy"]) for r in rounds)
    plain, layers, context = (runs[k][1] for k in ("plain", "layers", "context"))
    fc1 = LENET["fc1"]
    # two clients: the uplink saves half of fc1's bytes, the downlink also a quarter of the
    # others'; within 100 bytes per message, what the protocol fields naming the keys add
    others = sum(LENET.values()) - fc1
    saved_up = plain["bytes_up"] - layers["bytes_up"]
    saved_down = plain["bytes_down"] - layers["bytes_down"]
    assert abs(saved_up - 2 * fc1 // 2) < 200
    assert abs(saved_down - 2 * (fc1 // 2 + others - others * 6 // 8)) < 200
    assert context["bytes_up"] < 0.6 * layers["bytes_up"]
    assert np.isfinite(context["accuracy"])
