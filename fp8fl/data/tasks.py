"""The learning tasks of Wang et al. 2024, arXiv:2407.02610 §5.1: which data set, models and client
splits each one has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import torch

from fp8fl.data.dataset import load_dataset
from fp8fl.data.features import features, prepare_images, prepare_mfcc
from fp8fl.data.partitioners import LABEL_SCHEMES, SCHEMES

__all__ = ["FEATURE_KIND", "TASKS", "TaskData", "TaskSpec", "load_task_data", "task_spec"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str
    models: tuple[str, ...]
    splits: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cifar10", "cifar10", ("lenet", "resnet18", "convnet"), LABEL_SCHEMES),
        TaskSpec("cifar100", "cifar100", ("lenet", "resnet18", "convnet"), LABEL_SCHEMES),
        TaskSpec("speechcommands", "speechcommands", ("matchboxnet", "kwt1"), SCHEMES),
        TaskSpec("fsdd", "fsdd", ("matchboxnet", "kwt1"), SCHEMES),
    )
}

FEATURE_KIND = {"kwt1": "mfcc40", "matchboxnet": "mfcc64"}
"""MFCC features each audio model reads (see ``fp8fl.data``); image models read pixels."""


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class TaskData:
    """One split of a task as model inputs: memory-mapped rows, labels, and batch preparation."""

    inputs: torch.Tensor  # uint8 images or float32 MFCCs, memory-mapped and shared by processes
    labels: torch.Tensor
    num_classes: int
    prepare: Callable[[torch.Tensor, bool, torch.Generator | None], torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self,
        indices: torch.Tensor,
        train: bool,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input and labels of rows ``indices`` (augmented when ``train``)."""
        x = self.prepare(self.inputs[indices], train, generator)
        return x.to(device, non_blocking=True), self.labels[indices].to(device, non_blocking=True)


@lru_cache(maxsize=8)
def load_task_data(task: str, model: str, split: str, root: str | None = None) -> TaskData:
    """``split`` of ``task`` as read by ``model``; cached per process (arrays are memory maps)."""
    ds = load_dataset(task_spec(task).dataset, root or None, split)
    if model in FEATURE_KIND:
        kind = FEATURE_KIND[model]
        inputs = features(ds, kind)
        prepare = partial(_prepare_mfcc, kind=kind)
    else:
        if ds.split == "train":
            mean, std = ds.mean, ds.std
        else:  # normalise with the training statistics, as every client does
            train = load_dataset(task_spec(task).dataset, root or None, "train")
            mean, std = train.mean, train.std
        inputs = ds.inputs
        prepare = partial(_prepare_images, mean=mean, std=std)
    return TaskData(inputs, ds.labels, len(ds.classes), prepare)


def _prepare_mfcc(
    x: torch.Tensor, train: bool, generator: torch.Generator | None, kind: str
) -> torch.Tensor:
    return prepare_mfcc(x, kind, train, generator)


def _prepare_images(
    x: torch.Tensor,
    train: bool,
    generator: torch.Generator | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    return prepare_images(x, mean, std, train, generator)
