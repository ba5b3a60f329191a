"""Where data comes from and where it is cached; atomic cache builds; memory-mapped arrays.

Sources are read in place and never modified. Each data set is decoded once into
``$FP8FL_CACHE/<name>-<key>/`` (default ``~/.cache/fp8fl``), where ``key`` hashes the source's
paths, sizes and mtimes, so a changed source gets a fresh cache. A build writes into a temporary
folder under a file lock and is renamed into place only when complete, so a half-built cache is
never read. Arrays are ``.npy`` files opened with ``mmap_mode="c"``: every process that loads them
shares the same page-cache pages (2112 clients do not mean 2112 copies), and writes stay private.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

DATA_ENV = "FP8FL_DATA"
CACHE_ENV = "FP8FL_CACHE"
FORMAT_VERSION = 1  # bump when the cached layout or decoding changes
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Source:
    """A located data set: the paths whose identity keys its cache, and how to build that cache."""

    key_paths: tuple[Path, ...]
    build: Callable[[Path], None]


class DatasetNotFoundError(FileNotFoundError):
    """The data set is not where it was looked for (the message says where and how to fix it)."""


class DatasetCorruptError(RuntimeError):
    """A source archive or file is corrupt, truncated, or fails its checksum."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$FP8FL_DATA``, else ``<repo>/../shared/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def cache_root() -> Path:
    """``$FP8FL_CACHE`` if set, else ``~/.cache/fp8fl``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fp8fl"


def not_found(name: str, searched: Iterable[Path], layout: str) -> DatasetNotFoundError:
    """The error for a missing data set: what, where it was looked for, what belongs there, how to fix."""
    places = ", ".join(str(p) for p in searched)
    return DatasetNotFoundError(
        f"{name}: data set not found; searched {places}. Expected layout: {layout}. "
        f"Pass load_dataset({name!r}, root=...) or set {DATA_ENV} to the folder that holds it "
        f"(the decoded cache goes to ${CACHE_ENV}, default ~/.cache/fp8fl)."
    )


def sha256sum(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(name: str, archive: Path) -> None:
    """Check ``archive`` against the ``SHA256SUMS`` beside it when that file lists it."""
    sums = archive.parent / "SHA256SUMS"
    if not sums.is_file():
        return
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, file_name = line.split(maxsplit=1)
            listed[file_name.lstrip("*")] = digest
    expected = listed.get(archive.name)
    if expected is not None and sha256sum(archive) != expected:
        raise DatasetCorruptError(
            f"{name}: {archive} does not match its SHA-256 in {sums} (truncated or corrupt copy); "
            "copy the archive again."
        )


def read_archive(name: str, archive: Path) -> dict[PurePosixPath, bytes]:
    """Verify ``archive`` against ``SHA256SUMS`` (if listed) and read its files into memory."""
    verify_checksum(name, archive)
    members: dict[PurePosixPath, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    members[PurePosixPath(member.name)] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        message = f"{name}: archive {archive} is corrupt or truncated ({e}); copy it again"
        raise DatasetCorruptError(message) from e
    return members


def source_key(paths: Iterable[Path]) -> str:
    """A short hash of the cache format and each path's resolved name, size and mtime."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for path in paths:
        st = path.stat()
        digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Make ``final`` (a file or folder) by ``build(tmp)`` then an atomic rename, once across processes.

    Concurrent callers wait on a lock and reuse the first result; leftovers of a crashed build are
    removed first. ``final`` exists only when complete.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            build(tmp)
            os.replace(tmp, final)
        except BaseException:
            if tmp.exists():
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            raise
    return final


def new_array(path: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """A writable ``.npy`` memmap to fill in place (no full copy held in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def load_array(path: Path) -> torch.Tensor:
    """A tensor over the memory-mapped ``.npy`` (copy-on-write: shared pages, private writes)."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def split_file(folder: Path, split: str, field: str) -> Path:
    """Where a split's array lives in a cache folder, e.g. ``train_inputs.npy``."""
    return folder / f"{split}_{field}.npy"


def write_meta(folder: Path, meta: dict) -> None:
    """Write ``meta.json`` (classes, per-split speaker names, image statistics, source)."""
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def read_meta(folder: Path) -> dict:
    """Read ``meta.json``; a cache folder without it was damaged after its build."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetCorruptError(
            f"cache {folder} is damaged ({e}); delete that folder to rebuild it"
        ) from e
