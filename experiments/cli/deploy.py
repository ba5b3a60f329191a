"""``fp8fl-deploy``: the app as real processes on this machine — a SuperLink and N SuperNodes
talking gRPC (Flower's Fleet API) over TLS, then ``flwr run . deployment``.

    fp8fl-deploy up --supernodes 2                   # certificates made on first use
    fp8fl-deploy run --run-config "num-clients=2 clients-per-round=2"
    fp8fl-deploy down                                # stops every process `up` started

* ``certs``: a local CA (``ca.crt``, ``ca.key``) and a server certificate (``server.crt``,
  ``server.key``) for 127.0.0.1 and localhost signed by it (openssl);
* ``up``: the SuperLink (Fleet API and HTTP Control/Runtime API) and N SuperNodes, each with its own
  Runtime API port and its partition through ``--node-config``, all on free loopback ports. TLS
  unless ``--insecure``. The connection goes into ``$FLWR_HOME/config.toml`` as ``deployment``;
  pids, ports and log files into ``<workdir>/deployment.json``;
* ``run``: ``flwr run . deployment --stream`` plus the given arguments;
* ``down``: SIGTERM to every process of the deployment, SIGKILL after a grace period.

The environment (venv ``bin`` on ``PATH``, ``FLWR_HOME``, no per-run installs) is ``fp8fl-flwr``'s.
The default workdir is ``$FLWR_HOME/deployment`` (``<project>/.flwr`` is git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flwr.cli.constant import LOCAL_CONTROL_API_PORT, LOCAL_SUPERLINK_HTTP_API_PORT
from flwr.cli.flower_config import write_superlink_connection
from flwr.cli.typing import SuperLinkConnection

from experiments.cli.flwr_cli import PROJECT, flower_env
from experiments.cli.run_outcome import run_watched

CONNECTION = "deployment"
HOST = "127.0.0.1"
STATE = "deployment.json"
SIMULATION_PORTS = {int(LOCAL_SUPERLINK_HTTP_API_PORT), int(LOCAL_CONTROL_API_PORT)}  # 39091, 39093
ACTIVATED = "[Fleet.ActivateNode] Activated node_id="  # the SuperLink's log line per joined node
SERVER_EXTENSIONS = """\
subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class DeployError(RuntimeError):
    """A deployment step failed; the message says which and why."""


# ---- certificates -------------------------------------------------------------------------------


def openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError(f"openssl {args[0]} failed:\n{done.stderr}")


def make_certs(out: Path, days: int = 365) -> None:
    """A fresh local CA and a server certificate for 127.0.0.1/localhost signed by it (P-256 keys;
    keys mode 600, in a folder mode 700). Refuses to overwrite an existing CA."""
    if (out / "ca.crt").exists():
        raise DeployError(f"{out / 'ca.crt'} exists; remove {out} to make new certificates")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        out / "ca.key",
        "-out",
        out / "ca.crt",
        "-days",
        str(days),
        "-subj",
        "/CN=fp8fl local CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        *ec,
        "-keyout",
        out / "server.key",
        "-out",
        out / "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (out / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl(
        "x509",
        "-req",
        "-in",
        out / "server.csr",
        "-CA",
        out / "ca.crt",
        "-CAkey",
        out / "ca.key",
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        str(days),
        "-extfile",
        out / "server.ext",
        "-out",
        out / "server.crt",
    )
    for leftover in ("server.csr", "server.ext"):
        (out / leftover).unlink()
    for key in ("ca.key", "server.key"):
        (out / key).chmod(0o600)


# ---- processes ----------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (the system's pick for port 0,
    all bound together), none of them a local simulation SuperLink's."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            sockets.append(socket.socket())
            sockets[-1].bind((HOST, 0))
            if (port := sockets[-1].getsockname()[1]) not in SIMULATION_PORTS:
                ports.append(port)
        return ports
    finally:
        for s in sockets:
            s.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie; with the
    pid it names one process for good (a pid alone may be reused)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in "ZX" else int(fields[19])


def launch(name: str, argv: list[str], env: dict[str, str], logs: Path) -> dict:
    """Start ``argv`` detached (its own session: it outlives ``up`` and the terminal's Ctrl-C),
    output to ``logs/<name>.log``, working directory ``logs`` (nothing lands where ``up`` was
    typed); returns its state-file record."""
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=logs,
        )
    return {
        "name": name,
        "pid": proc.pid,
        "start": start_time(proc.pid),
        "log": str(log),
        "argv": argv,
    }


def log_tail(record: dict, lines: int = 30) -> str:
    text = Path(record["log"]).read_text(errors="replace").splitlines()[-lines:]
    return f"--- {record['log']} (last {lines} lines)\n" + "\n".join(text)


def wait_until(
    ready: Callable[[], bool], what: str, records: list[dict], timeout_s: float = 60
) -> None:
    """Until ``ready()``; fails at once, with its log, if a process exits, and with every log after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        for record in records:
            if start_time(record["pid"]) is None:
                raise DeployError(
                    f"{record['name']} exited while waiting for {what}\n" + log_tail(record)
                )
        if time.monotonic() > deadline:
            raise DeployError(
                f"no {what} after {timeout_s:.0f} s\n" + "\n".join(log_tail(r) for r in records)
            )
        time.sleep(0.2)


def activated(superlink: dict) -> int:
    """How many SuperNodes have joined, by the SuperLink's log."""
    return Path(superlink["log"]).read_text(errors="replace").count(ACTIVATED)


def deployment_pids(state: dict) -> set[int]:
    """Live processes of the deployment: the recorded ones, and any process whose command line
    names one of its loopback addresses (the SuperExecs, ServerApp and ClientApp processes that
    Flower starts, even once orphaned)."""
    pids = {
        r["pid"]
        for r in state["processes"]
        if r["start"] is not None and start_time(r["pid"]) == r["start"]
    }
    ports = "|".join(str(p) for p in state["ports"].values())
    found = subprocess.run(
        ["pgrep", "-f", rf"{re.escape(HOST)}:({ports})([^0-9]|$)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return pids | {int(p) for p in found.stdout.split() if start_time(int(p)) is not None}


def stop(state: dict, grace_s: float = 8.0, kill_wait_s: float = 5.0) -> set[int]:
    """SIGTERM every process of the deployment (and any it starts meanwhile), SIGKILL those still
    alive after ``grace_s``; returns the pids killed so, fails if some survive even that.

    Flower forces its own exit 5 s after a SIGTERM; a process still there after ``grace_s`` is
    stuck (seen: a SuperNode hanging in gRPC's channel finalizer at interpreter exit)."""
    deadline = time.monotonic() + grace_s
    signalled: set[int] = set()
    killed: set[int] = set()
    while pids := deployment_pids(state):
        late = time.monotonic() > deadline
        if time.monotonic() > deadline + kill_wait_s:
            raise DeployError(f"processes {sorted(pids)} survived SIGKILL")
        for pid in pids if late else pids - signalled:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
        signalled |= pids
        killed |= pids if late else set()
        time.sleep(0.2)
    return killed


# ---- commands -----------------------------------------------------------------------------------


def default_workdir() -> Path:
    return Path(flower_env()["FLWR_HOME"]) / "deployment"


def read_state(workdir: Path) -> dict | None:
    path = workdir / STATE
    return json.loads(path.read_text()) if path.exists() else None


def write_state(workdir: Path, state: dict) -> None:
    (workdir / STATE).write_text(json.dumps(state, indent=2) + "\n")


def tls_args(certs: Path | None) -> tuple[list[str], list[str]]:
    """SuperLink and SuperNode flags for TLS with ``certs``, or for no TLS (``None``)."""
    if certs is None:
        return ["--insecure"], ["--insecure"]
    ca, cert, key = (str(certs / name) for name in ("ca.crt", "server.crt", "server.key"))
    return (
        ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key],
        ["--root-certificates", ca],
    )


def start_all(state: dict, certs: Path | None, env: dict[str, str], logs: Path) -> None:
    """The SuperLink, then the SuperNodes once it listens, until all have joined; each record lands
    in ``state`` as soon as its process exists, so that a failure half-way can stop what runs."""
    ports, n, records = state["ports"], state["supernodes"], state["processes"]
    link_tls, node_tls = tls_args(certs)
    fleet = f"{HOST}:{ports['fleet']}"
    records.append(
        launch(
            "superlink",
            [
                "flower-superlink",
                *link_tls,
                "--fleet-api-address",
                fleet,
                "--host",
                HOST,
                "--port",
                str(ports["superlink"]),
            ],
            env,
            logs,
        )
    )
    wait_until(
        lambda: port_open(ports["fleet"]) and port_open(ports["superlink"]),
        "SuperLink listening",
        records,
    )
    for i in range(n):
        records.append(
            launch(
                f"supernode-{i}",
                [
                    "flower-supernode",
                    *node_tls,
                    "--superlink",
                    fleet,
                    "--host",
                    HOST,
                    "--port",
                    str(ports[f"supernode-{i}"]),
                    "--node-config",
                    f"partition-id={i} num-partitions={n}",
                ],
                env,
                logs,
            )
        )
    wait_until(lambda: activated(records[0]) >= n, f"{n} SuperNodes connected", records)


def write_connection(env: dict[str, str], address: str, certs: Path | None) -> None:
    """The ``deployment`` connection in ``$FLWR_HOME/config.toml``: TLS with our CA, or insecure."""
    os.environ["FLWR_HOME"] = env["FLWR_HOME"]  # Flower's config helpers read it from here
    write_superlink_connection(
        SuperLinkConnection(
            name=CONNECTION,
            address=address,
            root_certificates=None if certs is None else str(certs / "ca.crt"),
            insecure=True if certs is None else None,
        )
    )


def up(supernodes: int, workdir: Path, certs: Path | None) -> dict:
    """Start the deployment (``certs=None``: insecure); returns its state, also written to disk."""
    if (old := read_state(workdir)) and deployment_pids(old):
        raise DeployError(f"a deployment from {workdir} is running; `fp8fl-deploy down` first")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = flower_env()
    env.pop("FLWR_INTERNAL_GRPC_CONTROL_API", None)  # would open a gRPC Control API on a fixed port
    names = ["fleet", "superlink", *(f"supernode-{i}" for i in range(supernodes))]
    state = {
        "supernodes": supernodes,
        "tls": certs is not None,
        "ports": dict(zip(names, free_ports(len(names)), strict=True)),
        "processes": [],
    }
    state["address"] = f"{HOST}:{state['ports']['superlink']}"
    write_state(workdir, state)  # the ports already: `down` finds the processes even if `up` dies
    try:
        start_all(state, certs, env, logs)
    except BaseException:
        stop(state)
        (workdir / STATE).unlink()
        raise
    write_state(workdir, state)
    write_connection(env, state["address"], certs)
    return state


def down(workdir: Path) -> None:
    """Stop the deployment recorded in ``workdir``, saying so."""
    state = read_state(workdir)
    if state is None:
        print(f"no deployment recorded in {workdir}")
        return
    killed = stop(state)
    (workdir / STATE).unlink()
    print(
        f"stopped the deployment of {workdir}"
        + (f" (SIGKILL for pids {sorted(killed)}, stuck after SIGTERM)" if killed else "")
    )


def run(flwr_args: list[str]) -> int:
    """``flwr run . deployment --stream <flwr_args>`` in the project, with ``fp8fl-flwr``'s env."""
    command = ["flwr", "run", ".", CONNECTION, "--stream", *flwr_args]
    return run_watched(command, PROJECT, flower_env(), PROJECT)


def positive(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fp8fl-deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="make a local CA and a server certificate")
    certs.add_argument("--out", type=Path, help="folder (default: <workdir>/certs)")
    start = sub.add_parser("up", help="start a SuperLink and N SuperNodes")
    start.add_argument(
        "--supernodes",
        type=positive,
        default=2,
        metavar="N",
        help="how many, one data partition each (default: 2)",
    )
    mode = start.add_mutually_exclusive_group()
    mode.add_argument(
        "--certs", type=Path, help="from `certs` (default: <workdir>/certs, made if missing)"
    )
    mode.add_argument("--insecure", action="store_true", help="no TLS: unencrypted, unverified")
    sub.add_parser("run", help="flwr run . deployment --stream [flwr run arguments]")
    sub.add_parser("down", help="stop every process `up` started")
    for command in (certs, start, sub.choices["down"]):
        command.add_argument(
            "--workdir",
            type=Path,
            help="state, logs, certificates (default: $FLWR_HOME/deployment)",
        )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # everything after `run` is flwr's
        return run(argv[1:])
    args = parser().parse_args(argv)
    workdir = (args.workdir or default_workdir()).resolve()
    try:
        if args.command == "certs":
            make_certs((args.out or workdir / "certs").resolve())
        elif args.command == "up":
            certs = None if args.insecure else (args.certs or workdir / "certs").resolve()
            if certs is not None and args.certs is None and not (certs / "ca.crt").exists():
                make_certs(certs)
            state = up(args.supernodes, workdir, certs)
            print(
                f"SuperLink on {state['address']} ({'TLS' if certs else 'INSECURE, no TLS'}) "
                f"with {args.supernodes} SuperNodes; logs in {workdir / 'logs'}\nnext: "
                f"fp8fl-deploy run --run-config 'num-clients={args.supernodes} ...'; "
                f"fp8fl-deploy down"
            )
        else:
            down(workdir)
    except DeployError as err:
        print(f"fp8fl-deploy {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
