"""Did a ``flwr run`` finish? Flower's exit code does not say (``flwr run --stream`` returns 0 when
the ServerApp crashed), so the answer comes from the run's own ``summary.json``, and the cause of a
failure from the exception in the streamed ServerApp / ClientApp log.

``run_watched`` runs a ``flwr run`` command, passes its output through, and returns 0 only when a
``summary.json`` was written for this run; otherwise it prints one line naming the cause, e.g.
``fp8fl: run failed: ServerApp failed: DatasetNotFoundError: cifar100: data set not found; …``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from flwr.common.config import parse_config_args

from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.results import resolve_results_dir

__all__ = [
    "FAILED",
    "ExpectedRun",
    "expected_run",
    "failure_cause",
    "reported_failure",
    "run_watched",
]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
SERVER_FRAMES = ("/strategies/", "flwr/serverapp/", "run_serverapp", "server_app")
CLIENT_FRAMES = ("/clients/", "flwr/clientapp/", "client_app", "LoadClientAppError")
LOG_TAIL_LINES = 20_000
FAILED = "fp8fl: run failed: "


@dataclass(frozen=True)
class ExpectedRun:
    """Where this run's folder will be: ``results_dir/name``, or a new folder there (no name)."""

    results_dir: Path
    name: str | None

    def finished_since(self, started: float) -> bool:
        """A ``summary.json`` written at or after ``started`` for this run."""
        folders = [self.results_dir / self.name] if self.name else self.results_dir.glob("*")
        for folder in folders:
            summary = folder / "summary.json"
            if summary.is_file() and summary.stat().st_mtime >= started - 1.0:
                return True
        return False


def expected_run(app_dir: Path, run_config_args: list[str]) -> ExpectedRun | None:
    """The run's folder from the app's defaults and ``--run-config`` overrides, or None when the
    run config is invalid (the ServerApp then fails with the same message)."""
    try:
        project = tomllib.loads((app_dir / "pyproject.toml").read_text())
        values = dict(project["tool"]["flwr"]["app"].get("config", {}))
        values.update(parse_config_args(run_config_args or None))
        config = RunConfig.from_mapping(values)
    except (OSError, KeyError, ValueError, ConfigError, tomllib.TOMLDecodeError):
        return None
    return ExpectedRun(
        resolve_results_dir(config.results_dir), config.resume or config.run_name or None
    )


def run_config_args(flwr_args: list[str]) -> list[str]:
    """The values given to ``--run-config`` / ``-c`` in ``flwr run`` arguments."""
    values = []
    for i, arg in enumerate(flwr_args):
        if arg in ("--run-config", "-c") and i + 1 < len(flwr_args):
            values.append(flwr_args[i + 1])
        elif arg.startswith("--run-config="):
            values.append(arg.split("=", 1)[1])
    return values


def failure_cause(lines: Iterable[str]) -> str | None:
    """``"<ServerApp|ClientApp|Flower> failed: <Exception>: <message>"`` from the first (root-cause)
    traceback in a log, or None when the log holds none."""
    lines = [ANSI.sub("", line.rstrip("\n")) for line in lines]
    for start, line in enumerate(lines):
        if line.strip() != "Traceback (most recent call last):":
            continue
        frames = []
        for follow in lines[start + 1 :]:
            if follow.startswith((" ", "\t")) or not follow:
                frames.append(follow)
                continue
            match = EXCEPTION.match(follow)
            if match is None:
                break
            name = match.group(1).rsplit(".", 1)[-1]
            message = (match.group(2) or "").strip()
            text = "\n".join(frames)
            side = (
                "ServerApp"
                if any(marker in text for marker in SERVER_FRAMES)
                else "ClientApp"
                if any(marker in text for marker in CLIENT_FRAMES)
                else "Flower"
            )
            return f"{side} failed: {name}" + (f": {message}" if message else "")
    return None


def reported_failure(log: Path) -> str | None:
    """The cause that ``run_watched`` printed into a run's log, if it printed one."""
    causes = [
        line[len(FAILED) :]
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(FAILED)
    ]
    return causes[-1] if causes else None


def run_watched(
    command: list[str],
    app_dir: Path,
    env: dict[str, str],
    cwd: Path,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Run ``command`` (a ``flwr run``), pass each line of its output to ``echo`` (default: print
    it), and return 0 only if the run finished."""
    echo = echo or sys.stdout.write
    expected = expected_run(app_dir, run_config_args(command))
    started = time.time()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            echo(line)
            tail.append(line)
    if expected is not None and expected.finished_since(started):
        return 0
    cause = failure_cause(tail) or (
        "invalid run config (see the log above)"
        if expected is None
        else f"no summary.json was written under {expected.results_dir}; flwr exited with "
        f"code {process.returncode}"
    )
    print(FAILED + cause, file=sys.stderr, flush=True)
    return process.returncode or 1
