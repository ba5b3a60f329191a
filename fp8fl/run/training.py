"""Local training (Wang et al. 2024, arXiv:2407.02610, Alg. 1 LOCALUPDATE) and evaluation of a
model on task data.

The optimizer is created afresh for every call, so its state (momentum, Adam moments) is reset
every round (§5.2). α and β are learned with the weights but exempt from weight decay: decay would
pull every clipping range towards zero for no reason. After the last step every α/β is kept
positive (``qat.clamp_ranges_``), since they travel on the wire as clipping values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fp8fl.data.tasks import TaskData
from fp8fl.federated.seams import LocalOptimizer, Quantizer, TrainsItself
from fp8fl.federated.wire import StateLayout
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import QATModule, clamp_ranges_, range_parameter_names
from fp8fl.run.components import build_quantizer
from fp8fl.run.config import RunConfig

__all__ = [
    "EvaluationSet",
    "LocalUpdate",
    "build_run_model",
    "cosine_lr",
    "deterministic_rounding",
    "evaluate",
    "resolve_device",
    "round_local_update",
    "run_layout",
]


Phase = Callable[[str], AbstractContextManager[object]]
"""A context manager per named part of a training step (a profiler's timer)."""


def _untimed(name: str) -> AbstractContextManager[object]:
    return nullcontext()


@dataclass(frozen=True)
class LocalUpdate:
    """One client's training for a round: E epochs over its data, or U steps if ``steps > 0``."""

    optimizer: str  # "sgd", "adam" or "adamw"
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    steps: int = 0
    quantizer: Quantizer | None = None  # one that ``TrainsItself`` replaces the optimizer

    def num_steps(self, num_examples: int) -> int:
        if self.steps > 0:
            return self.steps
        return self.epochs * math.ceil(num_examples / self.batch_size)

    def run(
        self,
        model: nn.Module,
        data: TaskData,
        indices: np.ndarray,
        generator: torch.Generator,
        device: torch.device,
        phase: Phase = _untimed,
    ) -> dict[str, float]:
        """Train ``model`` in place on rows ``indices`` of ``data``; returns loss statistics.
        ``phase(name)`` wraps each part of a step (batch, forward, backward, optimizer): the
        round profile (``experiments.bench round``) times them there."""
        if len(indices) == 0:
            raise ValueError("cannot train on an empty partition")
        model.train()
        optimizer = self._optimizer(model)
        rows = torch.as_tensor(indices, dtype=torch.long)
        total_steps = self.num_steps(len(rows))
        losses: list[float] = []
        order = torch.empty(0, dtype=torch.long)
        while len(losses) < total_steps:
            with phase("batch"):
                if len(order) == 0:  # a new epoch: a fresh permutation
                    order = rows[torch.randperm(len(rows), generator=generator)]
                batch, order = order[: self.batch_size], order[self.batch_size :]
                x, y = data.batch(batch, True, generator, device)
            with phase("forward"):
                loss = F.cross_entropy(model(x), y)
            with phase("backward"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"training loss became {losses[-1]} at local step {len(losses)}"
                )
        clamp_ranges_(model)
        return {
            "train-loss": float(np.mean(losses)),
            "train-loss-last": losses[-1],
            "local-steps": float(total_steps),
        }

    def _optimizer(self, model: nn.Module) -> LocalOptimizer:
        if isinstance(self.quantizer, TrainsItself):
            return self.quantizer.local_optimizer(model, self.lr, self.weight_decay)
        ranges = set(range_parameter_names(model))
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if n not in ranges], "weight_decay": self.weight_decay},
            {"params": [p for n, p in named if n in ranges], "weight_decay": 0.0},
        ]
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr)
        if self.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        raise ValueError(f"unknown optimizer {self.optimizer!r}")


def build_run_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The run's model in the training form of its quantizer (e.g. QAT layers in its format)."""
    return build_quantizer(config).prepare(build_model(config.model, num_classes))


def run_layout(config: RunConfig, model: nn.Module) -> StateLayout:
    """The message layout of the run's model: what its quantizer has the codec carry, and
    whether the lossless stage follows the codec."""
    quantized = build_quantizer(config).quantized_names(model)
    return StateLayout.from_model(model, quantized, bool(config.lossless))


def round_local_update(config: RunConfig, server_round: int) -> LocalUpdate:
    """Local training of ``server_round``: SGD or Adam at a constant lr, or AdamW with cosine decay
    (a quantizer that ``TrainsItself`` takes the lr and weight decay for its own optimizer)."""
    lr = config.lr
    if config.optimizer == "adamw":
        lr = cosine_lr(config.lr, server_round, config.num_server_rounds)
    return LocalUpdate(
        config.optimizer,
        lr,
        config.weight_decay,
        config.batch_size,
        config.local_epochs,
        config.local_steps,
        build_quantizer(config),
    )


def cosine_lr(base_lr: float, server_round: int, num_rounds: int) -> float:
    """Cosine decay over the rounds: base_lr at round 1, approaching 0 at the last round."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / max(num_rounds, 1)))


@contextmanager
def deterministic_rounding(model: nn.Module) -> Iterator[None]:
    """Evaluate a stochastic-QAT model with nearest rounding (a deterministic forward)."""
    modules = [
        m
        for m in model.modules()
        if isinstance(m, QATModule) and m.qat_config.rounding == "stochastic"
    ]
    saved = [m.qat_config for m in modules]
    for m in modules:
        m.qat_config = replace(m.qat_config, rounding="nearest")
    try:
        yield
    finally:
        for m, config in zip(modules, saved):
            m.qat_config = config


@dataclass(frozen=True)
class EvaluationSet:
    """Rows of a split prepared once as model input, in batches. The server evaluates the same
    rows every round, so they are decoded, normalised and laid out once, not every round."""

    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @classmethod
    def prepare(
        cls,
        data: TaskData,
        batch_size: int,
        device: torch.device,
        indices: np.ndarray | None = None,
    ) -> EvaluationSet:
        """Rows ``indices`` of ``data`` (all rows if None) in batches of ``batch_size``."""
        rows = torch.arange(len(data)) if indices is None else torch.as_tensor(indices)
        return cls(
            tuple(
                data.batch(rows[start : start + batch_size], False, None, device)
                for start in range(0, len(rows), batch_size)
            )
        )

    def __len__(self) -> int:
        return sum(len(y) for _, y in self.batches)


@torch.inference_mode()
def evaluate(model: nn.Module, evaluation: EvaluationSet) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``evaluation``."""
    model.eval()
    loss_sum = correct = 0.0
    with deterministic_rounding(model):
        for x, y in evaluation.batches:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
    return loss_sum / len(evaluation), correct / len(evaluation)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
