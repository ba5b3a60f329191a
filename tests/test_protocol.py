"""The fields beside the arrays: every message says which fp8fl release, method and format made
it, and either end refuses a message from another (the reason names both versions)."""

import re

import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fp8fl.run.components import build
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import (
    ProtocolError,
    check_instructions,
    check_update_metrics,
    fit_instructions,
    fp8fl_version,
    update_metrics,
)
from fp8fl.run.training import build_run_model, run_layout
from strategies.clients import ClientDirectory
from strategies.ledger import Ledger
from strategies.round_core import ClientFault, RoundRecord
from strategies.rounds import Broadcast, Downlink, SyncRound, format_groups

UQ = RunConfig.from_mapping({"method": "uq"})


def metrics(config: RunConfig = UQ, **changes: object) -> dict:
    values = update_metrics(config, 3, {"train-loss": 1.0}, 0.5)
    values.update({k.replace("_", "-"): v for k, v in changes.items()})
    return values


def test_messages_carry_the_release_method_components_and_format():
    for values in (fit_instructions(UQ, 2), metrics()):
        assert values["fp8fl-version"] == fp8fl_version() != "not installed"
        assert values["method"] == "uq"
        assert values["components"] == "minifloat-qat/minifloat/minifloat"
        assert values["format"] == "e4m3"
    assert check_instructions(fit_instructions(UQ, 2), UQ) == 2
    assert check_update_metrics(metrics(), UQ) == 3


def test_the_server_refuses_an_update_of_another_release_naming_both_versions():
    with pytest.raises(ProtocolError) as err:
        check_update_metrics(metrics(fp8fl_version="0.0.9"), UQ)
    assert str(err.value) == (
        f"update metrics come from fp8fl 0.0.9, this server runs fp8fl {fp8fl_version()}"
    )
    values = metrics()
    del values["fp8fl-version"]
    with pytest.raises(ProtocolError, match=f"no fp8fl-version.*runs fp8fl {fp8fl_version()}"):
        check_update_metrics(values, UQ)


def test_the_release_is_checked_before_the_fields_another_release_may_change():
    with pytest.raises(ProtocolError, match=r"fp8fl 0\.0\.9"):
        check_update_metrics(metrics(fp8fl_version="0.0.9", wire_version=99, method="x"), UQ)


def test_the_client_refuses_instructions_of_another_server_release():
    values = fit_instructions(UQ, 1) | {"fp8fl-version": "9.9"}
    with pytest.raises(ProtocolError, match=re.escape("fp8fl 9.9, this client runs fp8fl ")):
        check_instructions(values, UQ)


@pytest.mark.parametrize(
    ("sender", "key"),
    [
        (RunConfig.from_mapping({"method": "bq"}), "method"),
        (RunConfig.from_mapping({"method": "cq8"}), "method"),
        (RunConfig.from_mapping({"method": "uq", "format": "e5m2"}), "format"),
    ],
)
def test_an_update_of_another_method_or_format_is_refused_naming_both(sender, key):
    with pytest.raises(ProtocolError) as err:
        check_update_metrics(metrics(sender), UQ)
    theirs, ours = metrics(sender)[key], metrics()[key]
    assert str(err.value) == f"update metrics say {key} = {theirs!r}, this run uses {ours!r}"


def test_other_components_under_the_same_method_name_are_refused():
    with pytest.raises(ProtocolError, match="components = 'fp32/fp32/fp32'"):
        check_update_metrics(metrics(components="fp32/fp32/fp32"), UQ)


def test_the_server_records_an_update_of_another_release_as_rejected():
    """Through ``SyncRound``: the update is rejected with its reason and never averaged."""
    model = build_run_model(UQ, 10)
    layout = run_layout(UQ, model)
    built = build(UQ, layout.quantized)
    built.quantizer.calibrate(
        model, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    )
    clients = ClientDirectory(UQ.num_clients)
    clients.partition_of, clients.partition_size = {"a": 0, "b": 1}, {0: 50, 1: 50}
    groups = format_groups(UQ, built, layout, 10)
    round_ = SyncRound(UQ, built, layout, clients, Ledger(), groups)
    arrays = layout.pack(model.state_dict(), built.codec)

    def res(pid: int, version: str) -> FitRes:
        values = update_metrics(UQ, pid, {"train-loss": 1.0}, 0.1) | {"fp8fl-version": version}
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 50, values)

    class Proxy:
        def __init__(self, cid: str) -> None:
            self.cid = cid

    record = RoundRecord(1, [0, 1])
    sent = Broadcast({"": Downlink(None, None)}, {0: "", 1: ""})  # type: ignore[arg-type]
    results = [(Proxy("a"), res(0, fp8fl_version())), (Proxy("b"), res(1, "0.0.9"))]
    state = round_.aggregate(record, sent, results, [], model.state_dict())  # type: ignore[arg-type]
    assert state is not None and record.clients_ok == 1
    assert record.rejected == [
        ClientFault(
            1, f"update metrics come from fp8fl 0.0.9, this server runs fp8fl {fp8fl_version()}"
        )
    ]
