"""Data caches from scratch: build time, size on disk, and the time one client takes to load its data.

``python -m experiments.bench data [--cache DIR] [--root DIR] [--clients N] [--synthetic-speechcommands N]``

Builds into a fresh cache folder (a temporary one unless ``--cache`` is given), so every figure is
a cold build. "Client load" is what a client process does once the caches exist: open the memory
maps, look up its cached partition, and copy its rows (pixels or MFCCs) out of the shared arrays.
``--synthetic-speechcommands N`` also times a v2-shaped folder of N one-second noise clips (35
words, 2618 speakers, ~80/10/10 split lists) standing in for the real one, which is not here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import wave
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np

from fp8fl.data import data_root, features, load_dataset, partition

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def mib(paths: Iterable[Path]) -> float:
    """Total size of the files among ``paths``, in MiB."""
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def synthetic_speechcommands(folder: Path, clips: int) -> Path:
    """Write ``clips`` noise WAVs in the v2 layout, with per-speaker split lists like the real hashing."""
    rng = np.random.default_rng(0)
    words = [f"word{i:02d}" for i in range(35)]
    speakers = [f"{i:08x}" for i in rng.choice(2**32, 2618, replace=False)]
    splits = rng.choice(["train", "validation", "test"], len(speakers), p=[0.8, 0.1, 0.1])
    split_of = dict(zip(speakers, splits))
    lists: dict[str, list[str]] = {"validation": [], "test": []}
    for i in range(clips):
        word, speaker = words[i % 35], speakers[rng.integers(len(speakers))]
        rel = f"{word}/{speaker}_nohash_{i}.wav"
        (folder / word).mkdir(parents=True, exist_ok=True)
        with wave.open(str(folder / rel), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(rng.integers(-3000, 3000, 16000, dtype=np.int16).tobytes())
        if split_of[speaker] != "train":
            lists[split_of[speaker]].append(rel)
    (folder / "validation_list.txt").write_text("\n".join(lists["validation"]))
    (folder / "testing_list.txt").write_text("\n".join(lists["test"]))
    return folder


def bench(
    name: str, root: Path | None, scheme: str, clients: int | None, kinds: tuple[str, ...]
) -> None:
    """Print build time and size for ``name`` and its features, then one client's load time."""
    splits = {"speechcommands": ("train", "validation", "test")}.get(name, ("train", "test"))
    ds, built = timed(lambda: load_dataset(name, root, "train"))
    size = mib(ds.cache_dir.glob("*"))
    print(f"{name:15s} cache build {built:7.2f} s  {size:8.1f} MiB  ({len(ds)} train rows)")
    for kind in kinds:
        _, seconds = timed(
            lambda kind=kind: [features(load_dataset(name, root, s), kind) for s in splits]
        )
        size = mib((ds.cache_dir / "features").glob(f"*_{kind}-*.npy"))
        print(f"{'':15s} {kind} build {seconds:7.2f} s  {size:8.1f} MiB  (all splits)")
    count = clients or len(ds.speaker_names)
    _, first = timed(lambda: partition(ds, scheme, count, seed=0))

    def client_load() -> int:
        train = load_dataset(name, root, "train")
        rows = partition(train, scheme, count, seed=0)[count // 2]
        data = features(train, kinds[0])[rows] if kinds else train.subset(rows).inputs
        return len(data)

    rows, seconds = timed(client_load)
    print(f"{'':15s} {scheme} x{count}: first partitioning {first:.2f} s; ", end="")
    print(f"one client's load {1000 * seconds:.1f} ms ({rows} rows)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        "python -m experiments.bench data", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--cache", type=Path, help="cache folder to build into (default: a temporary one)"
    )
    parser.add_argument(
        "--root", type=Path, help="data root (default: $FP8FL_DATA or <repo>/../shared/data)"
    )
    parser.add_argument("--clients", type=int, default=100, help="clients for the iid partitions")
    parser.add_argument(
        "--synthetic-speechcommands",
        type=int,
        default=0,
        metavar="N",
        help="also time N synthetic v2 clips",
    )
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="fp8fl-bench-"))
    os.environ["FP8FL_CACHE"] = str(args.cache or scratch / "cache")
    try:
        root = data_root(args.root)
        print(f"cache: {os.environ['FP8FL_CACHE']}  (data: {root})")
        bench("cifar10", root, "iid", args.clients, ())
        bench("fsdd", root, "speaker", None, ("mfcc40", "mfcc64"))
        bench(
            "speechcommands",
            root / "speech-commands-v0.01-sample",
            "speaker",
            None,
            ("mfcc40", "mfcc64"),
        )
        if args.synthetic_speechcommands:
            clips = args.synthetic_speechcommands
            folder, seconds = timed(lambda: synthetic_speechcommands(scratch / "sc2", clips))
            print(f"(synthetic Speech Commands v2 folder written in {seconds:.0f} s)")
            bench("speechcommands", folder, "speaker", None, ("mfcc40", "mfcc64"))
    finally:
        shutil.rmtree(scratch)
