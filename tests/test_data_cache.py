"""Atomic, once-only cache builds across processes; cache keys; checksums; damaged caches."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from fp8fl.data import DatasetCorruptError, data_root, load_dataset
from fp8fl.data.cache import build_once, source_key, verify_checksum


def slow_build(log: Path, tmp: Path) -> None:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    tmp.mkdir()
    time.sleep(0.3)
    (tmp / "done").write_text("ok")


def build_in_child(final: Path, log: Path) -> None:
    build_once(final, lambda tmp: slow_build(log, tmp))


def test_concurrent_builds_run_once(tmp_path: Path) -> None:
    final, log = tmp_path / "cache" / "thing", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=build_in_child, args=(final, log)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(log.read_text().split()) == 1 and (final / "done").read_text() == "ok"


def test_failed_build_leaves_nothing_and_stale_parts_are_dropped(tmp_path: Path) -> None:
    final = tmp_path / "thing"

    def crash(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "half").write_text("")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_once(final, crash)
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [".thing.lock"]
    (tmp_path / ".thing.tmp-99999").mkdir()  # left by a killed process
    build_once(final, lambda tmp: tmp.mkdir())
    assert final.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]


def test_source_key_follows_content_identity(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"a")
    key = source_key([path])
    assert source_key([path]) == key
    path.write_bytes(b"ab")
    assert source_key([path]) != key


def test_verify_checksum(tmp_path: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"data")
    verify_checksum("x", archive)  # no SHA256SUMS beside it: nothing to check
    sha = "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
    (tmp_path / "SHA256SUMS").write_text(f"{sha}  x.tar.gz\n{'0' * 64}  other.tar.gz\n")
    verify_checksum("x", archive)
    archive.write_bytes(b"datb")
    with pytest.raises(DatasetCorruptError, match="SHA-256"):
        verify_checksum("x", archive)


def test_damaged_cache_says_how_to_recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (data_root() / "fsdd.tar.gz").is_file():
        pytest.fail("no fsdd.tar.gz in the shared data folder")
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path))
    ds = load_dataset("fsdd", split="test")
    (ds.cache_dir / "meta.json").unlink()
    with pytest.raises(DatasetCorruptError, match="delete that folder"):
        load_dataset("fsdd", split="test")


@pytest.mark.parametrize(
    "name, archive", [("cifar10", "cifar10-jpeg.tar.gz"), ("fsdd", "fsdd.tar.gz")]
)
def test_truncated_archives(
    name: str, archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (data_root() / archive).is_file():
        pytest.fail(f"no {archive} in the shared data folder")
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    root.mkdir()
    data = (data_root() / archive).read_bytes()
    (root / archive).write_bytes(data[: len(data) - 1000])
    with pytest.raises(
        DatasetCorruptError, match="corrupt or truncated"
    ):  # no SHA256SUMS: gzip notices
        load_dataset(name, root=root)
    shutil.copy(data_root() / "SHA256SUMS", root)
    with pytest.raises(DatasetCorruptError, match="SHA-256"):
        load_dataset(name, root=root)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
