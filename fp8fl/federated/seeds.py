"""Seeds for every random draw of a run, derived from (seed, purpose, round, partition, ...), so
that one seed fixes the whole run whatever process or thread makes a draw."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "seeded_generator"]


def derive_seed(seed: int, *parts: int | str) -> int:
    """An independent 63-bit seed for (seed, parts...), e.g. (seed, "client", round, partition)."""
    words = [seed] + [
        p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts
    ]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def seeded_generator(seed: int, *parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))
