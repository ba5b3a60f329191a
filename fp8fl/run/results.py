"""A run's results folder: ``config.json``, ``rounds.jsonl`` (one line per round), ``summary.json``.

Files are written so that a crash never leaves a half-written one: JSON documents go to a temporary
file that is then renamed over the target, and each round is one appended, flushed and fsynced
line. A new run never reuses an existing folder: nothing a user produced is overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import fp8fl
from fp8fl.run.config import RunConfig

__all__ = [
    "RunRecorder",
    "portable_path",
    "public_argv",
    "read_rounds",
    "resolve_results_dir",
    "safe_name",
    "write_json_atomic",
]

RESULTS_ROOT_ENV = "FP8FL_RESULTS_ROOT"
SECRET_FLAGS = ("--token",)
PACKAGES = (
    "fp8fl",
    "flwr",
    "torch",
    "torchvision",
    "torchaudio",
    "numpy",
    "numba",
    "flwr-datasets",
)


def public_argv(argv: list[str] | None = None) -> list[str]:
    """The process's command line with credential values (the run token Flower passes to
    ``flwr-simulation``) replaced by ``<redacted>`` and the program portable: relative to the
    results base (``portable_path``), or, for a program of the running Python environment outside
    it (a checkout run with another checkout's venv), its name. Fit to be stored in a results
    folder."""
    args = list(sys.argv if argv is None else argv)
    if args and Path(args[0]).is_absolute():
        args[0] = portable_path(args[0])
        if Path(args[0]).is_absolute() and Path(args[0]).parent == Path(sys.executable).parent:
            args[0] = Path(args[0]).name
    for i, arg in enumerate(args):
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS and eq:
            args[i] = f"{flag}=<redacted>"
        elif i > 0 and args[i - 1] in SECRET_FLAGS:
            args[i] = "<redacted>"
    return args


def safe_name(text: str) -> str:
    """``text`` as one file or folder name: runs of other characters than letters, digits and
    ``.+=_-`` (path separators, spaces) become ``_``."""
    return re.sub(r"[^A-Za-z0-9.+=_-]+", "_", text).strip("_")


def resolve_results_dir(results_dir: str) -> Path:
    """An absolute ``results-dir`` as given; a relative one under ``$FP8FL_RESULTS_ROOT``, else
    under the source checkout fp8fl runs from (an editable install), else the working directory.
    (The ServerApp runs in a process started by the SuperLink, whose working directory is not the
    one ``flwr run`` was typed in.)"""
    path = Path(results_dir).expanduser()
    return path if path.is_absolute() else results_base() / path


def results_base() -> Path:
    """What a relative ``results-dir`` is relative to (``resolve_results_dir``)."""
    if os.environ.get(RESULTS_ROOT_ENV):
        return Path(os.environ[RESULTS_ROOT_ENV]).expanduser()
    checkout = Path(fp8fl.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "fp8fl").is_dir():
        return checkout
    return Path.cwd()


def portable_path(path: Path | str) -> str:
    """``path`` relative to ``results_base()`` when it lies below it (so that results folders
    hold no absolute path of this machine), else as given; ``resolve_results_dir`` undoes it."""
    try:
        return Path(path).resolve().relative_to(results_base().resolve()).as_posix()
    except ValueError:
        return str(path)


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` via a temporary file and an atomic rename."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(document, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The round records of a run folder (a torn last line, from a crash, is ignored)."""
    path = run_dir / "rounds.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU: its model name, family and model numbers and widest vector extension (from
    ``/proc/cpuinfo``; else ``platform.processor()``). Float results of the same code and seed
    may differ in their last bits between CPUs (oneDNN picks its kernels by the CPU's
    extensions), so a run names the CPU of each stretch it ran on. A virtual machine may report
    only a generic model name, hence the numbers."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():  # the first processor
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    widest = next((f for f in ("amx_tile", "avx512f", "avx2") if f in flags), "no avx2")
    return (
        f"{fields['model name']} (family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')}, {widest})"
    )


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunRecorder:
    """Creates ``<results-dir>/<run-id>/`` and writes the run's three files; ``reopen`` continues
    a run's folder when it is resumed."""

    def __init__(self, config: RunConfig, run_id: str | None = None) -> None:
        root = resolve_results_dir(config.results_dir)
        root.mkdir(parents=True, exist_ok=True)
        base = run_id or config.run_name or default_run_id(config)
        self.run_dir = _fresh_folder(root, base)
        self.run_id = self.run_dir.name
        write_json_atomic(
            self.run_dir / "config.json",
            {
                "run-id": self.run_id,
                "config": config.to_mapping(),
                "seed": config.seed,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": public_argv(),
                "host": platform.node(),
                "cpu": cpu_model(),
                "versions": package_versions(),
            },
        )

    @classmethod
    def reopen(cls, config: RunConfig, run_id: str) -> RunRecorder:
        """The existing folder of run ``run_id``; notes the resumption in its ``config.json``."""
        run_dir = resolve_results_dir(config.results_dir) / run_id
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"cannot resume {run_id!r}: {run_dir} is not a run folder")
        recorder = cls.__new__(cls)
        recorder.run_dir, recorder.run_id = run_dir, run_id
        document = json.loads((run_dir / "config.json").read_text())
        document.setdefault("resumed", []).append(
            {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": public_argv(),
                "cpu": cpu_model(),
            }
        )
        write_json_atomic(run_dir / "config.json", document)
        return recorder

    def keep_rounds(self, last_round: int) -> list[dict[str, Any]]:
        """Drop records after ``last_round`` (a round lost in a crash); return those kept."""
        kept = [r for r in read_rounds(self.run_dir) if r["round"] <= last_round]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        handle, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".rounds.", suffix=".tmp")
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.run_dir / "rounds.jsonl")
        return kept

    def round(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / "summary.json", summary)


def default_run_id(config: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.task}-{config.model}-{config.split}-{config.method}-s{config.seed}-{stamp}"


def _fresh_folder(root: Path, base: str) -> Path:
    """``root/base``, or ``root/base-2``, ``-3``… if taken; created atomically (no races)."""
    for attempt in range(1, 10_000):
        candidate = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh results folder for {base!r} under {root}")
