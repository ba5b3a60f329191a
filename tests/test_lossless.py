"""The lossless stage (``lossless = true``): bit-exact for every codec, corruption is a WireError
naming the tensor, fewer bytes in the ledger, the same model with and without it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
from flwr.common import FitIns, ndarrays_to_parameters
from torch import nn

from fp8fl.federated.lossless import code_runs, compress
from fp8fl.federated.seams import ArraySpec, Codec, State
from fp8fl.federated.wire import StateLayout, WireError, concat_float32, split_float32
from fp8fl.run.components import build
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import ProtocolError, check_instructions, fit_instructions
from fp8fl.run.training import build_run_model, run_layout
from strategies.ledger import fitins_bytes

CASES = {
    "e4m3 stochastic": {"method": "uq"},
    "e4m3 nearest": {"method": "bq"},
    "e2m1": {"method": "uq", "format": "e2m1"},
    "e3m2 (6-bit codes across bytes)": {"method": "uq", "format": "e3m2"},
    "int 8/4/2/2/8": {"method": "cq4", "cq-bits": "8,4,2,2,8"},
    "block-FP 8": {"method": "lpt8"},
    "block-FP 6, rows": {"method": "lpt8", "lpt-bits": "6", "lpt-linear-block": "row"},
    "block-FP 12 (as bytes)": {"method": "lpt8", "lpt-bits": "12"},
    "fp32 (nothing to code)": {"method": "fp32"},
}


def small_model() -> nn.Module:
    """Five quantized layers (as LeNet) of 108 to 8,192 weights: stored and coded runs occur."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Conv2d(4, 8, 3),
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.Linear(64, 32),
        nn.Linear(32, 10),
    )


def setup(values: dict, lossless: bool) -> tuple[StateLayout, Codec, State]:
    """The layout, codec and a (calibrated) state of ``small_model`` for the run config."""
    config = RunConfig.from_mapping({**values, "lossless": lossless})
    model = small_model()
    built = build(config, ())
    model = built.quantizer.prepare(model)
    if built.quantizer.calibrates:
        built.quantizer.calibrate(model, torch.randn(4, 3, 8, 8, generator=torch.Generator()))
    quantized = built.quantizer.quantized_names(model)
    return StateLayout.from_model(model, quantized, lossless), built.codec, model.state_dict()


def both(values: dict) -> tuple[StateLayout, StateLayout, Codec, State]:
    plain, codec, state = setup(values, False)
    coded, _, _ = setup(values, True)
    return plain, coded, codec, state


def packed(layout: StateLayout, codec: Codec, state: State) -> list[np.ndarray]:
    return layout.pack(state, codec, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_round_trip_is_bit_exact_for_every_codec(values):
    plain, coded, codec, state = both(values)
    sent, compressed = packed(plain, codec, state), packed(coded, codec, state)
    restored = coded.decompressed(compressed, codec)
    for a, b in zip(sent, restored):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    expected, got = plain.unpack(sent, codec), coded.unpack(compressed, codec)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # a run costs at most 5 bytes over its packed size (mode + CRC), whatever its codes
    runs = code_runs(codec, plain.array_specs(codec), plain.quantized_shapes)
    overhead = sum(a.nbytes for a in compressed) - sum(a.nbytes for a in sent)
    assert overhead <= 5 * sum(len(r) for r in runs.values())


def test_codes_with_skewed_histograms_shrink():
    """E4M3 codes of Kaiming-uniform weights with a calibrated α use well under 8 bits each."""
    plain, coded, codec, state = both(CASES["e4m3 stochastic"])
    assert packed(coded, codec, state)[0].nbytes < 0.9 * packed(plain, codec, state)[0].nbytes


class BytesCodec:
    """A codec that does not describe its codes: float32 weights as raw bytes."""

    name = "bytes"

    def array_specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[ArraySpec]:
        return [ArraySpec("raw", np.dtype(np.uint8), 4 * sum(np.prod(s) for s in shapes.values()))]

    def encode(self, weights: Mapping, state: State, generator) -> list[np.ndarray]:
        return [concat_float32(list(weights.values())).view(np.uint8)]

    def decode(self, arrays: Sequence[np.ndarray], shapes: Mapping, state: State) -> State:
        return split_float32(arrays[0].view(np.float32), shapes)


def test_a_codec_without_a_description_is_coded_as_bytes():
    plain, coded, _, state = both(CASES["e4m3 stochastic"])
    codec = BytesCodec()
    assert code_runs(codec, plain.array_specs(codec), plain.quantized_shapes)["raw"][0].bits == 8
    compressed = packed(coded, codec, state)
    got = coded.unpack(compressed, codec)
    assert all(torch.equal(got[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------- corruption
def weights_blob() -> tuple[StateLayout, Codec, list[np.ndarray], list[tuple[str, int, int]]]:
    """A lossless message and, per tensor, the byte range its run takes in the coded weights."""
    plain, coded, codec, state = both(CASES["e4m3 stochastic"])
    sent = packed(plain, codec, state)
    runs = code_runs(codec, plain.array_specs(codec), plain.quantized_shapes)["weights"]
    ranges, start, offset = [], 0, 0
    for run in runs:
        size = run.count  # 8-bit codes
        length = compress(sent[0][offset : offset + size], [run]).size
        ranges.append((run.name, start, start + length))
        start, offset = start + length, offset + size
    return coded, codec, packed(coded, codec, state), ranges


def replaced(arrays: list[np.ndarray], blob: np.ndarray) -> list[np.ndarray]:
    return [blob, *arrays[1:]]


def test_every_flipped_byte_is_a_wire_error():
    """Every byte is a header field (mode, CRC, bitmap, frequency, length) or coded data, and
    each run's CRC-32 covers its decoded codes: any single flipped byte is caught."""
    coded, codec, arrays, ranges = weights_blob()
    blob = arrays[0]
    assert ranges[-1][2] == blob.size
    positions = np.random.default_rng(0).choice(blob.size, size=150, replace=False)
    for position in sorted({*positions.tolist(), *(r[1] for r in ranges), blob.size - 1}):
        bad = blob.copy()
        bad[position] ^= 0x41
        with pytest.raises(WireError, match="lossless payload"):
            coded.unpack(replaced(arrays, bad), codec)


def test_a_corrupt_run_names_its_tensor():
    coded, codec, arrays, ranges = weights_blob()
    for name, start, end in ranges:
        bad = arrays[0].copy()
        bad[(start + end) // 2] ^= 0xFF
        with pytest.raises(WireError, match=f"weights, tensor {name}: lossless payload"):
            coded.unpack(replaced(arrays, bad), codec)


def test_truncated_or_padded_payloads_are_wire_errors():
    coded, codec, arrays, ranges = weights_blob()
    blob = arrays[0]
    for length in (0, 1, 5, ranges[0][2] - 1, ranges[1][1] + 40, blob.size - 1):
        with pytest.raises(WireError, match="truncated"):
            coded.unpack(replaced(arrays, blob[:length]), codec)
    with pytest.raises(WireError, match="1 trailing bytes"):
        coded.unpack(replaced(arrays, np.append(blob, np.uint8(0))), codec)
    with pytest.raises(WireError, match="weights: expected dtype uint8"):
        coded.unpack(replaced(arrays, blob.astype(np.float32)), codec)


def test_a_plain_message_is_refused_by_a_lossless_receiver():
    plain, coded, codec, state = both(CASES["e4m3 stochastic"])
    with pytest.raises(WireError, match="weights"):
        coded.unpack(packed(plain, codec, state), codec)


# ---------------------------------------------------------------------------- run level
def lenet_downlink(lossless: bool) -> FitIns:
    config = RunConfig.from_mapping({"method": "uq", "lossless": lossless})
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    built = build(config, layout.quantized)
    built.quantizer.calibrate(model, torch.randn(8, 3, 32, 32))
    arrays = packed(layout, built.codec, model.state_dict())
    return FitIns(ndarrays_to_parameters(arrays), fit_instructions(config, 1))


def test_the_ledger_counts_the_compressed_bytes():
    plain, coded = fitins_bytes(lenet_downlink(False)), fitins_bytes(lenet_downlink(True))
    assert coded < 0.9 * plain  # LeNet's E4M3 codes at initialisation: about 6 bits each


def test_client_and_server_must_agree_on_the_stage():
    on = RunConfig.from_mapping({"lossless": True})
    off = RunConfig.from_mapping({})
    assert off.lossless is False and "lossless" not in fit_instructions(off, 1)
    assert check_instructions(fit_instructions(on, 3), on) == 3
    with pytest.raises(ProtocolError, match="lossless"):
        check_instructions(fit_instructions(off, 1), on)


@pytest.mark.integration
def test_models_are_bit_identical_with_and_without_the_stage(tmp_path):
    """Two tiny simulated UQ runs, same seed: the same global model after every round, the same
    accuracies and unchanged-code fractions, fewer bytes each way."""
    from tests.simulation import simulate, tiny_config

    _, plain = simulate(tiny_config(tmp_path / "plain", method="uq"))
    _, coded = simulate(tiny_config(tmp_path / "coded", method="uq", lossless=True))
    assert len(plain) == len(coded) == 3
    for a, b in zip(plain, coded):
        assert a["model_sha256"] == b["model_sha256"] and a["accuracy"] == b["accuracy"]
        assert a.get("unchanged_codes") == b.get("unchanged_codes")
    for a, b in zip(plain[1:], coded[1:]):
        assert b["bytes_up"] < 0.9 * a["bytes_up"] and b["bytes_down"] < 0.9 * a["bytes_down"]


# ---------------------------------------------------------------------------- lossless = "context"
CONTEXT_CASES = {
    k: CASES[k] for k in ("e4m3 stochastic", "e2m1", "e3m2 (6-bit codes across bytes)")
}
CONTEXT_CASES |= {k: CASES[k] for k in ("int 8/4/2/2/8", "block-FP 8")}


def round_trip(values: dict) -> tuple[StateLayout, Codec, dict, list[list[np.ndarray]]]:
    """A downlink of a state and uplinks of the same state after a small change (as one round of
    local training makes): the coded layout, the codec, the downlink's reference, and the uplink
    three ways (the codec's arrays, coded alone, coded against the reference)."""
    plain, coded, codec, state = both(values)
    reference = coded.reference(coded.pack(state, codec, torch.Generator().manual_seed(1)), codec)
    noise = torch.Generator().manual_seed(2)
    trained = {
        k: v + 0.01 * v.abs().max() * torch.randn(v.shape, generator=noise)
        if k in coded.quantized
        else v
        for k, v in state.items()
    }
    uplinks = [packed(plain, codec, trained), packed(coded, codec, trained)]
    uplinks.append(coded.pack(trained, codec, torch.Generator().manual_seed(7), reference))
    return coded, codec, reference, uplinks


@pytest.mark.parametrize("values", CONTEXT_CASES.values(), ids=CONTEXT_CASES.keys())
def test_context_round_trip_is_bit_exact(values):
    coded, codec, reference, (uplink, _, sent) = round_trip(values)
    restored = coded.decompressed(sent, codec, reference)
    assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(uplink, restored))
    runs = code_runs(codec, coded.array_specs(codec), coded.quantized_shapes)
    assert reference.keys() == runs.keys()


def test_context_coding_beats_plain_coding_on_small_changes():
    """E4M3 codes that moved by about a grid step or less: their changes from the downlink cost
    far fewer bits than the codes themselves (docs/lossless.md: 6.0 -> 1.7 b/w on LeNet)."""
    _, _, _, (_, alone, sent) = round_trip(CASES["e4m3 stochastic"])
    assert sent[0].nbytes < 0.75 * alone[0].nbytes


def test_a_context_coded_uplink_needs_its_reference():
    coded, codec, reference, (_, _, sent) = round_trip(CASES["e4m3 stochastic"])
    with pytest.raises(WireError, match="coded against a downlink reference this receiver lacks"):
        coded.unpack(sent, codec)
    other = {"weights": np.roll(reference["weights"], 1)}  # another downlink
    with pytest.raises(WireError, match="checksum mismatch"):
        coded.unpack(sent, codec, other)


def test_every_flipped_byte_of_a_context_coded_uplink_is_a_wire_error():
    """Also the context shift and each context's table: every byte is checked or CRC-covered."""
    coded, codec, reference, (_, _, sent) = round_trip(CASES["e4m3 stochastic"])
    blob = sent[0]
    positions = np.random.default_rng(1).choice(blob.size, size=150, replace=False)
    for position in sorted({*positions.tolist(), *range(12), blob.size - 1}):
        bad = blob.copy()
        bad[position] ^= 0x41
        with pytest.raises(WireError, match="lossless payload"):
            coded.unpack(replaced(sent, bad), codec, reference)
    for length in (0, 5, 7, blob.size // 2, blob.size - 1):
        with pytest.raises(WireError, match="truncated"):
            coded.unpack(replaced(sent, blob[:length]), codec, reference)


def test_context_coding_is_validated_with_the_run_config():
    assert RunConfig.from_mapping({"method": "uq", "lossless": "context"}).context_coding
    assert RunConfig.from_mapping({"method": "bq", "lossless": "context"}).context_coding
    for values, problem in (
        ({"method": "fp32"}, "same codec with codes both ways, fp32 sends fp32 up"),
        ({"method": "cq4"}, "cq4 sends clipped-uniform up and fp32 down"),
        ({"method": "qafel"}, "needs synchronous rounds"),
    ):
        with pytest.raises(ValueError, match=problem):
            RunConfig.from_mapping({**values, "lossless": "context"})
    with pytest.raises(ValueError, match="lossless must be true, false or 'context', got 'ctx'"):
        RunConfig.from_mapping({"lossless": "ctx"})


def test_client_and_server_must_agree_on_context_coding():
    context = RunConfig.from_mapping({"lossless": "context"})
    plain = RunConfig.from_mapping({"lossless": True})
    assert fit_instructions(context, 1)["lossless"] == "context"
    assert fit_instructions(plain, 1)["lossless"] is True
    with pytest.raises(ProtocolError, match="lossless"):
        check_instructions(fit_instructions(plain, 1), context)


@pytest.mark.integration
def test_models_are_bit_identical_with_context_coding(tmp_path):
    """lossless = "context" against lossless = false, same seed: the same global model after
    every round, the same accuracies and unchanged-code fractions, an uplink under half the
    plain one (2 local steps barely move the codes)."""
    from tests.simulation import simulate, tiny_config

    _, plain = simulate(tiny_config(tmp_path / "plain", method="uq", num_server_rounds=3))
    _, coded = simulate(
        tiny_config(tmp_path / "coded", method="uq", num_server_rounds=3, lossless="context")
    )
    assert len(plain) == len(coded) == 4
    for a, b in zip(plain, coded):
        assert a["model_sha256"] == b["model_sha256"] and a["accuracy"] == b["accuracy"]
        assert a.get("unchanged_codes") == b.get("unchanged_codes")
    for a, b in zip(plain[1:], coded[1:]):
        assert b["bytes_up"] < 0.5 * a["bytes_up"] and b["bytes_down"] < 0.9 * a["bytes_down"]


def test_context_coding_with_mixed_client_formats_decodes_each_group_against_its_downlink(
    tmp_path,
):
    """Two format groups (E2M1 and E4M3 clients) and FP32 clients: each update is decoded against
    the downlink of its sender's group; the models match lossless = false round by round."""
    from clients.quantized_client import QuantizedClient
    from tests.inprocess import run_in_process
    from tests.simulation import tiny_config

    records = {}
    for lossless in (False, "context"):
        run = tiny_config(
            tmp_path / str(lossless),
            method="uq",
            num_clients=6,
            clients_per_round=6,
            client_formats="fp32:0.34,e4m3:0.33,e2m1:0.33",
            lossless=lossless,
        )
        _, records[lossless] = run_in_process(
            run, lambda pid, run=run: QuantizedClient(run, pid, run.num_clients).to_client()
        )
    for plain, coded in zip(records[False], records["context"], strict=True):
        assert plain["model_sha256"] == coded["model_sha256"]
        assert coded.get("clients_rejected", 0) == 0
    assert records["context"][-1]["bytes_up"] < 0.8 * records[False][-1]["bytes_up"]
