"""``FP8FedAvg``: FP8FedAvg-UQ / UQ+ and their ablations as a Flower (legacy) Strategy.

The global model stays FP32 on the server (weights, α, β, dense tensors); it is what Flower holds
as the run's parameters and what is evaluated. Each round (Wang et al. 2024, arXiv:2407.02610, Alg. 3):

1. sample clients by partition id with the run's seed, so that a seed fixes the whole run;
2. downlink: encode the global weights with the configured wire rounding (one encoding per round,
   broadcast to every sampled client), plus α, β and the dense tensors;
3. decode and check every update (protocol fields, n_k, the arrays) — a bad one is rejected with a
   logged reason and never touches the global model;
4. n_k-weighted average of the decoded weights, α and β, or ServerOptimize (``server-opt = mse``),
   never worse than the average; record the objective before and after;
5. evaluate centrally every ``eval-every`` rounds, write the round's record, count every byte,
   and checkpoint the server's state, so that ``resume=<run-id>`` continues after a crash.

Flower numbers the rounds of each process from 1; a resumed run maps Flower's round k to round
``start_round + k`` of the run, and asks Flower for the remaining rounds only.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fp8fl.data.tasks import load_task_data
from fp8fl.federated.aggregation import average_objective, server_optimize, weighted_average
from fp8fl.federated.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from fp8fl.federated.config import ConfigError, RunConfig
from fp8fl.federated.protocol import ProtocolError, check_update_metrics, fit_instructions
from fp8fl.federated.results import RunRecorder, resolve_results_dir
from fp8fl.federated.runtime import build_run_model, derive_seed, seeded_generator
from fp8fl.federated.training import evaluate, resolve_device
from fp8fl.federated.wire import StateLayout, WireError
from fp8fl.models.qat import calibrate
from strategies.ledger import Ledger
from strategies.progress import RunProgress

__all__ = ["ClientsUnavailableError", "FP8FedAvg"]

CLIENT_WAIT_S = 600
RESUMABLE_CHANGES = {"resume", "num-server-rounds", "run-name"}
"""Run-config keys a resumed run may change (more rounds; how it is named and resumed)."""


class ClientsUnavailableError(RuntimeError):
    """Fewer clients connected than the run needs, or their partitions do not add up."""


class FP8FedAvg(Strategy):
    def __init__(
        self,
        config: RunConfig,
        recorder: RunRecorder | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.device = resolve_device(config.device)
        self.test = load_task_data(config.task, config.model, "test", config.data_root)
        torch.manual_seed(derive_seed(config.seed, "init"))
        self.model = build_run_model(config, self.test.num_classes).to(self.device)
        self.layout = StateLayout.from_model(self.model)
        self.ledger = Ledger()
        self.history: list[dict[str, Any]] = []
        self.start_round = 0
        self.resume_state: dict[str, torch.Tensor] | None = None
        if config.resume:
            checkpoint = load_checkpoint(resolve_results_dir(config.results_dir) / config.resume)
            self._check_resumable(checkpoint)
            self.recorder = recorder or RunRecorder.reopen(config, config.resume)
            self._adopt(checkpoint)
        else:
            self.recorder = recorder or RunRecorder(config)
        self.progress = progress or RunProgress(self.recorder.run_id, config.num_server_rounds)
        self.partition_of: dict[str, int] = {}  # client (node) id -> partition id
        self.partition_size: dict[int, int] = {}
        self.eval_rows = self._eval_rows()
        self.pending: dict[str, Any] = {}  # this round's facts, written once it is evaluated
        self.downlink_codes: np.ndarray | None = None  # this round's broadcast codes
        self.round_started = self.run_started = time.perf_counter()

    @property
    def rounds_to_run(self) -> int:
        """The rounds Flower must run in this process (all of them, unless resumed)."""
        return self.config.num_server_rounds - self.start_round

    def _check_resumable(self, checkpoint: Checkpoint) -> None:
        """The checkpoint must come from this same run config, and leave rounds to run."""
        mine = self.config.to_mapping()
        changed = [
            f"{k} was {v!r}, now {mine.get(k)!r}"
            for k, v in checkpoint.config.items()
            if k not in RESUMABLE_CHANGES and mine.get(k) != v
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {self.config.resume!r} with a different run "
                f"config: {', '.join(sorted(changed))}"
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
        self.ledger.up, self.ledger.down = checkpoint.ledger["up"], checkpoint.ledger["down"]
        restore_rng_states(checkpoint.rng)
        self.history = self.recorder.keep_rounds(checkpoint.round)
        log(INFO, "fp8fl: resuming %s after round %d", self.recorder.run_id, checkpoint.round)

    # ------------------------------------------------------------------ set-up
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Wait for every client, learn its partition, and build the calibrated global model."""
        self._discover_clients(client_manager)
        if self.resume_state is not None:
            return self._parameters(self.resume_state)
        if self.config.qat != "none":
            train = load_task_data(
                self.config.task, self.config.model, "train", self.config.data_root
            )
            rows = np.random.default_rng(derive_seed(self.config.seed, "calibration")).choice(
                len(train), size=min(self.config.calibration_samples, len(train)), replace=False
            )
            x, _ = train.batch(torch.as_tensor(np.sort(rows)), False, None, self.device)
            calibrate(self.model, x)
        return self._parameters(self.model.state_dict())

    def _discover_clients(self, client_manager: ClientManager) -> None:
        wanted = self.config.num_clients
        if not client_manager.wait_for(wanted, timeout=CLIENT_WAIT_S):
            raise ClientsUnavailableError(
                f"only {client_manager.num_available()} of num-clients = {wanted} clients "
                f"connected within {CLIENT_WAIT_S} s"
            )
        proxies = list(client_manager.all().values())
        with ThreadPoolExecutor(max_workers=min(32, len(proxies))) as pool:
            replies = list(
                pool.map(
                    lambda p: p.get_properties(GetPropertiesIns({}), timeout=None, group_id=0),
                    proxies,
                )
            )
        for proxy, reply in zip(proxies, replies):
            pid = int(reply.properties["partition-id"])
            if pid in self.partition_size:
                raise ClientsUnavailableError(
                    f"two clients claim partition {pid}: check each "
                    "SuperNode's --node-config partition-id"
                )
            self.partition_of[proxy.cid] = pid
            self.partition_size[pid] = int(reply.properties["num-examples"])
        missing = sorted(set(range(wanted)) - set(self.partition_size))
        if missing:
            raise ClientsUnavailableError(f"no client holds partition(s) {missing[:10]}")
        log(
            INFO,
            "fp8fl: %d clients, partitions 0..%d, %d training examples in all",
            len(proxies),
            wanted - 1,
            sum(self.partition_size.values()),
        )

    # ------------------------------------------------------------------ fit
    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        server_round += self.start_round
        self.round_started = time.perf_counter()
        self.ledger.start_round()
        available = {
            self.partition_of[cid]: proxy
            for cid, proxy in client_manager.all().items()
            if cid in self.partition_of
        }
        count = min(self.config.clients_per_round_count, len(available))
        rng = np.random.default_rng(derive_seed(self.config.seed, "sample", server_round))
        sampled = sorted(rng.choice(sorted(available), size=count, replace=False).tolist())
        state = self._state(parameters)
        downlink = self.layout.pack(
            state,
            self.config.wire,
            self.config.fmt,
            seeded_generator(self.config.seed, "downlink", server_round),
        )
        self.downlink_codes = (
            self.layout.codes(downlink[0], self.config.fmt) if self.config.quantized_wire else None
        )
        ins = FitIns(ndarrays_to_parameters(downlink), fit_instructions(self.config, server_round))
        self.ledger.sent(ins, copies=len(sampled))
        self.pending = {"round": server_round, "sampled": sampled}
        return [(available[pid], ins) for pid in sampled]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        server_round += self.start_round
        accepted: list[tuple[int, int, dict[str, torch.Tensor], dict[str, Scalar]]] = []
        rejected: list[dict[str, Any]] = []
        valid: dict[int, FitRes] = {}
        for proxy, res in results:
            pid = self.partition_of.get(proxy.cid)
            self.ledger.received(res, sender=str(pid))
            try:
                accepted.append(self._check_update(pid, res))
                valid[accepted[-1][0]] = res
            except (WireError, ProtocolError, ValueError) as err:
                rejected.append({"partition": pid, "reason": str(err)})
                log(WARNING, "fp8fl: rejected the update of partition %s: %s", pid, err)
        failed = [self._failure(f) for f in failures]
        for f in failed:
            log(WARNING, "fp8fl: client of partition %s failed: %s", f["partition"], f["reason"])
        replied = {self.partition_of.get(proxy.cid) for proxy, _ in results}
        self.pending.update(
            clients_ok=len(accepted),
            clients_failed=len(failed),
            clients_rejected=len(rejected),
            failures=failed,
            rejected=rejected,
            failed_partitions=sorted(set(self.pending["sampled"]) - replied),
            server_opt_before=None,
            server_opt_after=None,
            aggregated=False,
        )
        self.pending["fit_seconds"] = {
            str(pid): float(m.get("fit-seconds", np.nan)) for pid, _, _, m in accepted
        }
        self.pending["train_seconds"] = {
            str(pid): float(m.get("train-seconds", np.nan)) for pid, _, _, m in accepted
        }
        if self.downlink_codes is not None and accepted:
            self.pending["unchanged_codes_per_client"] = {
                str(pid): self._unchanged_codes(res) for pid, res in sorted(valid.items())
            }
            self.pending["unchanged_codes"] = float(
                np.mean(list(self.pending["unchanged_codes_per_client"].values()))
            )
        if accepted:
            self.pending["train_loss"] = float(
                np.average(
                    [float(m.get("train-loss", np.nan)) for _, _, _, m in accepted],
                    weights=[n for _, n, _, _ in accepted],
                )
            )
        enough = len(accepted) >= self.config.min_fit_clients
        if not enough or (failed and not self.config.accept_failures):
            why = (
                "too few valid updates"
                if not enough
                else "a client failed (accept-failures = false)"
            )
            log(WARNING, "fp8fl: round %d keeps the global model: %s", server_round, why)
            self.pending["skipped"] = why
            return None, {}
        accepted.sort(key=lambda item: item[0])  # a fixed order makes the average reproducible
        states = [s for _, _, s, _ in accepted]
        weights = [n for _, n, _, _ in accepted]
        new_state = weighted_average(states, weights)
        if self.config.quantized_wire:
            stochastic = self.config.wire == "stochastic"
            if self.config.server_opt == "mse":
                result = server_optimize(
                    new_state,
                    states,
                    weights,
                    self.layout.quantized,
                    self.config.fmt,
                    stochastic,
                    self.config.server_opt_steps,
                    self.config.server_opt_lr_candidates,
                    self.config.server_opt_grid,
                    seeded_generator(self.config.seed, "serveropt", server_round),
                )
                new_state = result.state
                before, after = result.objective_before, result.objective_after
            else:
                before = after = average_objective(
                    new_state, states, weights, self.layout.quantized, self.config.fmt, stochastic
                )
            self.pending.update(server_opt_before=before, server_opt_after=after)
        self.pending["aggregated"] = True
        return self._parameters(new_state), {"clients_ok": len(accepted)}

    def _check_update(
        self, pid: int | None, res: FitRes
    ) -> tuple[int, int, dict[str, torch.Tensor], dict[str, Scalar]]:
        if pid is None:
            raise ProtocolError("update from a client that was never registered")
        claimed = check_update_metrics(res.metrics, self.config)
        if claimed != pid:
            raise ProtocolError(
                f"update claims partition {claimed} but comes from the client of partition {pid}"
            )
        n = res.num_examples
        if isinstance(n, bool) or not isinstance(n, int) or n != self.partition_size[pid]:
            raise ProtocolError(
                f"num_examples = {n!r}, but partition {pid} holds "
                f"{self.partition_size[pid]} examples"
            )
        state = self.layout.unpack(
            parameters_to_ndarrays(res.parameters), self.config.wire, self.config.fmt
        )
        return pid, n, state, res.metrics

    def _unchanged_codes(self, res: FitRes) -> float:
        """Fraction of weights whose uplink code equals the downlink code the client was sent
        (a change under half a grid step rounds back to the same code with nearest rounding)."""
        uplink = self.layout.codes(parameters_to_ndarrays(res.parameters)[0], self.config.fmt)
        return float(np.count_nonzero(uplink == self.downlink_codes)) / max(1, uplink.size)

    def _failure(self, failure: tuple[ClientProxy, FitRes] | BaseException) -> dict[str, Any]:
        if isinstance(failure, BaseException):
            return {"partition": None, "reason": f"{type(failure).__name__}: {failure}"}
        proxy, res = failure
        return {
            "partition": self.partition_of.get(proxy.cid),
            "reason": f"{res.status.code.name}: {res.status.message}",
        }

    # ------------------------------------------------------------------ evaluation & records
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Central evaluation on the test split; writes the round's record and checkpoint."""
        if server_round == 0 and self.start_round > 0:
            return None  # the resumed round is evaluated and recorded already
        server_round += self.start_round
        last = server_round == self.config.num_server_rounds
        loss = accuracy = None
        eval_started = time.perf_counter()
        if server_round == 0 or last or server_round % self.config.eval_every == 0:
            self.model.load_state_dict(self._state(parameters))
            loss, accuracy = evaluate(
                self.model, self.test, self.config.eval_batch_size, self.device, self.eval_rows
            )
        record = self._record(server_round, loss, accuracy, _digest(parameters))
        record["eval_s"] = time.perf_counter() - eval_started
        self.recorder.round(record)
        self.history.append(record)
        if server_round > 0:
            save_checkpoint(
                self.recorder.run_dir,
                Checkpoint(
                    server_round,
                    self._state(parameters),
                    {"up": self.ledger.up, "down": self.ledger.down},
                    self.config.to_mapping(),
                    rng_states(),
                ),
            )
        if server_round > 0:
            self.progress.round_done(record)
        if last:
            self._finish()
        return None if loss is None else (loss, {"accuracy": accuracy})

    def _record(
        self, server_round: int, loss: float | None, accuracy: float | None, digest: str
    ) -> dict[str, Any]:
        now = time.perf_counter()
        bytes_entry = (
            self.ledger.close_round()
            if server_round > 0
            else {
                "bytes_up": 0,
                "bytes_down": 0,
                "array_bytes_up": 0,
                "array_bytes_down": 0,
                "cum_bytes_up": 0,
                "cum_bytes_down": 0,
                "cum_bytes": 0,
            }
        )
        record: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **bytes_entry,
            "model_sha256": digest,
        }
        if server_round > 0:
            record.update(self.pending)
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
        return record

    def _finish(self) -> None:
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
            "wall_s": time.perf_counter() - self.run_started,
            "results_dir": str(self.recorder.run_dir),
        }
        self.recorder.summary(summary)
        self.progress.finish(summary)

    # ------------------------------------------------------------------ federated evaluation: off
    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    # ------------------------------------------------------------------ helpers
    def _parameters(self, state: dict[str, torch.Tensor]) -> Parameters:
        return ndarrays_to_parameters(self.layout.pack(state, "fp32", self.config.fmt))

    def _state(self, parameters: Parameters) -> dict[str, torch.Tensor]:
        return self.layout.unpack(parameters_to_ndarrays(parameters), "fp32", self.config.fmt)

    def _eval_rows(self) -> np.ndarray | None:
        if self.config.eval_samples <= 0 or self.config.eval_samples >= len(self.test):
            return None
        rng = np.random.default_rng(derive_seed(self.config.seed, "eval-rows"))
        return np.sort(rng.choice(len(self.test), self.config.eval_samples, replace=False))


def _digest(parameters: Parameters) -> str:
    """SHA-256 of the global model's serialized arrays: equal digests, bit-identical models."""
    h = hashlib.sha256()
    for tensor in parameters.tensors:
        h.update(tensor)
    return h.hexdigest()
