"""The README's main command path: ``flwr run .`` (through ``fp8fl-flwr``) on a local SuperLink."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ROOT = Path(__file__).resolve().parents[1]


TINY = (
    "num-clients=2 clients-per-round=2 num-server-rounds=1 local-steps=2 "
    "batch-size=20 eval-samples=200 calibration-samples=32 "
)


def fp8fl_flwr_run(app: Path, home: Path, overrides: str) -> subprocess.CompletedProcess:
    """``fp8fl-flwr run <app> --stream`` with two virtual clients."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli.flwr_cli",
            "run",
            str(app),
            "--stream",
            "--run-config",
            overrides,
            "--federation-config",
            "num-supernodes=2 client-resources-num-cpus=1",
        ],
        cwd=ROOT,
        env={**os.environ, "FLWR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_flwr_run_writes_a_results_folder_and_leaves_no_superlink(tmp_path):
    home = tmp_path / "flwr-home"
    results = tmp_path / "results"
    pyproject_before = (ROOT / "pyproject.toml").read_bytes()
    done = fp8fl_flwr_run(ROOT, home, TINY + f"results-dir='{results}' run-name='smoke'")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = [
        json.loads(line) for line in (results / "smoke" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["clients_ok"] == 2
    summary = json.loads((results / "smoke" / "summary.json").read_text())
    assert summary["total_bytes"] == rounds[1]["cum_bytes"]
    # flwr run must not rewrite a tracked file, and our wrapper stops the SuperLink it started
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject_before
    assert tomllib.loads((home / "config.toml").read_text())["superlink"]["default"] == "local"
    alive = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True, check=False
    )
    assert alive.stdout.strip() == ""


def test_a_missing_data_set_exits_nonzero_and_names_the_cause(tmp_path):
    """``flwr run --stream`` itself returns 0 here: the exit code comes from summary.json."""
    (tmp_path / "nodata").mkdir()
    overrides = TINY + f"task='cifar100' data-root='{tmp_path / 'nodata'}' "
    done = fp8fl_flwr_run(ROOT, tmp_path / "home", overrides + f"results-dir='{tmp_path}/r'")
    assert done.returncode != 0
    cause = (
        "fp8fl: run failed: ServerApp failed: DatasetNotFoundError: cifar100: data set not found"
    )
    assert cause in done.stderr, done.stderr[-3000:]


def test_a_clientapp_that_cannot_import_exits_nonzero_and_names_the_cause(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copyfile(ROOT / "pyproject.toml", app / "pyproject.toml")
    for package in ("clients", "strategies"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    client = app / "clients" / "app.py"
    source = client.read_text().replace(
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nimport fp8fl_no_such_module  # noqa: F401\n",
    )
    client.write_text(source)
    done = fp8fl_flwr_run(app, tmp_path / "home", TINY + f"results-dir='{tmp_path}/r'")
    assert done.returncode != 0
    cause = "fp8fl: run failed: ClientApp failed: ModuleNotFoundError: No module named"
    assert cause in done.stderr and "fp8fl_no_such_module" in done.stderr, done.stderr[-3000:]
