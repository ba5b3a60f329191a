"""The Flower app through the real simulation stack (run_simulation on Ray): fp32 and uq runs,
the byte ledger, determinism, and malformed or failing clients."""

import json
import math

import numpy as np
import pytest
from flwr.common import ndarray_to_bytes

from fp8fl.federated.wire import StateLayout
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import QuantConfig, prepare_qat
from tests.faults import CRASH, faulty_client_app
from tests.simulation import simulate, tiny_config
from tests.test_resume import untimed

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ROUND_FIELDS = {
    "round",
    "accuracy",
    "loss",
    "bytes_up",
    "bytes_down",
    "cum_bytes",
    "server_opt_before",
    "server_opt_after",
    "clients_ok",
    "clients_failed",
    "wall_s",
}


@pytest.fixture(scope="module")
def uq_run(tmp_path_factory):
    return simulate(tiny_config(tmp_path_factory.mktemp("uq"), method="uq"))


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return simulate(tiny_config(tmp_path_factory.mktemp("fp32"), method="fp32"))


def test_a_run_writes_config_rounds_and_summary(uq_run):
    run_dir, rounds = uq_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["method"] == "uq" and config["seed"] == 0
    assert {"torch", "flwr", "numpy"} <= set(config["versions"])
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds:
        assert set(record) >= ROUND_FIELDS
    for record in rounds[1:]:
        assert record["clients_ok"] == 2 and record["clients_failed"] == 0
        assert 0.0 <= record["accuracy"] <= 1.0 and math.isfinite(record["loss"])
        assert record["server_opt_before"] == record["server_opt_after"] > 0  # plain average
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    assert summary["total_bytes"] == rounds[-1]["cum_bytes"] > 0


def test_fp32_run_has_no_quantized_wire(fp32_run):
    _, rounds = fp32_run
    assert all(r["server_opt_before"] is None for r in rounds)
    assert all("unchanged_codes" not in r for r in rounds)


def test_quantized_runs_record_the_fraction_of_unchanged_codes(uq_run):
    _, rounds = uq_run
    for record in rounds[1:]:
        per_client = record["unchanged_codes_per_client"]
        assert len(per_client) == record["clients_ok"]
        # two local steps move few weights by a grid step, but stochastic rounding moves some
        assert all(0.0 < v < 1.0 for v in per_client.values())
        assert record["unchanged_codes"] == pytest.approx(
            sum(per_client.values()) / len(per_client)
        )
    assert all(r["clients_ok"] == 2 for r in rounds[1:])


def test_round_totals_are_the_sum_over_the_sampled_clients(uq_run, fp32_run):
    for _, rounds in (uq_run, fp32_run):
        for record in rounds[1:]:
            per_client = record["bytes_up_per_client"]
            assert sorted(int(p) for p in per_client) == record["sampled"]
            assert record["bytes_up"] == sum(per_client.values())
            assert record["bytes_down"] == len(record["sampled"]) * record["bytes_down_per_client"]
        assert rounds[-1]["cum_bytes"] == sum(r["bytes_up"] + r["bytes_down"] for r in rounds)


def test_fp32_to_uq_weight_payload_ratio_is_what_the_model_split_predicts(uq_run, fp32_run):
    """Predicted from the layout: FP32 sends every tensor as float32; UQ sends the quantized
    weights as one byte each, α/β and the FP32 tensors as float32 — each array with its .npy
    header, as Flower serialises it."""
    qat = StateLayout.from_model(prepare_qat(build_model("lenet", 10), QuantConfig()))
    plain = StateLayout.from_model(build_model("lenet", 10))

    def npy(count: int, dtype) -> int:
        return len(ndarray_to_bytes(np.zeros(count, dtype)))

    fp32_arrays = (
        npy(plain.numel(plain.quantized), np.float32)
        + npy(0, np.float32)
        + npy(plain.numel(plain.dense), np.float32)
    )
    uq_arrays = (
        npy(qat.numel(qat.quantized), np.uint8)
        + npy(len(qat.scales), np.float32)
        + npy(qat.numel(qat.dense), np.float32)
    )
    predicted = fp32_arrays / uq_arrays
    assert 3.9 < predicted < 4.0  # LeNet: 99.9 % of its parameters are FP8 weights
    for direction in ("up", "down"):
        fp32 = fp32_run[1][1][f"array_bytes_{direction}"]
        uq = uq_run[1][1][f"array_bytes_{direction}"]
        assert fp32 == 2 * fp32_arrays and uq == 2 * uq_arrays  # two clients per round
        assert fp32 / uq == predicted
        # whole payloads add Flower's object headers and the config/metric scalars: a couple of
        # kB per message, under 0.5 % of a UQ LeNet message
        for run in (fp32_run, uq_run):
            record = run[1][1]
            overhead = record[f"bytes_{direction}"] - record[f"array_bytes_{direction}"]
            assert 0 < overhead / 2 < 4096
        total = fp32_run[1][1][f"bytes_{direction}"] / uq_run[1][1][f"bytes_{direction}"]
        assert abs(total / predicted - 1) < 5e-3


def test_same_seed_same_results(uq_run, tmp_path):
    _, first = uq_run
    _, again = simulate(tiny_config(tmp_path, method="uq"))

    assert untimed(first) == untimed(again)


def test_malformed_update_is_rejected_and_a_failing_client_does_not_stop_the_round(tmp_path):
    """Partition 1 sends NaN as an α, partition 2 crashes; the global model must be bit-identical
    to a run in which both are simply absent (here: both crash)."""
    config = tiny_config(tmp_path / "bad", num_clients=3, clients_per_round=3, min_fit_clients=1)
    _, rounds = simulate(config, faulty_client_app(config, {1: "alpha-nan", 2: CRASH}))
    reference = tiny_config(tmp_path / "ref", num_clients=3, clients_per_round=3, min_fit_clients=1)
    _, expected = simulate(reference, faulty_client_app(reference, {1: CRASH, 2: CRASH}))
    for record, ref in zip(rounds[1:], expected[1:]):
        assert (record["clients_ok"], record["clients_rejected"], record["clients_failed"]) == (
            1,
            1,
            1,
        )
        assert record["rejected"][0]["partition"] == 1
        assert "positive and finite" in record["rejected"][0]["reason"]
        assert "injected failure" in record["failures"][0]["reason"]
        assert record["model_sha256"] == ref["model_sha256"]
        assert record["aggregated"]
