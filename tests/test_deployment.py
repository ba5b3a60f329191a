"""The README's deployment path (``fp8fl-deploy``): a SuperLink and SuperNodes on loopback talking
gRPC (Flower's Fleet API) over TLS, two rounds of the real app through ``flwr run``, then nothing
left running and every port free again. All of it under the test's ``tmp_path``: ``flwr-home/``
(FLWR_HOME), ``deployment/`` (state, certificates, process logs), ``<command>.out``."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIG = (
    "num-clients=2 clients-per-round=2 num-server-rounds=2 local-steps=2 batch-size=20 "
    "eval-samples=200 calibration-samples=32 results-dir='{}' run-name='deploy-test'"
)


def deploy(tmp_path: Path, *args: str, timeout: float) -> int | None:
    """``fp8fl-deploy <args>``, output to ``<command>.out``; None (and its process group killed,
    ``flwr`` included) if it runs past ``timeout``."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    with (tmp_path / f"{args[0]}.out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.cli.deploy", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def report(tmp_path: Path, command: str) -> str:
    """The tail of the command's output and of every process log, for a failure message."""

    def tail(path: Path, lines: int = 25) -> str:
        return f"--- {path.name}\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:]
        )

    logs = sorted((tmp_path / "deployment" / "logs").glob("*.log"))
    return "\n".join(tail(path) for path in [tmp_path / f"{command}.out", *logs])


def tls_version(port: int, ca: Path) -> str:
    """Handshake with the Fleet API, verifying its certificate against our CA for 127.0.0.1."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def leftovers(tmp_path: Path, ports: list[int]) -> str:
    """Processes whose command line names ``tmp_path`` or one of the deployment's addresses."""
    addresses = [rf"127\.0\.0\.1:{port}([^0-9]|$)" for port in ports]
    found = subprocess.run(
        ["pgrep", "-af", "|".join([re.escape(str(tmp_path)), *addresses])],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def connection(tmp_path: Path) -> dict:
    """The ``deployment`` connection that ``up`` wrote into ``$FLWR_HOME/config.toml``."""
    toml = tomllib.loads((tmp_path / "flwr-home" / "config.toml").read_text())
    return toml["superlink"]["deployment"]


@contextmanager
def deployment(tmp_path: Path, *up_args: str) -> Iterator[dict]:
    """``fp8fl-deploy up``; yields its state. Afterwards ``down`` and, unless the body failed,
    checks that no process of the deployment is left and that none of its ports is listening."""
    workdir = tmp_path / "deployment"
    ports: list[int] = []
    try:
        assert deploy(tmp_path, "up", *up_args, "--workdir", str(workdir), timeout=180) == 0, (
            report(tmp_path, "up")
        )
        state = json.loads((workdir / "deployment.json").read_text())
        ports = list(state["ports"].values())
        yield state
    finally:
        stopped = deploy(tmp_path, "down", "--workdir", str(workdir), timeout=120)
    assert stopped == 0, report(tmp_path, "down")
    assert not (workdir / "deployment.json").exists()
    assert leftovers(tmp_path, ports) == ""
    assert not [port for port in ports if listening(port)]


def test_tls_deployment_runs_two_rounds_and_stops_every_process(tmp_path):
    certs, results = tmp_path / "deployment" / "certs", tmp_path / "results"
    pyproject_before = (ROOT / "pyproject.toml").read_bytes()
    with deployment(tmp_path, "--supernodes", "2") as state:
        ports = set(state["ports"].values())
        assert len(ports) == 4  # Fleet API, SuperLink HTTP API, one per SuperNode
        assert not ports & {39091, 39093}  # a local simulation SuperLink's
        assert [(certs / key).stat().st_mode & 0o777 for key in ("ca.key", "server.key")] == [
            0o600,
            0o600,
        ]
        assert tls_version(state["ports"]["fleet"], certs / "ca.crt").startswith("TLS")
        assert connection(tmp_path) == {
            "address": state["address"],
            "root-certificates": str(certs / "ca.crt"),
        }

        ran = deploy(tmp_path, "run", "--run-config", RUN_CONFIG.format(results), timeout=300)
        rounds_file = results / "deploy-test" / "rounds.jsonl"
        assert ran == 0 and rounds_file.exists(), report(tmp_path, "run")
        rounds = [json.loads(line) for line in rounds_file.read_text().splitlines()]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert [r["clients_ok"] for r in rounds[1:]] == [2, 2]
        summary = json.loads((results / "deploy-test" / "summary.json").read_text())
        assert summary["rounds"] == 2 and summary["total_bytes"] == rounds[-1]["cum_bytes"]
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject_before


def test_insecure_mode_only_behind_its_flag(tmp_path):
    with deployment(tmp_path, "--insecure", "--supernodes", "1") as state:
        assert state["tls"] is False and not (tmp_path / "deployment" / "certs").exists()
        assert all("--insecure" in process["argv"] for process in state["processes"])
        assert connection(tmp_path) == {"address": state["address"], "insecure": True}
