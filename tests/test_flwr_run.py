"""The README's main command path: ``flwr run .`` (through ``fp8fl-flwr``) on a local SuperLink."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_writes_a_results_folder_and_leaves_no_superlink(tmp_path):
    home = tmp_path / "flwr-home"
    results = tmp_path / "results"
    overrides = (f"num-clients=2 clients-per-round=2 num-server-rounds=1 local-steps=2 "
                 f"batch-size=20 eval-samples=200 calibration-samples=32 "
                 f"results-dir='{results}' run-name='smoke'")
    pyproject_before = (ROOT / "pyproject.toml").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "experiments.flwr_cli", "run", ".", "--stream",
         "--run-config", overrides,
         "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
        cwd=ROOT, env={**os.environ, "FLWR_HOME": str(home)}, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = [json.loads(line) for line in (results / "smoke" / "rounds.jsonl").read_text()
              .splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["clients_ok"] == 2
    summary = json.loads((results / "smoke" / "summary.json").read_text())
    assert summary["total_bytes"] == rounds[1]["cum_bytes"]
    # flwr run must not rewrite a tracked file, and our wrapper stops the SuperLink it started
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject_before
    assert tomllib.loads((home / "config.toml").read_text())["superlink"]["default"] == "local"
    alive = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True,
                           text=True, check=False)
    assert alive.stdout.strip() == ""
