"""The round core both server loops share (typed faults and clip reports, the record's tally, the
check of an update, closing a round) and the one fit path of both clients, without Flower's
runtime: synthetic data, components called directly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

import clients.quantized_client as quantized_client
from clients.buffered_client import BufferedClient
from clients.quantized_client import QuantizedClient
from fp8fl.data.tasks import TaskData
from fp8fl.federated.seams import ClientUpdate
from fp8fl.methods.qafel import JOB_KEY, START_CODEC
from fp8fl.methods.robust import ClipReport, bound_updates
from fp8fl.run.checkpoint import load_checkpoint
from fp8fl.run.components import build
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import ProtocolError, fit_instructions, update_metrics
from fp8fl.run.results import read_rounds
from fp8fl.run.training import build_run_model, run_layout
from strategies.ledger import Ledger, fitres_bytes
from strategies.round_core import (
    ClientFault,
    RoundRecord,
    ServerRun,
    StepFacts,
    decode_update,
    receive,
)
from strategies.server_model import ServerModel


def random_task(n: int, seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 32, 32, generator=g)
    return TaskData(inputs, torch.randint(0, 10, (n,), generator=g), 10, lambda x, t, g: x)


def update(pid: int, n: int = 10, **metrics: float | str) -> ClientUpdate:
    return ClientUpdate(pid, n, {}, metrics)


# ---------------------------------------------------------------------------- the round record
def test_faults_clip_reports_and_step_facts_are_written_as_plain_json_in_field_order():
    record = RoundRecord(4, [0, 1, 2, 3])
    record.fail(ClientFault(3, "RuntimeError: down"))
    record.reject(ClientFault(None, "update from a client that was never registered"))
    record.clip({"1": ClipReport(2, 20, None, "fc1.weight_alpha")})
    record.step = StepFacts([0, 1], 2, 6, 1234, 4, [7, 8], None, "real")
    entry = record.to_json()
    assert entry["failures"] == [{"partition": 3, "reason": "RuntimeError: down"}]
    assert entry["rejected"] == [
        {"partition": None, "reason": "update from a client that was never registered"}
    ]
    assert entry["clipped"] == {
        "1": {"clipped": 2, "of": 20, "max_ratio": None, "worst": "fc1.weight_alpha"}
    }
    assert list(entry) == [
        "round", "sampled", "clients_ok", "clients_failed", "clients_rejected", "failures",
        "rejected", "failed_partitions", "server_opt_before", "server_opt_after", "aggregated",
        "fit_seconds", "train_seconds", "clipped",
        # the step's facts last; the real loop writes no start_versions
        "staleness", "uploads", "cum_uploads", "broadcast_bytes", "broadcast_receivers", "jobs",
        "async_mode",
    ]  # fmt: skip
    assert json.loads(json.dumps(entry)) == entry


def test_an_empty_clip_report_is_written_and_none_is_left_out():
    record = RoundRecord(1, [0])
    record.clip(None)
    assert "clipped" not in record.to_json()
    record.clip({})
    assert record.to_json()["clipped"] == {}
    simulated = StepFacts([], 0, 0, 0, 4, [1], [0], "simulated")
    assert simulated.to_json()["start_versions"] == [0]


def test_the_robust_rules_report_round_trips_through_clip_reports():
    g = torch.Generator().manual_seed(0)
    global_state = {"w": torch.zeros(8), "b": torch.zeros(3)}
    updates = [
        ClientUpdate(pid, 10, {k: torch.randn(v.shape, generator=g) * (1 + 9 * (pid == 2))
                               for k, v in global_state.items()})
        for pid in range(4)
    ]  # fmt: skip
    _, report = bound_updates(global_state, updates, 1.0)
    assert report, "partition 2's change is 10x the others': it must be clipped"
    record = RoundRecord(1, [0, 1, 2, 3])
    record.clip(report)
    assert record.clipped is not None and isinstance(record.clipped["2"], ClipReport)
    assert record.to_json()["clipped"] == {p: dataclasses.asdict(r) for p, r in report.items()}


def test_a_non_ok_status_is_a_failure_naming_its_code():
    fault = ClientFault.from_status(2, Status(Code.FIT_NOT_IMPLEMENTED, "no fit"))
    assert fault == ClientFault(2, "FIT_NOT_IMPLEMENTED: no fit")


def test_tally_counts_and_averages_the_loss_as_the_loop_weighs_updates():
    accepted = [
        update(0, 10, **{"train-loss": 1.0, "fit-seconds": 2.0, "ray-node": "a"}),
        update(2, 30, **{"train-loss": 3.0}),
    ]
    record = RoundRecord(1, [0, 1, 2, 3, 4])
    record.reject(ClientFault(1, "bad"))
    record.fail(ClientFault(3, "down"))
    record.tally(accepted, weighted=True)
    assert (record.clients_ok, record.clients_failed, record.clients_rejected) == (2, 1, 1)
    assert record.failed_partitions == [3, 4]  # a rejected update did arrive
    assert record.train_loss == 2.5  # (10 x 1 + 30 x 3) / 40
    assert record.fit_seconds["0"] == 2.0 and np.isnan(record.fit_seconds["2"])
    assert record.nodes == {"0": "a"}
    record.tally(accepted, weighted=False)
    assert record.train_loss == 2.0


# ---------------------------------------------------------------------------- the check
def fit_res(config: RunConfig, pid: int, arrays: list[np.ndarray], n: int = 20) -> FitRes:
    metrics = update_metrics(config, pid, {"train-loss": 1.0}, 0.1)
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)


def test_receive_counts_every_update_and_rejects_a_bad_one_with_its_reason():
    config = RunConfig.from_mapping({"method": "fp32", "num-clients": 4})
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    codec = build(config, layout.quantized).codec
    good = fit_res(config, 1, layout.pack(model.state_dict(), codec))
    foreign = fit_res(config, 2, layout.pack(model.state_dict(), codec))
    ledger, record = Ledger(), RoundRecord(1, [1, 2])

    def check(res: FitRes, pid: int):
        return lambda: decode_update(res, pid, config, 20, layout, codec)

    accepted = receive(ledger, record, 1, good, check(good, 1))
    assert accepted is not None and accepted.num_examples == 20
    assert torch.equal(accepted.state["fc1.weight"], model.state_dict()["fc1.weight"])
    assert receive(ledger, record, 1, foreign, check(foreign, 1)) is None
    assert record.rejected == [
        ClientFault(1, "update claims partition 2 but comes from the client of partition 1")
    ]
    assert ledger.round_up == fitres_bytes(good) + fitres_bytes(foreign)  # both counted

    def crash() -> ClientUpdate:
        raise RuntimeError("a bug, not a bad update")

    with pytest.raises(RuntimeError):
        receive(ledger, record, 1, good, crash)


# ---------------------------------------------------------------------------- closing a round
def test_close_round_evaluates_when_due_writes_the_line_and_checkpoints(tmp_path):
    config = RunConfig.from_mapping(
        {"method": "fp32", "num-server-rounds": 3, "eval-every": 2, "results-dir": str(tmp_path)}
    )
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    test = random_task(20, 1)
    server = ServerRun(
        config, ServerModel(torch.device("cpu"), test, model, layout, build(config, ()))
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert server.close_round(0, state, "d0", None) is not None  # round 0: always evaluated
    record = server.open_round(1, [0])
    record.tally([update(0, **{"train-loss": 0.5})], weighted=True)
    assert server.close_round(1, state, "d1", record) is None  # not due
    loss, accuracy = server.close_round(3, state, "d3", server.open_round(3, [])) or (0, -1)
    assert 0 <= accuracy <= 1 and loss > 0  # the last round is always evaluated
    rounds = read_rounds(server.journal.recorder.run_dir)
    assert [(r["round"], r["model_sha256"], r["accuracy"] is None) for r in rounds] == [
        (0, "d0", False),
        (1, "d1", True),
        (3, "d3", False),
    ]
    assert rounds[1]["train_loss"] == 0.5 and rounds[1]["clients_ok"] == 1
    run_dir = server.journal.recorder.run_dir
    assert load_checkpoint(run_dir).round == 3
    assert json.loads((run_dir / "summary.json").read_text())["final_accuracy"] == accuracy


# ---------------------------------------------------------------------------- the one fit path
@pytest.fixture
def synthetic_data(monkeypatch):
    """Every client trains on rows 10 p .. 10 p + 9 of one small random task."""
    task = random_task(40, 3)
    monkeypatch.setattr(quantized_client, "load_task_data", lambda *args: task)
    monkeypatch.setattr(
        quantized_client, "client_partition", lambda config, pid: np.arange(10 * pid, 10 * pid + 10)
    )


FEDBUFF = {"method": "fedbuff", "num-clients": 4, "local-steps": 2, "batch-size": 5}


def start_message(config: RunConfig) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    torch.manual_seed(1)
    model = build_run_model(config, 10)
    start = model.state_dict()
    return start, run_layout(config, model).pack(start, START_CODEC)


def test_a_buffered_job_trains_as_a_synchronous_fit_and_sends_the_change(synthetic_data):
    """Both clients take one fit path: seeded alike, a buffered job sends exactly what a
    synchronous fit of the same method sends, the change Δ of its model (FedBuff's quantizer
    ``SendsChanges``; its codecs are FP32 both ways, so Δ is exact)."""
    config = RunConfig.from_mapping(FEDBUFF)
    start, arrays = start_message(config)

    class SeededAsRound(BufferedClient):  # the job's seed of a synchronous round's fit
        def _job(self, instructions, server_round):
            job = super()._job(instructions, server_round)
            return quantized_client.FitJob((server_round,), job.metrics)

    instructions = {**fit_instructions(config, 1), JOB_KEY: 5, "start-version": 0}
    delta, n, metrics = SeededAsRound(config, 2, 4).fit(arrays, instructions)
    sync, n_sync, metrics_sync = QuantizedClient(config, 2, 4).fit(arrays, instructions)
    layout = run_layout(config, build_run_model(config, 10))
    codec = build(config, layout.quantized).codec
    change, sync_change = layout.unpack(delta, codec), layout.unpack(sync, codec)
    assert n == n_sync == 10 and metrics[JOB_KEY] == 5 and JOB_KEY not in metrics_sync
    assert any(bool(change[k].abs().sum() > 0) for k in start)  # it trained: Δ ≠ 0
    for name in start:
        assert torch.equal(change[name], sync_change[name]), name


def test_a_buffered_fit_is_seeded_by_its_job_and_needs_one(synthetic_data):
    config = RunConfig.from_mapping({**FEDBUFF, "client-slowdown": "1:1.5"})
    _, arrays = start_message(config)
    client = BufferedClient(config, 0, 4)
    assert (client.slowdown, BufferedClient(config, 1, 4).slowdown) == (1.0, 1.5)

    def job(number: int) -> list[np.ndarray]:
        instructions = {**fit_instructions(config, 1), JOB_KEY: number, "start-version": 0}
        return client.fit(arrays, instructions)[0]

    first, again, other = job(0), job(0), job(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    with pytest.raises(ProtocolError, match="no valid job"):
        client.fit(arrays, fit_instructions(config, 1))
