"""The results folder never stores credentials: Flower starts ``flwr-simulation`` with the run's
token on its command line, and ``config.json`` records that command line."""

import json
import sys
from pathlib import Path

import pytest

from fp8fl.federated.config import RunConfig
from fp8fl.federated.results import RunRecorder, public_argv


def test_public_argv_redacts_token_in_both_spellings() -> None:
    argv = [
        "flwr-simulation",
        "--runtime-api-address",
        "127.0.0.1:39091",
        "--token",
        "abc123",
        "--insecure",
        "--token=def456",
    ]
    assert public_argv(argv) == [
        "flwr-simulation",
        "--runtime-api-address",
        "127.0.0.1:39091",
        "--token",
        "<redacted>",
        "--insecure",
        "--token=<redacted>",
    ]
    assert public_argv(["prog", "--tokens", "x"]) == ["prog", "--tokens", "x"]


def test_config_json_and_resume_record_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["flwr-simulation", "--token", "s3cr3t", "--insecure"])
    config = RunConfig(results_dir=str(tmp_path), run_name="r")
    recorder = RunRecorder(config)
    RunRecorder.reopen(config, recorder.run_id)
    text = (recorder.run_dir / "config.json").read_text()
    assert "s3cr3t" not in text
    document = json.loads(text)
    assert document["command"] == ["flwr-simulation", "--token", "<redacted>", "--insecure"]
    assert document["resumed"][0]["command"] == document["command"]
