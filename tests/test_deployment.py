"""The deployment path of docs/deployment.md (``fp8fl-deploy``): a SuperLink and SuperNodes on
loopback talking gRPC (Flower's Fleet API) over TLS with SuperNode authentication, SuperNodes that
were not registered refused, three rounds of the real app through ``flwr run`` on the registered
ones, one of them hostile (``--hostile``: a scaling attack, the negated model, a malformed update),
then nothing left running and every port free again. All of it under the test's ``tmp_path``:
``flwr-home/`` (FLWR_HOME), ``deployment/`` (state, certificates, keys, process logs),
``<command>.out``, ``stranger-*.log``."""

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

from clients.hostile_client import WELL_FORMED, round_attack
from clients.malformed import MUTATIONS
from experiments.cli.deploy import activated, free_ports, make_node_key
from experiments.cli.flwr_cli import flower_env

pytestmark = pytest.mark.integration  # starts Ray, Flower or TLS processes

ROOT = Path(__file__).resolve().parents[1]
HONEST, HOSTILE = (0, 1), 2  # SuperNode 2 of 3 attacks, in turn, with every kind of `all`
# With robust-norm-factor = 2, a round whose hostile update is rejected clips no honest change: the
# bound of each entry is 2 x the median of the two honest changes, their sum.
RUN_CONFIG = (
    "num-clients=3 clients-per-round=3 num-server-rounds=3 local-steps=2 batch-size=20 "
    "eval-samples=200 calibration-samples=32 robust-aggregation='norm-bound' "
    "robust-norm-factor=2.0 results-dir='{}' run-name='deploy-test'"
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


def stranger(tmp_path: Path, state: dict, name: str, *key_args: str) -> subprocess.Popen:
    """A SuperNode that ``up`` did not register, trusting our CA, aimed at the Fleet API; its
    output goes to ``stranger-<name>.log``."""
    argv = [
        "flower-supernode",
        "--root-certificates",
        str(tmp_path / "deployment" / "certs" / "ca.crt"),
        *key_args,
        "--superlink",
        f"127.0.0.1:{state['ports']['fleet']}",
        "--port",
        str(free_ports(1)[0]),
        "--node-config",
        "partition-id=0 num-partitions=2",
    ]
    env = flower_env(tmp_path / "flwr-home")  # the venv's `bin` first: SuperExec, ClientApp
    with (tmp_path / f"stranger-{name}.log").open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


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


def check_hostile_rounds(rounds: list[dict], server_log: str) -> None:
    """Each round the hostile partition's update is clipped far beyond any honest change
    (well-formed attacks) or rejected with its corpus reason (malformed); the honest ones are
    accepted, and pass untouched when the hostile one is rejected. The server log has one line per
    rejected or clipped update, exactly those of the round records."""
    sent = [round_attack("all", record["round"]) for record in rounds]
    assert sent == ["scale-ranges", "negate-model", min(MUTATIONS)]
    expected: set[tuple] = set()
    for record, attack in zip(rounds, sent):
        rejected = {r["partition"]: r["reason"] for r in record["rejected"]}
        clipped = record.get("clipped", {})
        assert record["aggregated"] and list(rejected) == (
            [] if attack in WELL_FORMED else [HOSTILE]
        )
        assert record["clients_ok"] == 3 - len(rejected)
        if attack in WELL_FORMED:
            hostile = clipped[str(HOSTILE)]["max_ratio"]
            assert hostile is None or hostile > 100  # None: an entry no other client changed
            # The hostile change of an entry can be the median of 3: in round 1 its fc1 weight α
            # was at the floor 1e-6, x 1000 a change of -0.024, and honest partition 0's +0.054
            # exceeded 2 x that (1.13 x the bound).
            assert all(clipped[str(pid)]["max_ratio"] < 3 for pid in HONEST if str(pid) in clipped)
        else:
            assert MUTATIONS[attack][1] in rejected[HOSTILE] and not clipped
        expected |= {("rejected", str(p), why) for p, why in rejected.items()}
        expected |= {("clipped", p, str(c["clipped"]), str(c["of"])) for p, c in clipped.items()}
    rejections = re.findall(
        r"fp8fl: rejected the update of partition (\d+): (.*?)\s*$", server_log, re.M
    )
    clippings = re.findall(
        r"fp8fl: the robust rule clipped the update of partition (\d+): (\d+) of (\d+) entries",
        server_log,
    )
    assert {("rejected", *r) for r in rejections} | {("clipped", *c) for c in clippings} == expected


def test_tls_deployment_refuses_strangers_survives_a_hostile_node_and_stops_every_process(
    tmp_path,
):
    workdir, results = tmp_path / "deployment", tmp_path / "results"
    certs, keys = workdir / "certs", workdir / "keys"
    pyproject_before = (ROOT / "pyproject.toml").read_bytes()
    with deployment(tmp_path, "--supernodes", "3", "--hostile", f"{HOSTILE}:all") as state:
        ports = set(state["ports"].values())
        assert len(ports) == 5  # Fleet API, SuperLink HTTP API, one per SuperNode
        assert not ports & {39091, 39093}  # a local simulation SuperLink's
        secrets = [certs / "ca.key", certs / "server.key", *sorted(keys.glob("*.key"))]
        assert [path.stat().st_mode & 0o777 for path in secrets] == [0o600] * 5
        assert tls_version(state["ports"]["fleet"], certs / "ca.crt").startswith("TLS")
        assert connection(tmp_path) == {
            "address": state["address"],
            "root-certificates": str(certs / "ca.crt"),
        }
        superlink, *supernodes = state["processes"]
        assert state["supernode_auth"] and "--enable-supernode-auth" in superlink["argv"]
        registered = sorted(node["node_id"] for node in supernodes)
        assert sorted(activated(superlink)) == registered and len(set(registered)) == 3
        assert state["hostile"] == {str(HOSTILE): "all"}
        assert [node["argv"][-1] for node in supernodes] == [
            f"partition-id={i} num-partitions=3" + (' attack="all"' if i == HOSTILE else "")
            for i in range(3)
        ]

        # Two SuperNodes nobody registered, with a key of their own or none (self-registration),
        # each with Flower's refusal in its log.
        make_node_key(tmp_path / "stranger.key")
        key_args = ["--auth-supernode-private-key", str(tmp_path / "stranger.key")]
        strangers = {
            "unregistered-key": (
                stranger(tmp_path, state, "unregistered-key", *key_args),
                "Failed to activate SuperNode",
            ),
            "no-key": (stranger(tmp_path, state, "no-key"), "All SuperNodes must be registered"),
        }
        for name, (process, refusal) in strangers.items():
            exit_code = process.wait(timeout=120)  # refused: it exits, no retry loop
            log = (tmp_path / f"stranger-{name}.log").read_text(errors="replace")
            assert exit_code != 0 and refusal in log, log

        ran = deploy(tmp_path, "run", "--run-config", RUN_CONFIG.format(results), timeout=300)
        rounds_file = results / "deploy-test" / "rounds.jsonl"
        assert ran == 0 and rounds_file.exists(), report(tmp_path, "run")
        rounds = [json.loads(line) for line in rounds_file.read_text().splitlines()]
        assert [r["round"] for r in rounds] == [0, 1, 2, 3]
        check_hostile_rounds(rounds[1:], (tmp_path / "run.out").read_text(errors="replace"))
        summary = json.loads((results / "deploy-test" / "summary.json").read_text())
        assert summary["rounds"] == 3 and summary["total_bytes"] == rounds[-1]["cum_bytes"]
        # Tasks went to the registered SuperNodes only; the strangers never joined.
        assert sorted(activated(superlink)) == registered
        for node in supernodes:
            assert "Receiving: train message" in Path(node["log"]).read_text(errors="replace")
        for name in strangers:
            assert "Receiving:" not in (tmp_path / f"stranger-{name}.log").read_text()
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject_before


def test_insecure_mode_only_behind_its_flag(tmp_path):
    with deployment(tmp_path, "--insecure", "--supernodes", "1") as state:
        assert state["tls"] is False and not (tmp_path / "deployment" / "certs").exists()
        assert state["supernode_auth"] is False and not (tmp_path / "deployment" / "keys").exists()
        assert state["hostile"] == {}
        assert all("--insecure" in process["argv"] for process in state["processes"])
        assert connection(tmp_path) == {"address": state["address"], "insecure": True}
