"""``fp8fl-deploy``: the app as real processes on this machine — a SuperLink and N SuperNodes
talking gRPC (Flower's Fleet API) over TLS, then ``flwr run . deployment``.

    fp8fl-deploy up --supernodes 2                   # certificates made on first use
    fp8fl-deploy up --supernodes 3 --hostile 2:all   # SuperNode 2 attacks (clients/hostile_client)
    fp8fl-deploy run --run-config "num-clients=2 clients-per-round=2"
    fp8fl-deploy down                                # stops every process `up` started

* ``certs``: a local CA (``ca.crt``, ``ca.key``) and a server certificate (``server.crt``,
  ``server.key``) for 127.0.0.1 and localhost signed by it (openssl);
* ``up``: the SuperLink (Fleet API and HTTP Control/Runtime API) and N SuperNodes, each with its own
  Runtime API port and its partition through ``--node-config``, all on free loopback ports. TLS and
  SuperNode authentication unless ``--insecure``: an EC key pair per SuperNode
  (``<workdir>/keys/supernode-<i>.key`` and ``.key.pub``, made on first use), each public key
  registered with ``flwr supernode register`` before its SuperNode starts, so that the SuperLink
  (``--enable-supernode-auth``) admits no other. ``up`` returns once both SuperLink APIs answer
  over TLS and every SuperNode has joined. ``--hostile I:ATTACK`` (repeatable) starts SuperNode I
  with ``attack="ATTACK"`` in its node config: its ClientApp trains, then sends that attack
  (``clients.hostile_client.ATTACKS``) instead of its update. The connection goes into
  ``$FLWR_HOME/config.toml`` as ``deployment``; pids, ports, node ids, hostile nodes and log files
  into ``<workdir>/deployment.json``;
* ``run``: ``flwr run . deployment --stream`` plus the given arguments;
* ``down``: SIGTERM to every process of the deployment, SIGKILL after a grace period.

The environment (venv ``bin`` on ``PATH``, ``FLWR_HOME``, no per-run installs) is ``fp8fl-flwr``'s.
The default workdir is ``$FLWR_HOME/deployment`` (``<project>/.flwr`` is git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.constant import LOCAL_CONTROL_API_PORT, LOCAL_SUPERLINK_HTTP_API_PORT
from flwr.cli.flower_config import write_superlink_connection
from flwr.cli.typing import SuperLinkConnection

from clients.hostile_client import ATTACKS
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


# ---- SuperNode keys -----------------------------------------------------------------------------


def make_node_key(private: Path) -> Path:
    """An EC P-384 key pair for SuperNode authentication in the OpenSSH format Flower reads (as
    ``ssh-keygen -t ecdsa -b 384`` makes): ``private`` (mode 600, in a folder mode 700) and
    ``<private>.pub``; an existing pair is kept. Returns the public key's path."""
    public = private.with_name(private.name + ".pub")
    if private.exists() and public.exists():
        return public
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    secret = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    with contextlib.suppress(FileNotFoundError):
        private.unlink()  # a private key without its public half: replaced
    with os.fdopen(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(secret)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return public


def register_node(name: str, public_key: Path, env: dict[str, str]) -> int:
    """``flwr supernode register <public_key> deployment --name <name>`` (the connection must be
    written already); returns the node id the SuperLink gave it."""
    command = ["flwr", "supernode", "register", str(public_key), CONNECTION, "--name", name]
    done = subprocess.run(
        [*command, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    try:
        return int(json.loads(done.stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
        raise DeployError(
            f"flwr supernode register {public_key} failed (exit {done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        ) from None


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


def client_tls(certs: Path, protocol: str) -> ssl.SSLContext:
    """A client's TLS context that trusts only our CA and offers ``protocol`` (ALPN)."""
    context = ssl.create_default_context(cafile=certs / "ca.crt")
    context.set_alpn_protocols([protocol])
    return context


def fleet_problem(port: int, certs: Path | None) -> str | None:
    """Why the Fleet API does not answer yet (no connection; with ``certs``, no completed TLS
    handshake with a certificate our CA vouches for), None once it does."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw:
            if certs is not None:
                with client_tls(certs, "h2").wrap_socket(raw, server_hostname=HOST):
                    pass
    except OSError as err:
        return f"Fleet API {HOST}:{port}: {err!r}"
    return None


def http_problem(port: int, certs: Path | None) -> str | None:
    """Why the SuperLink's HTTP Control/Runtime API does not answer ``GET /health`` with 200 yet
    (with ``certs``: over TLS, verified against our CA), None once it does."""
    tls = None if certs is None else client_tls(certs, "http/1.1")
    url = f"{'http' if tls is None else 'https'}://{HOST}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2, context=tls) as response:
            status = response.status
    except (OSError, http.client.HTTPException) as err:  # refused, reset, TLS, HTTP error, junk
        return f"GET {url}: {err!r}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


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
    problem: Callable[[], str | None], what: str, records: list[dict], timeout_s: float = 60
) -> None:
    """Until ``problem()`` (what is still missing) is None; fails at once, with its log, if a
    process exits, and with the last problem and every log after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (missing := problem()) is not None:
        for record in records:
            if start_time(record["pid"]) is None:
                raise DeployError(
                    f"{record['name']} exited while waiting for {what}\n" + log_tail(record)
                )
        if time.monotonic() > deadline:
            raise DeployError(
                f"no {what} after {timeout_s:.0f} s; last: {missing}\n"
                + "\n".join(log_tail(r) for r in records)
            )
        time.sleep(0.2)


def activated(superlink: dict) -> list[int]:
    """The node ids of the SuperNodes that have joined, by the SuperLink's log."""
    log = Path(superlink["log"]).read_text(errors="replace")
    return [int(node) for node in re.findall(rf"{re.escape(ACTIVATED)}(\d+)", log)]


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
    """SuperLink and SuperNode flags for TLS with ``certs`` and SuperNode authentication (each
    SuperNode adds its own key), or for neither (``None``)."""
    if certs is None:
        return ["--insecure"], ["--insecure"]
    ca, cert, key = (str(certs / name) for name in ("ca.crt", "server.crt", "server.key"))
    return (
        [
            "--ssl-ca-certfile",
            ca,
            "--ssl-certfile",
            cert,
            "--ssl-keyfile",
            key,
            "--enable-supernode-auth",
        ],
        ["--root-certificates", ca],
    )


def start_all(state: dict, certs: Path | None, env: dict[str, str], workdir: Path) -> None:
    """The SuperLink; once both its APIs answer (over TLS unless insecure), each SuperNode's key
    registered (TLS only) and the SuperNodes started, until all have joined. Each record lands in
    ``state`` as soon as its process exists, so that a failure half-way can stop what runs."""
    ports, n, records = state["ports"], state["supernodes"], state["processes"]
    attacks = {int(i): attack for i, attack in state["hostile"].items()}
    link_args, node_args = tls_args(certs)
    fleet, logs = f"{HOST}:{ports['fleet']}", workdir / "logs"
    records.append(
        launch(
            "superlink",
            [
                "flower-superlink",
                *link_args,
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
    # Open ports are not enough: `flwr run` right after `up` once met a TLS handshake cut short.
    wait_until(
        lambda: fleet_problem(ports["fleet"], certs) or http_problem(ports["superlink"], certs),
        "SuperLink answering" + ("" if certs is None else " over TLS"),
        records,
    )
    for i in range(n):
        name, key_args, node_id = f"supernode-{i}", [], None
        if certs is not None:
            key = workdir / "keys" / f"{name}.key"
            node_id = register_node(name, make_node_key(key), env)
            key_args = ["--auth-supernode-private-key", str(key)]
        records.append(
            launch(
                name,
                [
                    "flower-supernode",
                    *node_args,
                    *key_args,
                    "--superlink",
                    fleet,
                    "--host",
                    HOST,
                    "--port",
                    str(ports[name]),
                    "--node-config",
                    f"partition-id={i} num-partitions={n}"
                    + (f' attack="{attacks[i]}"' if i in attacks else ""),
                ],
                env,
                logs,
            )
            | {"node_id": node_id}
        )
    wait_until(
        lambda: None if len(joined := activated(records[0])) >= n else f"joined: {joined}",
        f"{n} SuperNodes connected",
        records,
    )


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


def hostile_nodes(specs: list[tuple[int, str]], supernodes: int) -> dict[int, str]:
    """``--hostile`` as SuperNode -> attack; fails naming every index out of range or repeated."""
    indices = [i for i, _ in specs]
    problems = [f"no SuperNode {i} among {supernodes}" for i in indices if i >= supernodes]
    problems += [f"SuperNode {i} given twice" for i in sorted(set(indices)) if indices.count(i) > 1]
    if problems:
        raise DeployError("--hostile: " + "; ".join(problems))
    return dict(specs)


def up(
    supernodes: int, workdir: Path, certs: Path | None, hostile: dict[int, str] | None = None
) -> dict:
    """Start the deployment (``certs=None``: insecure; ``hostile``: SuperNode -> attack); returns
    its state, also written to disk."""
    if (old := read_state(workdir)) and deployment_pids(old):
        raise DeployError(f"a deployment from {workdir} is running; `fp8fl-deploy down` first")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = flower_env()
    env.pop("FLWR_INTERNAL_GRPC_CONTROL_API", None)  # would open a gRPC Control API on a fixed port
    names = ["fleet", "superlink", *(f"supernode-{i}" for i in range(supernodes))]
    state = {
        "supernodes": supernodes,
        "tls": certs is not None,
        "supernode_auth": certs is not None,
        "hostile": {str(i): attack for i, attack in sorted((hostile or {}).items())},
        "ports": dict(zip(names, free_ports(len(names)), strict=True)),
        "processes": [],
    }
    state["address"] = f"{HOST}:{state['ports']['superlink']}"
    write_state(workdir, state)  # the ports already: `down` finds the processes even if `up` dies
    write_connection(env, state["address"], certs)  # `flwr supernode register` needs it
    try:
        start_all(state, certs, env, workdir)
    except BaseException:
        stop(state)
        (workdir / STATE).unlink()
        raise
    write_state(workdir, state)
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


def hostile_spec(text: str) -> tuple[int, str]:
    """``I:ATTACK`` as (I, ATTACK), with I a SuperNode index and ATTACK one of ``ATTACKS``."""
    index, _, attack = text.partition(":")
    if not index.isdigit() or attack not in ATTACKS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not I:ATTACK with I a SuperNode index (0, 1, ...) and ATTACK one of "
            + ", ".join(ATTACKS)
        )
    return int(index), attack


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
    start.add_argument(
        "--hostile",
        type=hostile_spec,
        action="append",
        default=[],
        metavar="I:ATTACK",
        help=f"SuperNode I sends ATTACK ({', '.join(ATTACKS)}) instead of its update; repeatable",
    )
    mode = start.add_mutually_exclusive_group()
    mode.add_argument(
        "--certs", type=Path, help="from `certs` (default: <workdir>/certs, made if missing)"
    )
    mode.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication: unencrypted, unverified, open to anyone",
    )
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
            hostile = hostile_nodes(args.hostile, args.supernodes)
            certs = None if args.insecure else (args.certs or workdir / "certs").resolve()
            if certs is not None and args.certs is None and not (certs / "ca.crt").exists():
                make_certs(certs)
            state = up(args.supernodes, workdir, certs, hostile)
            security = "TLS, SuperNode authentication" if certs else "INSECURE: no TLS, no auth"
            attackers = "".join(f", SuperNode {i} hostile ({a})" for i, a in hostile.items())
            print(
                f"SuperLink on {state['address']} ({security}) "
                f"with {args.supernodes} SuperNodes{attackers}; logs in {workdir / 'logs'}\nnext: "
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
