"""Experiment tracking (``strategies.tracking``): each tracker writes through its real library, and
what it wrote is read back with that library's own reader (TensorBoard's EventAccumulator,
``mlflow.search_runs``, the W&B offline run file); a tracker that cannot start never fails a run."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fp8fl.run.config import TRACKERS, ConfigError, RunConfig
from strategies.journal import RunJournal
from strategies.tracking import TRACKER_TYPES
from tests import wandb_offline

ROUND_FACTS = {
    "sampled": [0, 3],
    "clients_ok": 2,
    "clients_failed": 1,
    "clients_rejected": 0,
    "server_opt_before": 0.8,
    "server_opt_after": 0.5,
    "unchanged_codes": 0.25,
    "fit_seconds": {"0": 1.0, "3": 3.0},
    "train_seconds": {"0": 0.5, "3": 2.5},
    "staleness": [0, 2, 4],
}


def run_journal(results: Path, tracking: str, rounds: int = 2) -> RunJournal:
    """A run's journal fed like a server feeds it: round 0, ``rounds`` rounds, the summary."""
    config = RunConfig.from_mapping(
        {
            "results-dir": str(results),
            "run-name": "tracked",
            "tracking": tracking,
            "num-server-rounds": rounds,
        }
    )
    journal = RunJournal(config)
    journal.record(0, (2.3, 0.1), "digest", None, 0.01)
    for r in range(1, rounds + 1):
        journal.start_round_clock()
        journal.ledger.round_up, journal.ledger.round_down = 1000 * r, 4000
        journal.record(r, (2.3 - r, 0.1 + 0.2 * r), "digest", {"round": r, **ROUND_FACTS}, 0.01)
    journal.finish()
    return journal


@pytest.fixture
def flower_warnings():
    """Warnings of Flower's logger (which fp8fl's messages go through)."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                caught.append(record.getMessage())

    handler = Catch()
    logging.getLogger("flwr").addHandler(handler)
    yield caught
    logging.getLogger("flwr").removeHandler(handler)


def test_tracking_names_are_checked_and_combine():
    assert set(TRACKERS) == set(TRACKER_TYPES)
    assert RunConfig.from_mapping({"tracking": "tensorboard, mlflow"}).trackers == (
        "tensorboard",
        "mlflow",
    )
    assert RunConfig.from_mapping({"tracking": "none"}).trackers == ()
    with pytest.raises(ConfigError, match=r"tracking must be none or .*got .tensorbord."):
        RunConfig.from_mapping({"tracking": "tensorbord"})
    with pytest.raises(ConfigError, match=r"tracking must be"):
        RunConfig.from_mapping({"tracking": ""})


def test_tensorboard_event_files_hold_every_round(tmp_path):
    journal = run_journal(tmp_path, "tensorboard")
    events = EventAccumulator(str(journal.recorder.run_dir / "tensorboard"))
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    # the event file holds float32: values compare to float32 precision
    assert [s for s, _ in scalars["accuracy"]] == [0, 1, 2]
    assert [v for _, v in scalars["accuracy"]] == pytest.approx([0.1, 0.3, 0.5], rel=1e-6)
    assert [v for _, v in scalars["loss"]] == pytest.approx([2.3, 1.3, 0.3], rel=1e-6)
    assert scalars["bytes/up"] == [(0, 0), (1, 1000), (2, 2000)]
    assert scalars["bytes/cum_total"] == [(0, 0), (1, 5000), (2, 11000)]
    assert scalars["clients/ok"][1:] == [(1, 2), (2, 2)]
    assert scalars["clients/failed"][1:] == [(1, 1), (2, 1)]
    assert scalars["clients/rejected"] == [(1, 0), (2, 0)]  # round 0 has no clients
    assert scalars["codes/unchanged_fraction"] == [(1, 0.25), (2, 0.25)]
    assert [v for _, v in scalars["server_opt/objective_before"]] == pytest.approx([0.8] * 2)
    assert scalars["server_opt/objective_after"] == [(1, 0.5), (2, 0.5)]
    assert scalars["staleness_mean"] == [(1, 2), (2, 2)] and scalars["staleness_max"][0] == (1, 4)
    assert scalars["time/client_fit_s_max"] == [(1, 3), (2, 3)]
    assert {"time/round_s", "time/eval_s", "time/elapsed_s"} <= scalars.keys()
    assert scalars["summary/final_accuracy"] == [(2, 0.5)]


def test_mlflow_run_has_config_metrics_summary_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    journal = run_journal(tmp_path, "mlflow")
    assert (tmp_path / "mlflow.db").is_file()  # the SQLite store under the results folder
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=[tmp_path.name], output_format="list")
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["method"] == "uq" and run.data.params["tracking"] == "mlflow"
    assert run.data.params["num-server-rounds"] == "2"
    assert run.data.metrics["accuracy"] == pytest.approx(0.5)
    assert run.data.metrics["summary/final_accuracy"] == pytest.approx(0.5)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "bytes/cum_total")
    assert [(m.step, m.value) for m in history] == [(0, 0), (1, 5000), (2, 11000)]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"config.json", "rounds.jsonl", "summary.json", "accuracy.png"}
    assert journal.recorder.run_dir.name == "tracked"


def test_runs_of_one_results_folder_are_one_mlflow_experiment(tmp_path, monkeypatch):
    """A sweep writes its runs into one results folder: one experiment, a run each."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_journal(tmp_path, "mlflow")
    run_journal(tmp_path, "mlflow")  # a second run: folder tracked-2
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[tmp_path.name], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["tracked", "tracked-2"]


def test_wandb_offline_run_needs_no_account(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    journal = run_journal(tmp_path, "wandb")
    (run_file,) = (journal.recorder.run_dir / "wandb").glob("offline-run-*/run-tracked.wandb")
    rows = wandb_offline.history(run_file)
    assert [r["_step"] for r in rows] == [0, 1, 2]
    assert [r["accuracy"] for r in rows] == pytest.approx([0.1, 0.3, 0.5])
    assert [r["bytes/cum_total"] for r in rows] == [0, 5000, 11000]
    assert rows[1]["server_opt/objective_after"] == pytest.approx(0.5)
    assert wandb_offline.config(run_file)["method"] == "uq"
    assert wandb_offline.summary(run_file)["summary/final_accuracy"] == pytest.approx(0.5)


def test_a_tracker_that_cannot_start_warns_once_and_the_run_goes_on(
    tmp_path, monkeypatch, flower_warnings
):
    (tmp_path / "a-file").write_text("")  # no store can be made below a file
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a-file/mlflow.db")
    journal = run_journal(tmp_path / "results", "mlflow,tensorboard")
    mlflow_warnings = [w for w in flower_warnings if "tracking mlflow is off" in w]
    assert len(mlflow_warnings) == 1, flower_warnings
    assert (journal.recorder.run_dir / "summary.json").is_file()
    assert list((journal.recorder.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_tracker_that_fails_later_is_dropped_after_one_warning(
    tmp_path, monkeypatch, flower_warnings
):
    """Its MLflow run is deleted after round 0: logging to it fails, the run does not."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = RunConfig.from_mapping(
        {
            "results-dir": str(tmp_path),
            "run-name": "r",
            "num-server-rounds": 3,
            "tracking": "mlflow,tensorboard",
        }
    )
    journal = RunJournal(config)
    journal.record(0, (2.3, 0.1), "digest", None, 0.0)
    tracker = journal.trackers.active["mlflow"]
    tracker.client.delete_run(tracker.run_id)
    for r in (1, 2, 3):
        journal.record(r, (2.0, 0.2), "digest", {"round": r, **ROUND_FACTS}, 0.0)
    journal.finish()
    assert len([w for w in flower_warnings if "tracking mlflow is off" in w]) == 1
    assert (journal.recorder.run_dir / "summary.json").is_file()
    events = EventAccumulator(str(journal.recorder.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy")] == [0, 1, 2, 3]
