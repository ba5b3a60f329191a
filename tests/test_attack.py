"""The attack of issue 17 on real data: CIFAR-10, LeNet, UQ, 10 clients all sampled every round,
20 local steps, two clients that train honestly and then send a well-formed hostile update. Without
a robust rule the model ends near chance; with norm bounding it ends within 2 points of the run
without attackers (the issue's criterion).

Runs in this process (``tests.inprocess``): five runs of 10 x 4 local trainings each."""

from pathlib import Path

import pytest

from clients.hostile_client import hostile_client
from fp8fl.run.config import RunConfig
from tests.inprocess import run_in_process

pytestmark = pytest.mark.integration  # trains on real data

ATTACKERS = (3, 7)
RUN = {
    "task": "cifar10",
    "model": "lenet",
    "method": "uq",
    "num-clients": 10,
    "clients-per-round": 10,
    "local-steps": 20,
    "batch-size": 20,
    "num-server-rounds": 4,
    "eval-samples": 2000,
}


def run(tmp: Path, attack: str | None, rule: str) -> list[dict]:
    config = RunConfig.from_mapping({**RUN, "results-dir": str(tmp), "robust-aggregation": rule})
    attacks = dict.fromkeys(ATTACKERS, attack) if attack else {}
    _, rounds = run_in_process(
        config, lambda pid: hostile_client(config, pid, config.num_clients, attacks.get(pid))
    )
    return rounds


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> float:
    return run(tmp_path_factory.mktemp("clean"), None, "none")[-1]["accuracy"]


@pytest.mark.parametrize("attack", ["scale-ranges", "negate-model"])
def test_norm_bounding_keeps_the_accuracy_of_the_run_without_attackers(clean, attack, tmp_path):
    attacked = run(tmp_path / "none", attack, "none")
    assert attacked[-1]["accuracy"] < clean - 0.10  # the attack works without the rule
    assert all(r["clients_rejected"] == 0 for r in attacked[1:])  # every update is well-formed
    robust = run(tmp_path / "bound", attack, "norm-bound")
    assert robust[-1]["accuracy"] >= clean - 0.02
    for record in robust[1:]:
        for pid in ATTACKERS:  # recorded as clipped, far beyond any honest client's change
            assert record["clipped"][str(pid)]["max_ratio"] > 100
