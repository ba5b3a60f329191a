"""``QuantizedFedAvg``: any synchronous method of the registry as a Flower (legacy) Strategy.

The global model stays FP32 on the server (weights, α, β, dense tensors); it is what Flower holds
as the run's parameters and what is evaluated. Each round (for FP8FedAvg: Wang et al. 2024,
arXiv:2407.02610, Alg. 3):

1. sample clients by partition id with the run's seed (``ClientDirectory``);
2. downlink: encode the global state with the method's codec, once per round for every sampled
   client (once per format group in a mixed-precision run: ``SyncRound.broadcast``);
3. check and decode every update — a bad one is rejected with a logged reason and never touches
   the global model — then aggregate with the method's aggregator (``SyncRound.aggregate``);
4. evaluate centrally every ``eval-every`` rounds; the journal writes the round's record, counts
   every byte and checkpoints the server's state, so that ``resume=<run-id>`` continues after a
   crash (``ServerRun.close_round``, ``RunJournal``).

Steps 3 and 4 go through ``strategies.round_core``, which the buffered loops share.

Flower numbers the rounds of each process from 1; a resumed run maps Flower's round k to round
``start_round + k`` of the run, and asks Flower for the remaining rounds only.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fp8fl.data.tasks import load_task_data
from fp8fl.federated.seeds import derive_seed
from fp8fl.run.config import RunConfig
from fp8fl.run.results import RunRecorder
from strategies.progress import RunProgress
from strategies.round_core import SERVER_STATE, RoundRecord, ServerRun, model_digest
from strategies.rounds import Broadcast, SyncRound, format_groups
from strategies.server_model import build_server_model

__all__ = ["QuantizedFedAvg"]


class QuantizedFedAvg(Strategy):
    def __init__(
        self,
        config: RunConfig,
        recorder: RunRecorder | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        server = ServerRun(config, build_server_model(config), recorder, progress)
        server.built.aggregator.load_state_dict(server.journal.aggregator_state)
        self.server = server
        groups = format_groups(config, server.built, server.layout, server.test.num_classes)
        self.round = SyncRound(
            config, server.built, server.layout, server.clients, server.journal.ledger, groups
        )
        self.record: RoundRecord | None = None  # this round's facts, written once it is evaluated
        self.sent: Broadcast | None = None  # this round's broadcast
        self.round_start_state: dict[str, torch.Tensor] = {}  # the global state it started from

    @property
    def rounds_to_run(self) -> int:
        """The rounds Flower must run in this process (all of them, unless resumed)."""
        return self.config.num_server_rounds - self.server.journal.start_round

    # ------------------------------------------------------------------ set-up
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Wait for every client, learn its partition, and build the calibrated global model."""
        server = self.server
        server.clients.discover(client_manager)
        if server.journal.resume_state is not None:
            return self._parameters(server.journal.resume_state)
        if server.built.quantizer.calibrates:
            config = self.config
            train = load_task_data(config.task, config.model, "train", config.data_root)
            rows = np.random.default_rng(derive_seed(config.seed, "calibration")).choice(
                len(train), size=min(config.calibration_samples, len(train)), replace=False
            )
            x, _ = train.batch(torch.as_tensor(np.sort(rows)), False, None, server.device)
            server.built.quantizer.calibrate(server.model, x)
        return self._parameters(server.model.state_dict())

    # ------------------------------------------------------------------ fit
    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        server_round += self.server.journal.start_round
        sampled = self.server.clients.sample(
            client_manager, self.config.clients_per_round_count, self.config.seed, server_round
        )
        self.record = self.server.open_round(server_round, sorted(sampled))
        self.round_start_state = self._state(parameters)
        self.sent = self.round.broadcast(self.round_start_state, server_round, sorted(sampled))
        return [(proxy, self.sent.ins(pid)) for pid, proxy in sampled.items()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        assert self.record is not None and self.sent is not None
        state = self.round.aggregate(
            self.record, self.sent, results, failures, self.round_start_state
        )
        if state is None:
            return None, {}
        return self._parameters(state), {"clients_ok": self.record.clients_ok}

    # ------------------------------------------------------------------ evaluation & records
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Central evaluation on the test split; the journal writes the round and checkpoint."""
        if server_round == 0 and self.server.journal.start_round > 0:
            return None  # the resumed round is evaluated and recorded already
        server_round += self.server.journal.start_round
        evaluation = self.server.close_round(
            server_round,
            self._state(parameters),
            model_digest(parameters),
            self.record if server_round > 0 else None,
        )
        return None if evaluation is None else (evaluation[0], {"accuracy": evaluation[1]})

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
        return ndarrays_to_parameters(self.server.layout.pack(state, SERVER_STATE))

    def _state(self, parameters: Parameters) -> dict[str, torch.Tensor]:
        return self.server.layout.unpack(parameters_to_ndarrays(parameters), SERVER_STATE)
