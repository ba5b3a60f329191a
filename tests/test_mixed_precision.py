"""Mixed-precision clients (``client-formats``): parsing and validation, the seeded assignment of
formats to partitions, the server's format groups (one downlink per group, each update decoded in
its sender's format, bytes per group), and a three-format simulation."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from fp8fl.federated.client_formats import (
    FP32,
    FormatShare,
    assign_formats,
    format_counts,
    parse_client_formats,
)
from fp8fl.federated.seeds import seeded_generator
from fp8fl.federated.wire import WireError
from fp8fl.methods.fp8 import Float32Codec, FullPrecision, MinifloatCodec
from fp8fl.models.qat import alpha_name
from fp8fl.numerics.formats import FloatFormat
from fp8fl.run.client_formats import client_config, partition_config, partition_formats
from fp8fl.run.components import build, build_codec, build_downlink_codec, build_quantizer
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.protocol import ProtocolError, check_instructions, update_metrics
from fp8fl.run.training import build_run_model, run_layout
from strategies.clients import ClientDirectory
from strategies.ledger import Ledger, format_totals
from strategies.rounds import SyncRound, format_groups
from tests.simulation import serialized_bytes, simulate, tiny_config

THREE = "fp32:0.3,e4m3:0.5,e2m1:0.2"
SHIFT = 0.01
WEIGHTS = {f"{layer}.weight" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")}  # LeNet's


def mixed(value: str = THREE, **overrides) -> RunConfig:
    return RunConfig.from_mapping({"client-formats": value, **overrides})


# ---------------------------------------------------------------------------- parsing, validation
def test_parsing_normalises_names_and_keeps_the_listed_order():
    assert parse_client_formats(" FP32:0.3, E4M3:0.5 ,e2m1:0.2") == (
        FormatShare("fp32", 0.3),
        FormatShare("e4m3", 0.5),
        FormatShare("e2m1", 0.2),
    )
    assert parse_client_formats("") == ()
    assert RunConfig().settings.client_formats == "" and partition_formats(RunConfig()) == ()


def test_fractions_may_miss_one_by_rounding_only():
    assert len(parse_client_formats("e4m3:0.1,e2m1:0.2,fp32:0.7")) == 3  # 0.1+0.2+0.7 != 1.0
    with pytest.raises(ValueError, match=r"sum to 0\.99, not 1"):
        parse_client_formats("e4m3:0.49,fp32:0.5")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        mixed("fp32,e9m9:0.5,e4m3:1.5,e5m2:x,e2m1:0.5,e2m1:0.5", lr=-1.0)
    message = str(err.value)
    for part in (
        "expected 'format:fraction', got 'fp32'",
        "invalid float format 'e9m9'",
        "the fraction of 'e4m3' must be in (0, 1]",
        "the fraction of 'e5m2:x' is not a number",
        "client-formats names e2m1 twice",
        "lr must be > 0",
    ):
        assert part in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "cq8"}, "client-formats applies to the FP8 methods"),
        ({"method": "lpt8"}, "client-formats applies to the FP8 methods"),
        ({"method": "fp32"}, "client-formats needs QAT"),
        ({"client-formats": "fp32:1"}, "names no minifloat format"),
        ({"client-formats": "e4m3:0.95,e2m1:0.05"}, "no partition gets e2m1"),  # 10 clients
        ({"client-formats": "e4m3:0.5,fp32:0.6"}, "sum to 1.1, not 1"),
    ],
)
def test_runs_where_mixed_formats_mean_nothing_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        mixed(**overrides)


@pytest.mark.parametrize("method", ["uq", "uq+", "bq", "qat-fp32wire", "randqat-fp32wire"])
def test_every_qat_method_of_the_fp8_family_takes_mixed_formats(method):
    assert mixed(method=method, num_clients=10).settings.client_formats == THREE


# ---------------------------------------------------------------------------- assignment
def test_counts_are_the_largest_remainder_apportionment():
    shares = parse_client_formats(THREE)
    assert format_counts(shares, 10) == {"fp32": 3, "e4m3": 5, "e2m1": 2}
    # quotas 2.1, 3.5, 1.4: floors 2, 3, 1 and the one left over to the largest remainder
    assert format_counts(shares, 7) == {"fp32": 2, "e4m3": 4, "e2m1": 1}
    thirds = parse_client_formats("e4m3:0.3333333,e2m1:0.3333333,fp32:0.3333334")
    assert format_counts(thirds, 4) == {"e4m3": 1, "e2m1": 1, "fp32": 2}  # 1.33, 1.33, 1.33+
    halves = parse_client_formats("e2m1:0.5,e4m3:0.5")
    assert format_counts(halves, 3) == {"e2m1": 2, "e4m3": 1}  # a tie: the one listed first


def test_counts_sum_to_the_clients_and_stay_within_one_of_the_quota():
    rng = np.random.default_rng(0)
    names = ["fp32", *FloatFormat.NAMED]
    for _ in range(500):
        k = int(rng.integers(1, len(names) + 1))
        fractions = rng.dirichlet(np.ones(k))
        shares = tuple(FormatShare(n, float(f)) for n, f in zip(names, fractions))
        n = int(rng.integers(1, 300))
        counts = format_counts(shares, n)
        assert sum(counts.values()) == n
        assert all(abs(counts[s.name] - s.fraction * n) < 1 for s in shares)


def test_assignment_is_seeded_and_exact():
    shares = parse_client_formats(THREE)
    first = assign_formats(shares, 20, seed=3)
    assert first == assign_formats(shares, 20, seed=3)
    assert first != assign_formats(shares, 20, seed=4)
    assert {f: first.count(f) for f in set(first)} == {"fp32": 6, "e4m3": 10, "e2m1": 4}
    config = mixed(num_clients=20, seed=3)
    assert partition_formats(config) == first


def test_each_client_sees_the_run_in_its_own_format():
    config = mixed(num_clients=10, seed=1)
    for pid, fmt in enumerate(partition_formats(config)):
        view = partition_config(config, pid)
        assert view.format == fmt and view.settings.client_formats == ""
        codec, quantizer = build_codec(view), build_quantizer(view)
        if fmt == FP32:
            assert (view.settings.qat, view.settings.wire) == ("none", "fp32")
            assert isinstance(codec, Float32Codec) and isinstance(quantizer, FullPrecision)
        else:
            assert (view.settings.qat, view.settings.wire) == (
                config.settings.qat,
                config.settings.wire,
            )
            assert isinstance(codec, MinifloatCodec) and codec.rounding.fmt.name == fmt
    single = RunConfig()
    assert partition_config(single, 0) is single


# ---------------------------------------------------------------------------- the server's round
def server_round(config: RunConfig) -> tuple[SyncRound, dict[str, torch.Tensor]]:
    """The server's side of a round of ``config`` on LeNet, every partition holding 100 examples."""
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    built = build(config, layout.quantized)
    built.quantizer.calibrate(model, torch.randn(8, 3, 32, 32))  # β from a batch, as the server
    clients = ClientDirectory(config.num_clients)
    clients.partition_size = dict.fromkeys(range(config.num_clients), 100)
    groups = format_groups(config, built, layout, 10)
    sync = SyncRound(config, built, layout, clients, Ledger(), groups)
    return sync, model.state_dict()


def encoded_update(view: RunConfig, pid: int, state: dict[str, torch.Tensor]) -> FitRes:
    """``state`` as a client of ``view`` sends it, from partition ``pid``."""
    layout = run_layout(view, build_run_model(view, 10))
    update = layout.pack(state, build_codec(view), seeded_generator(0, "test", pid))
    metrics = update_metrics(view, pid, {"train-loss": 1.0}, 0.1)
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), 100, metrics)


def client_update(config: RunConfig, pid: int, ins: FitIns) -> FitRes:
    """What the client of ``pid`` sends back (as ``QuantizedClient.fit``, with training replaced
    by adding 0.01 to every weight): decoded, changed and encoded in its own format."""
    view = partition_config(config, pid)
    check_instructions(ins.config, view)
    layout = run_layout(view, build_run_model(view, 10))
    state = layout.unpack(parameters_to_ndarrays(ins.parameters), build_downlink_codec(view))
    return encoded_update(
        view, pid, {k: v + SHIFT if k in WEIGHTS else v for k, v in state.items()}
    )


@pytest.fixture(scope="module")
def round_one():
    """Round 1 of a three-format run of 5 partitions (fp32 2, e4m3 2, e2m1 1 by largest
    remainder) on the server's side: the broadcast, and every client's update, counted."""
    config = mixed(num_clients=5, seed=1)
    sync, global_state = server_round(config)
    sync.ledger.start_round()
    sent = sync.broadcast(global_state, 1, list(range(5)))
    updates = {pid: client_update(config, pid, sent.ins(pid)) for pid in range(5)}
    for pid, res in updates.items():
        sync.ledger.received(res, str(pid), sync.groups.of(pid).name)
    return sync, global_state, sent, updates


def test_one_downlink_per_group_and_each_update_decodes_in_its_own_format(round_one):
    sync, global_state, sent, updates = round_one
    assert sorted(sent.downlinks) == ["e2m1", "e4m3", "fp32"]
    for pid, fmt in enumerate(sync.groups.of_partition):
        assert sent.ins(pid).config["format"] == fmt
        update = sync.check(pid, updates[pid], global_state)
        assert list(update.state) == list(global_state)  # the run's full layout, in its order
        for name in sync.layout.quantized:
            decoded, alpha = update.state[name], update.state[alpha_name(name)]
            if fmt == FP32:  # float32 weights as sent; the ranges it has no say in: the global's
                assert torch.equal(alpha, global_state[alpha_name(name)])
                assert torch.equal(decoded, global_state[name] + SHIFT)
            else:  # every value on the grid of the client's own format and α
                grid = FloatFormat.from_name(fmt).grid(alpha)
                assert torch.isin(decoded, grid).all(), (pid, name)


def test_an_update_in_another_format_than_its_partitions_is_rejected():
    config = mixed(num_clients=10, seed=1)
    formats = partition_formats(config)
    pid = formats.index("e2m1")
    sync, global_state = server_round(config)
    as_e4m3 = encoded_update(client_config(config, "e4m3"), pid, global_state)
    with pytest.raises(ProtocolError, match="format = 'e4m3'"):
        sync.check(pid, as_e4m3, global_state)
    as_e4m3.metrics["format"] = "e2m1"  # claims its own format, sends E4M3's bytes
    with pytest.raises(WireError, match="weights: oversized"):
        sync.check(pid, as_e4m3, global_state)


def test_the_ledger_counts_bytes_per_group_and_a_single_format_run_keeps_none(round_one):
    sync = round_one[0]
    entry = sync.ledger.close_round()
    groups = entry["bytes_by_format"]
    assert {g: groups[g]["clients"] for g in groups} == {"e2m1": 1, "e4m3": 2, "fp32": 2}
    for key in ("bytes_up", "bytes_down", "array_bytes_up", "array_bytes_down"):
        assert sum(g[key] for g in groups.values()) == entry[key]
    for name, group in sync.groups.by_name.items():  # each group's arrays, exactly
        one = serialized_bytes(group.layout.array_specs(group.codec))
        assert groups[name]["array_bytes_up"] == groups[name]["array_bytes_down"]
        assert groups[name]["array_bytes_down"] == groups[name]["clients"] * one
    # E2M1 packs two codes per byte: its clients' weights cost half of E4M3's, a quarter of FP32's
    up = {g: groups[g]["array_bytes_up"] / groups[g]["clients"] for g in groups}
    assert 1.9 < up["e4m3"] / up["e2m1"] < 2.0 and 3.9 < up["fp32"] / up["e4m3"] < 4.0
    assert entry["bytes_down_per_client"] is None
    assert format_totals([entry, entry]) == {
        g: {k: 2 * v for k, v in e.items() if k != "bytes_down_per_client"}
        for g, e in groups.items()
    }

    single, state = server_round(RunConfig.from_mapping({}))
    single.ledger.start_round()
    sent = single.broadcast(state, 1, [0, 1])
    assert list(sent.downlinks) == [""]
    entry = single.ledger.close_round()
    assert "bytes_by_format" not in entry and entry["bytes_down_per_client"] > 0
    assert format_totals([entry]) == {}


# ---------------------------------------------------------------------------- a whole run
@pytest.mark.integration
def test_a_three_format_run_completes_and_records_bytes_per_group(tmp_path):
    config = tiny_config(
        tmp_path,
        method="uq",
        num_clients=4,
        clients_per_round=4,
        client_formats="fp32:0.25,e4m3:0.5,e2m1:0.25",
    )
    formats = partition_formats(config)
    assert sorted(formats) == ["e2m1", "e4m3", "e4m3", "fp32"]
    run_dir, rounds = simulate(config)
    sync, _ = server_round(config)
    for record in rounds[1:]:
        # the server decoded every update with its sender's format: none was rejected
        assert record["clients_ok"] == 4 and record["clients_rejected"] == 0
        assert record["formats"] == {str(p): f for p, f in enumerate(formats)}
        assert math.isfinite(record["loss"])
        groups = record["bytes_by_format"]
        for key in ("bytes_up", "bytes_down", "array_bytes_up", "array_bytes_down"):
            assert sum(g[key] for g in groups.values()) == record[key]
        for name, group in sync.groups.by_name.items():  # each group's arrays, exactly
            one = serialized_bytes(group.layout.array_specs(group.codec))
            assert groups[name]["array_bytes_up"] == groups[name]["clients"] * one
            assert groups[name]["array_bytes_down"] == groups[name]["clients"] * one
        # unchanged codes are measured for the clients with minifloat codes only
        assert sorted(record["unchanged_codes_per_client"]) == sorted(
            str(p) for p, f in enumerate(formats) if f != FP32
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bytes_by_format"] == format_totals(rounds)
    assert (
        sum(g["bytes_up"] + g["bytes_down"] for g in summary["bytes_by_format"].values())
        == (summary["total_bytes"])
    )
