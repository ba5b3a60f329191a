"""QAFeL through the real simulation stack (run_simulation on Ray), simulated asynchrony: the same
seed gives the same run, and a run killed after step 2 and resumed ends bit-identical."""

import dataclasses

import pytest

from fp8fl.run.checkpoint import load_checkpoint
from tests.simulation import simulate, tiny_config
from tests.test_resume import kill_after_round, untimed

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ASYNC = {"method": "qafel", "num_server_rounds": 4, "buffer_size": 2, "concurrency": 3}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return simulate(tiny_config(tmp_path_factory.mktemp("ref"), run_name="run", **ASYNC))


def test_a_simulated_async_run_records_steps_staleness_and_bytes(reference):
    _, rounds = reference
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    steps = rounds[1:]
    assert all(r["aggregated"] and r["uploads"] == 2 for r in steps)
    assert [r["cum_uploads"] for r in steps] == [2, 4, 6, 8]
    assert all(len(r["staleness"]) == 2 and min(r["staleness"]) >= 0 for r in steps)
    assert any(max(r["staleness"]) > 0 for r in steps)  # concurrency 3 > K = 2: stale updates
    for r in steps:  # every client must receive each broadcast q
        assert r["bytes_down"] == r["broadcast_bytes"] * r["broadcast_receivers"] > 0
        assert [v <= r["round"] - 1 for v in r["start_versions"]] == [True, True]
    assert len({r["model_sha256"] for r in rounds}) == 5


def test_the_same_seed_gives_the_same_run(reference, tmp_path):
    _, again = simulate(tiny_config(tmp_path, run_name="run", **ASYNC))
    assert untimed(again) == untimed(reference[1])  # model digests, accuracies, bytes, staleness


def test_a_killed_async_run_resumes_bit_identically(reference, tmp_path):
    config = tiny_config(tmp_path, run_name="run", **ASYNC)
    run_dir = tmp_path / "run"
    assert kill_after_round(config, run_dir, last_round=2) == 2
    assert load_checkpoint(run_dir).aggregator["version"].item() == 2
    _, resumed = simulate(dataclasses.replace(config, resume="run"))
    assert untimed(resumed) == untimed(reference[1])


def test_real_asynchrony_completes_with_a_slow_client_and_takes_each_update_once(tmp_path):
    config = tiny_config(
        tmp_path,
        run_name="run",
        **(ASYNC | {"async_mode": "real", "client_slowdown": "0:5"}),
    )
    _, rounds = simulate(config)
    steps = rounds[1:]
    assert [r["round"] for r in steps] == [1, 2, 3, 4]
    assert all(r["aggregated"] and len(r["staleness"]) == 2 for r in steps)
    assert all(s >= 0 for r in steps for s in r["staleness"])
    jobs = [j for r in steps for j in r["jobs"]]
    assert len(jobs) == len(set(jobs)) == 8  # no update is applied twice
    assert rounds[-1]["cum_uploads"] == 8
