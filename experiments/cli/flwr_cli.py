"""``fp8fl-flwr``: Flower's own ``flwr`` command, set up for this project.

    fp8fl-flwr run . --stream                                   # the default: 10 virtual clients
    fp8fl-flwr run . --verbose                                  # with every line of Flower's log
    fp8fl-flwr run . --stream --federation-config "num-supernodes=100" \\
        --run-config "num-clients=100 clients-per-round=0.1 local-epochs=5"

It runs ``flwr`` with

* the virtual environment's ``bin`` first on ``PATH`` (``flwr run`` starts ``flower-superlink``);
* ``FLWR_HOME`` = ``<project>/.flwr`` unless set, holding Flower's connection file (copied from
  ``experiments/configs/flower-config.toml`` on first use) — Flower keeps federation settings there,
  never in ``pyproject.toml``, so no tracked file is rewritten;
* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``: the app's dependencies are installed once;
* for ``run`` without ``--federation-config``, ``num-supernodes=10 client-resources-num-cpus=1``
  (the default run's 10 clients, one CPU each);

and stops the local SuperLink that ``flwr run`` started, which would otherwise keep running.
``run`` always streams, and exits non-zero unless the run wrote its ``summary.json`` (Flower's
``flwr run --stream`` returns 0 even when the ServerApp crashed), printing the cause. Its output is
quiet: fp8fl's round lines, summary table, warnings and errors, without Flower's INFO lines
(``experiments.cli.terminal``); ``--verbose`` (fp8fl-flwr's own flag) shows everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.cli.run_outcome import run_watched
from experiments.cli.terminal import echo_for

PROJECT = Path(__file__).resolve().parents[2]
CONNECTIONS = PROJECT / "experiments" / "configs" / "flower-config.toml"
DEFAULT_FEDERATION = "num-supernodes=10 client-resources-num-cpus=1"


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for ``flwr``: venv on PATH, project FLWR_HOME, no per-run installs."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    home = Path(flwr_home or env.get("FLWR_HOME") or PROJECT / ".flwr")
    env["FLWR_HOME"] = str(home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "config.toml").exists():
        shutil.copyfile(CONNECTIONS, home / "config.toml")
    return env


def superlink_pids(flwr_home: str) -> set[int]:
    """PIDs of local simulation SuperLinks whose state lives under ``flwr_home`` (not a
    deployment's SuperLink, see ``experiments.cli.deploy``)."""
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*--simulation.*{flwr_home}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {int(pid) for pid in found.stdout.split()}


def with_default_federation(args: list[str]) -> list[str]:
    if args[:1] == ["run"] and not any(a.startswith("--federation-config") for a in args):
        return [*args, "--federation-config", DEFAULT_FEDERATION]
    return args


def streamed(args: list[str]) -> list[str]:
    """``run`` always streams: the local SuperLink is stopped when this command returns, so the run
    must have ended by then (and its log is where a failure's cause is read)."""
    if args[:1] == ["run"] and "--stream" not in args:
        return [*args, "--stream"]
    return args


def verbose_flag(args: list[str]) -> tuple[bool, list[str]]:
    """fp8fl-flwr's own ``--verbose`` (show Flower's whole log), and the arguments for ``flwr``."""
    return "--verbose" in args, [a for a in args if a != "--verbose"]


def app_dir(args: list[str]) -> Path:
    """The app folder of ``run [APP]`` (``.`` when omitted)."""
    return Path(args[1]) if len(args) > 1 and not args[1].startswith("-") else Path(".")


def main(argv: list[str] | None = None) -> int:
    """Run ``flwr``; for ``run``, the exit code says whether the run finished (``summary.json``),
    never only what ``flwr run`` returned."""
    verbose, args = verbose_flag(list(sys.argv[1:] if argv is None else argv))
    args = streamed(with_default_federation(args))
    env = flower_env()
    before = superlink_pids(env["FLWR_HOME"])
    try:
        if args[:1] == ["run"]:
            echo = echo_for(verbose)
            try:
                return run_watched(["flwr", *args], app_dir(args).resolve(), env, Path.cwd(), echo)
            finally:
                echo.close()
        return subprocess.run(["flwr", *args], env=env, check=False).returncode
    finally:
        stop_superlinks(superlink_pids(env["FLWR_HOME"]) - before, env["FLWR_HOME"])


def stop_superlinks(pids: set[int], flwr_home: str, grace_s: float = 15.0) -> None:
    """SIGTERM, then wait for a clean shutdown (SIGKILL after ``grace_s``)."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids & superlink_pids(flwr_home):
        if time.monotonic() > deadline:
            for pid in pids & superlink_pids(flwr_home):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
