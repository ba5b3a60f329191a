"""StateLayout: the three-array message, both directions, and its checks."""

import math

import numpy as np
import pytest
import torch

from clients.malformed import ARRAY_PROBLEMS, MUTATIONS
from fp8fl.federated.wire import StateLayout, WireError
from fp8fl.methods.fp8 import Float32Codec, MinifloatCodec
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import QuantConfig, alpha_name, calibrate, prepare_qat
from fp8fl.numerics.codec import decode, pack_codes
from fp8fl.numerics.formats import E2M1, E4M3
from fp8fl.numerics.quant import Rounding, quantize

INPUTS = {"lenet": (3, 3, 32, 32), "kwt1": (3, 98, 40), "matchboxnet": (3, 64, 101)}


def qat_model(name: str, fmt=E4M3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = prepare_qat(build_model(name, 10), QuantConfig(fmt, "nearest"))
    calibrate(model, torch.randn(INPUTS[name]))
    return model


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_layout_splits_every_state_entry_once(name):
    model = qat_model(name)
    layout = StateLayout.from_model(model)
    assert sorted(layout.quantized + layout.scales + layout.dense) == sorted(model.state_dict())
    assert all(alpha_name(w) in layout.scales for w in layout.quantized)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_fp32_wire_round_trip_is_exact(name):
    model = qat_model(name)
    layout = StateLayout.from_model(model)
    state = model.state_dict()
    back = layout.unpack(layout.pack(state, Float32Codec()), Float32Codec())
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k].float()) for k in state)


@pytest.mark.parametrize("fmt", [E4M3, E2M1], ids=str)
def test_quantized_wire_sends_codes_with_each_weights_alpha(fmt):
    model = qat_model("lenet", fmt)
    layout = StateLayout.from_model(model)
    state = model.state_dict()
    arrays = layout.pack(state, MinifloatCodec(Rounding(fmt, False)))
    assert arrays[0].dtype == np.uint8
    n_quantized = layout.numel(layout.quantized)
    assert arrays[0].nbytes == sum(
        -(-math.prod(state[w].shape) * fmt.bits // 8) for w in layout.quantized
    )
    assert n_quantized == 797_962 - (64 + 64 + 384 + 192 + 10)  # LeNet minus its biases
    back = layout.unpack(arrays, MinifloatCodec(Rounding(fmt, False)))
    for w in layout.quantized:
        assert torch.equal(back[w], quantize(state[w], state[alpha_name(w)], fmt))
    for k in layout.scales + layout.dense:
        assert torch.equal(back[k], state[k])


@pytest.mark.parametrize("fmt", [E4M3, E2M1], ids=str)
def test_codes_unpacks_one_code_per_weight_in_state_order(fmt):
    """``MinifloatCodec.codes``: what the server compares to count the codes a round left unchanged."""
    model = qat_model("lenet", fmt)
    layout = StateLayout.from_model(model)
    state = model.state_dict()
    codec = MinifloatCodec(Rounding(fmt, False))
    codes = codec.codes(layout.pack(state, codec)[0], layout.quantized_shapes)
    assert codes.dtype == np.uint8 and codes.size == layout.numel(layout.quantized)
    offset = 0
    for w in layout.quantized:
        n = state[w].numel()
        expected = decode(
            pack_codes(codes[offset : offset + n], fmt.bits),
            state[alpha_name(w)],
            fmt,
            shape=state[w].shape,
        )
        assert torch.equal(expected, quantize(state[w], state[alpha_name(w)], fmt))
        offset += n
    assert int(codes.max()) < 2**fmt.bits


def test_stochastic_wire_depends_on_the_generator_only():
    model = qat_model("lenet")
    layout = StateLayout.from_model(model)
    state = model.state_dict()
    first = layout.pack(
        state, MinifloatCodec(Rounding(E4M3, True)), torch.Generator().manual_seed(3)
    )
    again = layout.pack(
        state, MinifloatCodec(Rounding(E4M3, True)), torch.Generator().manual_seed(3)
    )
    other = layout.pack(
        state, MinifloatCodec(Rounding(E4M3, True)), torch.Generator().manual_seed(4)
    )
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], other[0])


def test_plain_fp32_model_travels_as_dense_only():
    model = build_model("lenet", 10)
    layout = StateLayout.from_model(model)
    assert layout.quantized == () and layout.scales == ()
    arrays = layout.pack(model.state_dict(), Float32Codec())
    assert [a.size for a in arrays] == [0, 0, 797_962]


def valid_update():
    model = qat_model("lenet")
    layout = StateLayout.from_model(model)
    arrays = layout.pack(
        model.state_dict(), MinifloatCodec(Rounding(E4M3, True)), torch.Generator().manual_seed(0)
    )
    return layout, arrays


ARRAY_MUTATIONS = {k: v for k, v in MUTATIONS.items() if k.startswith(ARRAY_PROBLEMS)}


@pytest.mark.parametrize("name", sorted(ARRAY_MUTATIONS))
def test_malformed_arrays_are_rejected_with_a_reason(name):
    layout, arrays = valid_update()
    mutation, reason = ARRAY_MUTATIONS[name]
    bad, _, _ = mutation((arrays, 100, {"partition-id": 0}))
    with pytest.raises(WireError, match=reason):
        layout.unpack(bad, MinifloatCodec(Rounding(E4M3, True)))


def test_codes_decode_with_the_alpha_they_were_sent_with():
    layout, arrays = valid_update()
    state = layout.unpack(arrays, MinifloatCodec(Rounding(E4M3, True)))
    first = layout.quantized[0]
    size = state[first].numel()
    expected = decode(arrays[0][:size], state[alpha_name(first)], shape=state[first].shape)
    assert torch.equal(state[first], expected)
