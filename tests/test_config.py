"""RunConfig: presets, overrides, every validation rule, and pyproject's defaults."""

import json
import tomllib
from pathlib import Path

import pytest

from fp8fl.methods.registry import METHODS
from fp8fl.run.config import ConfigError, RunConfig
from tests.presets import PAPER_PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_every_paper_preset_is_registered():
    assert set(PAPER_PRESETS) <= set(METHODS)


@pytest.mark.parametrize(("method", "switches"), sorted(PAPER_PRESETS.items()))
def test_method_presets(method, switches):
    config = RunConfig.from_mapping({"method": method})
    assert (config.settings.qat, config.settings.wire, config.settings.server_opt) == switches
    assert config.method == method


def test_explicit_switches_override_the_preset_and_rename_the_method():
    assert RunConfig.from_mapping({"method": "uq", "wire": "nearest"}).method == "bq"
    assert RunConfig.from_mapping({"method": "uq", "server-opt": "mse"}).method == "uq+"
    custom = RunConfig.from_mapping({"method": "uq", "qat": "stochastic"})
    assert (custom.method, custom.settings.qat, custom.settings.wire) == (
        "custom",
        "stochastic",
        "stochastic",
    )


def test_optimizer_auto_picks_adamw_for_kwt1():
    assert RunConfig.from_mapping({}).optimizer == "sgd"
    config = RunConfig.from_mapping({"task": "fsdd", "model": "kwt1", "lr": 1e-3})
    assert config.optimizer == "adamw"


def test_clients_per_round_fraction_or_count():
    assert (
        RunConfig.from_mapping(
            {"num-clients": 100, "clients-per-round": 0.1}
        ).clients_per_round_count
        == 10
    )
    assert (
        RunConfig.from_mapping(
            {"num-clients": 2112, "clients-per-round": 0.01}
        ).clients_per_round_count
        == 21
    )
    assert (
        RunConfig.from_mapping({"num-clients": 100, "clients-per-round": 7}).clients_per_round_count
        == 7
    )
    assert (
        RunConfig.from_mapping(
            {"num-clients": 100, "clients-per-round": 1.0}
        ).clients_per_round_count
        == 100
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "fp16"}, "method must be one of"),
        ({"qat": "round"}, "qat must be one of"),
        ({"wire": "int8"}, "wire must be one of"),
        ({"server-opt": "median"}, "server-opt must be one of"),
        ({"method": "fp32", "wire": "stochastic"}, "with qat = 'none' use wire = 'fp32'"),
        ({"method": "qat-fp32wire", "server-opt": "mse"}, "use server-opt = 'average'"),
        ({"model": "kwt1"}, "does not fit task 'cifar10'"),
        ({"split": "speaker"}, "not available for 'cifar10'"),
        ({"task": "imagenet"}, "task must be one of"),
        ({"format": "e4m4"}, "invalid float format 'e4m4'"),
        ({"lr": 0}, "lr must be > 0"),
        ({"weight-decay": -1e-3}, "weight-decay must be >= 0"),
        ({"clients-per-round": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"clients-per-round": 11}, "count must be in 1..num-clients"),
        ({"min-fit-clients": 5}, "min-fit-clients must be in 1..2"),
        ({"local-epochs": 0, "local-steps": 0}, "local-epochs or local-steps"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha must be > 0"),
        ({"num-server-rounds": 0}, "num-server-rounds must be >= 1"),
        ({"eval-every": 0}, "eval-every must be >= 1"),
        ({"server-opt-lrs": "0.1,x"}, "comma-separated numbers"),
        ({"server-opt-lrs": "0.1,-1"}, "positive numbers"),
        ({"device": "tpu"}, "device must be"),
        ({"nonsense": 1}, "unknown key 'nonsense'"),
        ({"lr": "0.1"}, "lr must be float"),
        ({"num-clients": 10.0}, "num-clients must be int"),
        ({"accept-failures": 1}, "accept-failures must be bool"),
    ],
)
def test_invalid_configs_are_rejected_with_a_clear_message(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"lr": -1.0, "model": "kwt1", "eval-every": 0})
    text = str(info.value)
    assert "lr must be > 0" in text and "does not fit" in text and "eval-every" in text


def test_pyproject_run_config_lists_every_key_with_the_dataclass_default():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_mapping()
    assert RunConfig.from_mapping(pyproject["tool"]["flwr"]["app"]["config"]).method == "uq"


def test_round_trip_through_the_flat_mapping():
    config = RunConfig.from_mapping({"method": "uq+", "num-clients": 100, "clients-per-round": 0.1})
    assert RunConfig.from_mapping(config.to_mapping()) == config


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"method": "cq4", "lpt-points": "conv-linear-io"},
        {"method": "lpt8", "cq-grid": "twos-complement"},
        {"method": "qafel", "buffer-size": 5},
    ],
    ids=["default", "cq-with-other-keys", "lpt", "qafel"],
)
def test_one_key_reads_as_the_whole_mapping_gives_it(given):
    # the family's own keys, other families' keys given (recorded) or not, and the core keys
    config = RunConfig.from_mapping(given)
    mapping = config.to_mapping()
    assert {key: config.value(key) for key in mapping} == mapping
    with pytest.raises(KeyError, match="no-such-key"):
        config.value("no-such-key")


def test_every_committed_run_config_still_loads_and_records_the_same_values():
    """Issue 31: run-config keys and record fields stay as they are. Every run committed under
    experiments/results (made before the typed families) loads into a RunConfig, and its
    mapping gives back every value its config.json recorded."""
    root = Path(__file__).resolve().parents[1] / "experiments" / "results"
    records = sorted(root.rglob("config.json"))
    assert len(records) >= 70
    for record in records:
        old = json.loads(record.read_text())["config"]
        new = RunConfig.from_mapping(old).to_mapping()
        assert {k: new.get(k) for k in old} == old, record
