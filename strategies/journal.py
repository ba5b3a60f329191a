"""The run's records, checkpoint and resume: what the server writes after every round, and how a
run that died continues from its last completed round."""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

import torch
from flwr.common.logger import log

from fp8fl.run.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from fp8fl.run.config import ConfigError, RunConfig, config_changes
from fp8fl.run.results import RunRecorder, portable_path, resolve_results_dir
from strategies.ledger import Ledger, format_totals
from strategies.progress import RunProgress
from strategies.tracking import Trackers

__all__ = ["RESUMABLE_CHANGES", "RunJournal"]

RESUMABLE_CHANGES = {"resume", "num-server-rounds", "run-name", "tracking"}
"""Run-config keys a resumed run may change (more rounds; how it is named, resumed, tracked)."""

EMPTY_BYTES = {
    "bytes_up": 0,
    "bytes_down": 0,
    "array_bytes_up": 0,
    "array_bytes_down": 0,
    "cum_bytes_up": 0,
    "cum_bytes_down": 0,
    "cum_bytes": 0,
}


class RunJournal:
    """Records (``rounds.jsonl``, ``summary.json``), the byte ledger, progress, experiment
    trackers (``strategies.tracking``) and the checkpoint of one run. With ``config.resume`` it
    reopens that run and restores what its checkpoint holds: the global state and the
    aggregator's (``resume_state``, ``aggregator_state``), the ledger, the records up to the
    checkpoint and the global RNG states."""

    def __init__(
        self,
        config: RunConfig,
        recorder: RunRecorder | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        self.config = config
        self.ledger = Ledger()
        self.history: list[dict[str, Any]] = []
        self.start_round = 0
        self.resume_state: dict[str, torch.Tensor] | None = None
        self.aggregator_state: dict[str, torch.Tensor] = {}
        if config.resume:
            checkpoint = load_checkpoint(resolve_results_dir(config.results_dir) / config.resume)
            self._check_resumable(checkpoint)
            self.recorder = recorder or RunRecorder.reopen(config, config.resume)
            self._adopt(checkpoint)
        else:
            self.recorder = recorder or RunRecorder(config)
        self.progress = progress or RunProgress(self.recorder.run_id, config.num_server_rounds)
        self.trackers = Trackers(config, self.recorder.run_dir)
        self.round_started = self.run_started = time.perf_counter()

    def _check_resumable(self, checkpoint: Checkpoint) -> None:
        """The checkpoint must come from this same run config, and leave rounds to run."""
        changed = config_changes(checkpoint.config, self.config, RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"cannot resume {self.config.resume!r} with a different run "
                f"config: {', '.join(changed)}"
            )
        if checkpoint.round >= self.config.num_server_rounds:
            raise ConfigError(
                f"run {self.config.resume!r} already completed "
                f"{checkpoint.round} of num-server-rounds = "
                f"{self.config.num_server_rounds}: nothing to resume"
            )

    def _adopt(self, checkpoint: Checkpoint) -> None:
        """Continue after the checkpoint's round: its model, ledger, RNG states and records."""
        self.start_round = checkpoint.round
        self.resume_state = checkpoint.state
        self.aggregator_state = checkpoint.aggregator
        self.ledger.up, self.ledger.down = checkpoint.ledger["up"], checkpoint.ledger["down"]
        restore_rng_states(checkpoint.rng)
        self.history = self.recorder.keep_rounds(checkpoint.round)
        log(INFO, "fp8fl: resuming %s after round %d", self.recorder.run_id, checkpoint.round)

    def start_round_clock(self) -> None:
        self.round_started = time.perf_counter()
        self.ledger.start_round()

    def record(
        self,
        server_round: int,
        evaluation: tuple[float, float] | None,
        digest: str,
        facts: dict[str, Any] | None,
        eval_seconds: float,
    ) -> dict[str, Any]:
        """Write the line of ``server_round`` (``facts``: its ``RoundRecord``, None for round 0)."""
        now = time.perf_counter()
        loss, accuracy = evaluation if evaluation is not None else (None, None)
        bytes_entry = self.ledger.close_round() if server_round > 0 else EMPTY_BYTES
        record: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **bytes_entry,
            "model_sha256": digest,
        }
        if facts is not None:
            record.update(facts)
            record["wall_s"] = now - self.round_started
        else:
            record.update(
                clients_ok=0,
                clients_failed=0,
                server_opt_before=None,
                server_opt_after=None,
                wall_s=now - self.run_started,
            )
        record["elapsed_s"] = now - self.run_started
        record["eval_s"] = eval_seconds
        self.recorder.round(record)
        self.history.append(record)
        self.trackers.log_round(record)
        return record

    def checkpoint(
        self,
        server_round: int,
        state: dict[str, torch.Tensor],
        aggregator_state: dict[str, torch.Tensor],
    ) -> None:
        """Atomically save what ``resume`` needs to continue after ``server_round``."""
        save_checkpoint(
            self.recorder.run_dir,
            Checkpoint(
                server_round,
                state,
                {"up": self.ledger.up, "down": self.ledger.down},
                self.config.to_mapping(),
                rng_states(),
                aggregator_state,
            ),
        )

    def finish(self) -> None:
        """Write ``summary.json``: final and best accuracy, bytes (per format group in a
        mixed-precision run), wall time. The wall time is the sum of the rounds' own (round 0's
        start-up and first evaluation included), so that a run resumed in later sessions counts
        every stretch, not only the last (each resumption's own start-up is left out)."""
        evaluated = [r for r in self.history if r["accuracy"] is not None and r["round"] > 0]
        best = max(evaluated, key=lambda r: r["accuracy"], default=None)
        summary = {
            "run_id": self.recorder.run_id,
            "method": self.config.method,
            "rounds": self.config.num_server_rounds,
            "final_accuracy": evaluated[-1]["accuracy"] if evaluated else None,
            "final_loss": evaluated[-1]["loss"] if evaluated else None,
            "best_accuracy": best["accuracy"] if best else None,
            "best_round": best["round"] if best else None,
            "bytes_up": self.ledger.up,
            "bytes_down": self.ledger.down,
            "total_bytes": self.ledger.up + self.ledger.down,
            "wall_s": sum(r.get("wall_s", 0.0) for r in self.history),
            "results_dir": portable_path(self.recorder.run_dir),
        }
        by_format = format_totals(self.history)
        if by_format:
            summary["bytes_by_format"] = by_format
        self.recorder.summary(summary)
        self.trackers.finish(summary, self.history)
        self.progress.finish(summary)
