"""Checkpoint and resume: a run killed after round 2 and resumed ends exactly like an uninterrupted
run with the same seed."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fp8fl.run.checkpoint import Checkpoint, load_checkpoint, rng_states, save_checkpoint
from fp8fl.run.config import ConfigError
from fp8fl.run.results import RunRecorder
from strategies.quantized_fedavg import QuantizedFedAvg
from tests.simulation import simulate, tiny_config

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ROOT = Path(__file__).resolve().parents[1]


def untimed(records):
    """Records without what says when and where they ran: wall times (…_s, …_seconds) and the Ray
    node of each client (``nodes``: each Ray instance has new ids)."""
    return [
        {k: v for k, v in r.items() if not k.endswith(("_s", "_seconds")) and k != "nodes"}
        for r in records
    ]


def kill_after_round(config, run_dir: Path, last_round: int, timeout_s: float = 300) -> int:
    """Run ``config`` in a child process group and SIGKILL the whole group as soon as the
    checkpoint of ``last_round`` exists; returns the round the checkpoint holds."""
    child = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli.simulate", json.dumps(config.to_mapping())],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if (run_dir / "checkpoint.pt").is_file() and load_checkpoint(
                run_dir
            ).round >= last_round:
                break
            time.sleep(0.1)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    return load_checkpoint(run_dir).round


@pytest.mark.parametrize("method", ["uq", "lpt8"])  # lpt8: a moving average whose state resumes
def test_killed_run_resumes_to_the_same_model_accuracy_and_ledger(tmp_path, method):
    reference_config = tiny_config(
        tmp_path / "ref", method=method, num_server_rounds=4, run_name="run"
    )
    _, reference = simulate(reference_config)
    config = tiny_config(tmp_path / "crash", method=method, num_server_rounds=4, run_name="run")
    run_dir = tmp_path / "crash" / "run"
    assert kill_after_round(config, run_dir, last_round=2) == 2
    assert not (run_dir / "summary.json").exists()
    _, resumed = simulate(dataclasses.replace(config, resume="run"))
    assert [r["round"] for r in resumed] == [0, 1, 2, 3, 4]
    assert untimed(resumed) == untimed(reference)  # model digest, accuracy, loss and bytes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_bytes"] == reference[-1]["cum_bytes"]
    assert summary["final_accuracy"] == reference[-1]["accuracy"]
    assert load_checkpoint(run_dir).round == 4
    resumptions = json.loads((run_dir / "config.json").read_text())["resumed"]
    assert len(resumptions) == 1
    # the wall time counts the killed stretch's rounds too, not only the resumed ones
    assert summary["wall_s"] == pytest.approx(sum(r["wall_s"] for r in resumed), rel=1e-12)
    assert summary["wall_s"] > sum(r["wall_s"] for r in resumed[3:])


@pytest.fixture
def checkpointed_run(tmp_path):
    """A run folder whose checkpoint says round 2 of 4 is done (no Flower needed)."""
    config = tiny_config(tmp_path, num_server_rounds=4, run_name="half")
    recorder = RunRecorder(config)
    save_checkpoint(
        recorder.run_dir,
        Checkpoint(
            2, {"w": torch.zeros(1)}, {"up": 10, "down": 20}, config.to_mapping(), rng_states()
        ),
    )
    for r in range(4):  # round 3's record was written before the crash, its checkpoint was not
        recorder.round({"round": r})
    return config


def test_resume_refuses_a_different_run_config(checkpointed_run, tmp_path):
    changed = dataclasses.replace(checkpointed_run, resume="half", lr=0.5)
    with pytest.raises(ConfigError, match=r"lr was 0\.1, now 0\.5"):
        QuantizedFedAvg(changed)
    # a refused resumption leaves the run's folder as it was
    assert "resumed" not in json.loads((tmp_path / "half" / "config.json").read_text())


def test_resume_refuses_a_finished_run(checkpointed_run):
    finished = dataclasses.replace(checkpointed_run, resume="half", num_server_rounds=2)
    with pytest.raises(ConfigError, match="nothing to resume"):
        QuantizedFedAvg(finished)


def test_resume_drops_records_of_the_lost_round_and_may_add_rounds(checkpointed_run):
    strategy = QuantizedFedAvg(
        dataclasses.replace(checkpointed_run, resume="half", num_server_rounds=6)
    )
    journal = strategy.server.journal
    assert journal.start_round == 2 and strategy.rounds_to_run == 4
    assert [r["round"] for r in journal.history] == [0, 1, 2]
    assert (journal.ledger.up, journal.ledger.down) == (10, 20)


def test_resume_of_an_unknown_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        QuantizedFedAvg(tiny_config(tmp_path, resume="nope"))
