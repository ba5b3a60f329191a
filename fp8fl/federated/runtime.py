"""What a run trains, shared by clients and server: the model, the round's local update, seeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fp8fl.federated.config import RunConfig
from fp8fl.federated.training import LocalUpdate, cosine_lr
from fp8fl.models.architectures import build_model
from fp8fl.models.qat import QuantConfig, prepare_qat

__all__ = ["build_run_model", "derive_seed", "round_local_update", "seeded_generator"]


def build_run_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The run's model: FP32 for ``qat = none``, else its QAT form with the run's format."""
    model = build_model(config.model, num_classes)
    if config.qat == "none":
        return model
    return prepare_qat(model, QuantConfig(config.fmt, config.qat))


def round_local_update(config: RunConfig, server_round: int) -> LocalUpdate:
    """Local training of ``server_round``: SGD at a constant lr, or AdamW with cosine decay."""
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
    )


def derive_seed(seed: int, *parts: int | str) -> int:
    """An independent 63-bit seed for (seed, parts...), e.g. (seed, "client", round, partition)."""
    words = [seed] + [
        p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts
    ]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def seeded_generator(seed: int, *parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))
