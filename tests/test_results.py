"""The results folder never stores credentials: Flower starts ``flwr-simulation`` with the run's
token on its command line, and ``config.json`` records that command line."""

import json
import sys
from pathlib import Path

import pytest

from fp8fl.run.config import RunConfig
from fp8fl.run.results import (
    RunRecorder,
    cpu_model,
    portable_path,
    public_argv,
    resolve_results_dir,
)


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


def test_the_start_and_every_resumption_name_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float results may differ in their last bits between CPUs: a run that spans sessions on
    different machines says which stretch ran where."""
    cpus = iter(["CPU A", "CPU B"])
    monkeypatch.setattr("fp8fl.run.results.cpu_model", lambda: next(cpus))
    config = RunConfig(results_dir=str(tmp_path), run_name="r")
    recorder = RunRecorder(config)
    RunRecorder.reopen(config, recorder.run_id)
    document = json.loads((recorder.run_dir / "config.json").read_text())
    assert (document["cpu"], document["resumed"][0]["cpu"]) == ("CPU A", "CPU B")


def test_cpu_model_names_the_model_its_numbers_and_its_widest_vector_extension() -> None:
    intel = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f amx_tile\n\n"
        "processor\t: 1\nmodel name\t: another\n"
    )
    assert cpu_model(intel) == "Intel(R) Xeon(R) Platinum 8480+ (family 6 model 143, amx_tile)"
    amd = "cpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512f\n"
    assert cpu_model(amd) == "AMD EPYC (family 26 model 2, avx512f)"
    assert cpu_model("model name\t: old\nflags\t\t: sse2\n") == "old (family ? model ?, no avx2)"
    assert cpu_model("") and cpu_model() == cpu_model()


def test_paths_below_the_results_base_are_stored_relative(tmp_path, monkeypatch) -> None:
    """A results folder records no absolute path of this machine where it can avoid one."""
    monkeypatch.setenv("FP8FL_RESULTS_ROOT", str(tmp_path))
    assert portable_path(tmp_path / "sweeps" / "a") == "sweeps/a"
    assert (
        resolve_results_dir(portable_path(tmp_path / "sweeps" / "a")) == tmp_path / "sweeps" / "a"
    )
    assert portable_path("/elsewhere/x") == "/elsewhere/x"  # outside: kept as given
    assert public_argv([str(tmp_path / ".venv/bin/flwr-simulation"), "--insecure"]) == [
        ".venv/bin/flwr-simulation",
        "--insecure",
    ]
    # a program of this Python environment outside the results base: its name, not its path
    program = str(Path(sys.executable).parent / "flwr-simulation")
    assert public_argv([program, "--insecure"]) == ["flwr-simulation", "--insecure"]
