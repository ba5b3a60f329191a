"""Experiment trackers: a run's per-round metrics in TensorBoard, MLflow or Weights & Biases.

The run-config key ``tracking`` names them ("tensorboard", "mlflow", "wandb", comma-separated, or
"none"). Each is one class behind the ``Tracker`` protocol; ``Trackers`` starts the chosen ones,
feeds them every round record and the summary, and makes sure that logging never fails a run: a
tracker that cannot start, or fails later, gives one warning and is dropped (docs/tracking.md).

* ``TensorBoardTracker``: ``torch.utils.tensorboard`` event files in ``<run>/tensorboard/``;
* ``MLflowTracker``: one MLflow run per fp8fl run, in the experiment named after the results folder
  (a sweep is one experiment), in ``$MLFLOW_TRACKING_URI`` or else the SQLite store
  ``<results-dir>/mlflow.db`` (the store MLflow 3 recommends; its file store is in maintenance
  mode), artifacts in ``<results-dir>/mlartifacts``;
* ``WandbTracker``: a W&B run in ``<run>/wandb/``; ``WANDB_MODE=offline`` needs no account.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.common.logger import log

from fp8fl.run.config import RunConfig

__all__ = [
    "TRACKER_TYPES",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "round_metrics",
]

COUNTS = {
    "accuracy": "accuracy",
    "loss": "loss",
    "bytes/up": "bytes_up",
    "bytes/down": "bytes_down",
    "bytes/cum_up": "cum_bytes_up",
    "bytes/cum_down": "cum_bytes_down",
    "bytes/cum_total": "cum_bytes",
    "clients/ok": "clients_ok",
    "clients/failed": "clients_failed",
    "clients/rejected": "clients_rejected",
    "codes/unchanged_fraction": "unchanged_codes",
    "server_opt/objective_before": "server_opt_before",
    "server_opt/objective_after": "server_opt_after",
    "train/loss": "train_loss",
    "time/round_s": "wall_s",
    "time/eval_s": "eval_s",
    "time/elapsed_s": "elapsed_s",
}
"""Tracked metric name → key of the round record (``rounds.jsonl``)."""
SPREADS = {
    "staleness": "staleness",  # buffered methods: t − τ of each update
    "time/client_fit_s": "fit_seconds",
    "time/client_train_s": "train_seconds",
}
"""Tracked name → a record key holding one value per update; logged as its mean and max."""


def round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a round record that the trackers log (those the round has)."""
    metrics = {
        name: float(record[key])
        for name, key in COUNTS.items()
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)
    }
    for name, key in SPREADS.items():
        values = record.get(key)
        values = list(values.values()) if isinstance(values, dict) else values
        if values:
            metrics[f"{name}_mean"] = float(sum(values) / len(values))
            metrics[f"{name}_max"] = float(max(values))
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {
        f"summary/{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class Tracker(Protocol):
    """One experiment tracker of a run: started by its constructor (which raises when it cannot)."""

    def log_round(self, record: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None: ...


class TensorBoardTracker:
    """Event files in ``<run>/tensorboard/``: ``tensorboard --logdir results`` shows every run."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_round(self, record: dict[str, Any]) -> None:
        for name, value in round_metrics(record).items():
            self.writer.add_scalar(name, value, record["round"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        for name, value in summary_metrics(summary).items():
            self.writer.add_scalar(name, value, summary["rounds"])
        self.writer.close()


class MLflowTracker:
    """One MLflow run (named by the run id; a resumed run continues it): the resolved config as
    params, every round's metrics, the summary's numbers; ``config.json``, ``rounds.jsonl``,
    ``summary.json`` and an accuracy plot as artifacts."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        # the store's schema set-up logs at INFO on every new store: not worth a line of output
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        root, self.run_dir = run_dir.parent, run_dir
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        name = root.name or "fp8fl"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(
                name, artifact_location=(root / "mlartifacts").as_uri()
            )
        )
        found = self.client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name = '{run_dir.name}'"
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [Param(k, str(v)) for k, v in sorted(config.to_mapping().items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_round(self, record: dict[str, Any]) -> None:
        self._log(round_metrics(record), record["round"])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self._log(summary_metrics(summary), summary["rounds"])
        for name in ("config.json", "rounds.jsonl", "summary.json"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.log_figure(self.run_id, accuracy_figure(history), "accuracy.png")
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """A W&B run in ``<run>/wandb/`` (id = the run id, so a resumed run continues it); honours
    ``WANDB_MODE`` (``offline``: no account, synced later with ``wandb sync``)."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fp8fl"),
            group=run_dir.parent.name,
            name=run_dir.name,
            id=run_dir.name,
            resume="allow",
            dir=str(run_dir),
            config=config.to_mapping(),
            settings=wandb.Settings(console="off", silent=True),
        )

    def log_round(self, record: dict[str, Any]) -> None:
        self.run.log(round_metrics(record), step=record["round"])

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.run.summary.update(summary_metrics(summary))
        self.run.finish()


TRACKER_TYPES: dict[str, Callable[[RunConfig, Path], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
    "wandb": WandbTracker,
}
"""Each name of ``tracking`` (``fp8fl.run.config.TRACKERS``) and its class."""


def accuracy_figure(history: Iterable[dict[str, Any]]) -> Any:
    """Test accuracy against round and against cumulative MB sent (matplotlib)."""
    from matplotlib.figure import Figure

    points = [(r["round"], r["cum_bytes"] / 1e6, r["accuracy"]) for r in history]
    points = [p for p in points if p[2] is not None]
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    by_round, by_bytes = figure.subplots(1, 2)
    by_round.plot([p[0] for p in points], [100 * p[2] for p in points], marker=".")
    by_round.set(xlabel="round", ylabel="test accuracy (%)")
    by_bytes.plot([p[1] for p in points], [100 * p[2] for p in points], marker=".")
    by_bytes.set(xlabel="cumulative MB sent (up + down)")
    return figure


class Trackers:
    """The run's trackers: each call goes to every tracker still running; a tracker that raises
    is warned about once and dropped, so logging never fails a run."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.active: dict[str, Tracker] = {}
        for name in config.trackers:
            self._call(name, lambda name=name: self._start(name, config, run_dir), "start")

    def _start(self, name: str, config: RunConfig, run_dir: Path) -> None:
        self.active[name] = TRACKER_TYPES[name](config, run_dir)

    def _call(self, name: str, action: Callable[[], object], what: str) -> None:
        try:
            action()
        except Exception as err:  # a tracker must never fail the run
            self.active.pop(name, None)
            hint = (
                f"; install it with pip install -e '.[{name}]', or set tracking = \"none\""
                if isinstance(err, ImportError)
                else ""
            )
            log(
                WARNING,
                "fp8fl: tracking %s is off (could not %s: %s: %s%s); the run goes on",
                name,
                what,
                type(err).__name__,
                err,
                hint,
            )

    def log_round(self, record: dict[str, Any]) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, lambda tracker=tracker: tracker.log_round(record), "log a round")

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, lambda tracker=tracker: tracker.finish(summary, history), "finish")
        self.active.clear()
