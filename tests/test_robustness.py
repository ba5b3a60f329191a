"""Failing and malformed clients through the real simulation stack: counted with reasons, never
averaged, and the run goes on while at least min-fit-clients succeed."""

import json

import pytest

from clients.malformed import MUTATIONS
from tests.faults import CRASH, faulty_client_app
from tests.simulation import simulate, tiny_config

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes


def test_thirty_percent_failing_clients_do_not_stop_the_run(tmp_path):
    config = tiny_config(tmp_path, num_clients=10, clients_per_round=10, min_fit_clients=7)
    run_dir, rounds = simulate(config, faulty_client_app(config, {0: CRASH, 4: CRASH, 7: CRASH}))
    for record in rounds[1:]:
        assert (record["clients_ok"], record["clients_failed"]) == (7, 3)
        assert record["aggregated"]
        assert len(record["failures"]) == 3 and record["failed_partitions"] == [0, 4, 7]
        assert all("injected failure" in f["reason"] for f in record["failures"])
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2


def test_a_round_with_too_few_valid_updates_keeps_the_global_model(tmp_path):
    config = tiny_config(
        tmp_path, num_clients=3, clients_per_round=3, min_fit_clients=3, num_server_rounds=1
    )
    _, rounds = simulate(config, faulty_client_app(config, {1: "dense-nan"}))
    assert rounds[1]["clients_ok"] == 2 and rounds[1]["clients_rejected"] == 1
    assert rounds[1]["skipped"] == "too few valid updates" and not rounds[1]["aggregated"]
    assert rounds[1]["model_sha256"] == rounds[0]["model_sha256"]


def test_every_malformed_update_is_rejected_and_only_valid_clients_count(tmp_path):
    """One client per corpus entry plus two valid ones, all sampled in the same round. The global
    model must be bit-identical to that of the same round in which every faulty client crashes
    (the valid clients alone)."""
    names = sorted(MUTATIONS)
    assert len(names) >= 15
    count = len(names) + 2
    faults = dict(enumerate(names))
    config = tiny_config(
        tmp_path / "bad", num_clients=count, clients_per_round=count, num_server_rounds=1
    )
    _, rounds = simulate(config, faulty_client_app(config, faults))
    reference = tiny_config(
        tmp_path / "ref", num_clients=count, clients_per_round=count, num_server_rounds=1
    )
    _, expected = simulate(reference, faulty_client_app(reference, dict.fromkeys(faults, CRASH)))
    record = rounds[1]
    reasons = {r["partition"]: r["reason"] for r in record["rejected"]}
    for pid, name in faults.items():
        if pid in reasons:
            assert MUTATIONS[name][1] in reasons[pid], (name, reasons[pid])
        else:  # Flower's client refuses to send some updates at all (n_k = 12.5 is not an int)
            assert pid in record["failed_partitions"], f"{name} was neither rejected nor refused"
            assert name == "n-not-integer"
    assert record["clients_ok"] == 2
    assert record["clients_rejected"] + record["clients_failed"] == len(names)
    assert record["model_sha256"] == expected[1]["model_sha256"]
