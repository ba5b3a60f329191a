"""``load_dataset``: locate a data set, build its cache once, and return memory-mapped arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fp8fl.data.cache import (
    Source,
    build_once,
    cache_root,
    data_root,
    load_array,
    read_meta,
    source_key,
    split_file,
)
from fp8fl.data.cifar import SPLITS as CIFAR_SPLITS
from fp8fl.data.cifar import locate as locate_cifar
from fp8fl.data.speech import (
    FSDD_SPLITS,
    SPEECHCOMMANDS_SPLITS,
    locate_fsdd,
    locate_speechcommands,
)

LOCATORS: dict[str, tuple[Callable[[Path], Source], tuple[str, ...]]] = {
    "cifar10": (lambda root: locate_cifar("cifar10", root), CIFAR_SPLITS),
    "cifar100": (lambda root: locate_cifar("cifar100", root), CIFAR_SPLITS),
    "speechcommands": (locate_speechcommands, SPEECHCOMMANDS_SPLITS),
    "fsdd": (locate_fsdd, FSDD_SPLITS),
}


@dataclass(frozen=True)
class Dataset:
    """One split of a data set; arrays are memory-mapped from the cache and shared across processes.

    ``inputs``: uint8 N×3×32×32 (CIFAR) or float32 N×16000 waveforms in [-1, 1] at 16 kHz (audio).
    ``speakers``/``speaker_names``: per-split speaker index and its name (audio only, else None).
    ``mean``/``std``: the training split's per-channel statistics of pixels/255 (CIFAR only; the
    test split carries them too). ``rows``: the cached split's rows held here (None: all of them).
    """

    name: str
    split: str
    inputs: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    ids: np.ndarray
    cache_dir: Path
    speakers: torch.Tensor | None = None
    speaker_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray | torch.Tensor) -> Dataset:
        """An in-memory copy of the rows ``indices`` (e.g. one client's partition)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        speakers = None if self.speakers is None else self.speakers[idx]
        rows = idx.numpy() if self.rows is None else self.rows[idx.numpy()]
        copied = {
            "inputs": self.inputs[idx],
            "labels": self.labels[idx],
            "ids": self.ids[idx.numpy()],
        }
        return replace(self, **copied, speakers=speakers, rows=rows)


def load_dataset(name: str, root: str | Path | None = None, split: str = "train") -> Dataset:
    """Load ``split`` of ``name`` (cifar10, cifar100, speechcommands, fsdd), building its cache on first use.

    ``root`` defaults to ``$FP8FL_DATA`` or ``<repo>/../shared/data``; the cache lives under
    ``$FP8FL_CACHE`` (default ``~/.cache/fp8fl``).
    """
    if name not in LOCATORS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(LOCATORS)}")
    locate, splits = LOCATORS[name]
    if split not in splits:
        raise ValueError(f"{name} has splits {splits}, not {split!r}")
    source = locate(data_root(root))
    folder = build_once(cache_root() / f"{name}-{source_key(source.key_paths)}", source.build)
    meta = read_meta(folder)
    speaker_names = meta.get("speaker_names", {}).get(split)
    return Dataset(
        name=name,
        split=split,
        inputs=load_array(split_file(folder, split, "inputs")),
        labels=load_array(split_file(folder, split, "labels")),
        classes=tuple(meta["classes"]),
        ids=np.load(split_file(folder, split, "ids"), mmap_mode="r"),
        cache_dir=folder,
        speakers=None
        if speaker_names is None
        else load_array(split_file(folder, split, "speakers")),
        speaker_names=None if speaker_names is None else tuple(speaker_names),
        mean=tuple(meta["mean"]) if "mean" in meta else None,
        std=tuple(meta["std"]) if "std" in meta else None,
    )
