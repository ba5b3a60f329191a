"""Federated partitions of a split as index arrays into its shared arrays, via flwr-datasets.

The partitioners run on a local ``datasets.Dataset`` of labels and speakers only (no hub, no
inputs). For ``iid`` and ``dirichlet`` its rows are first permuted with ``seed``, since
``IidPartitioner`` cuts contiguous shards and ``DirichletPartitioner`` splits each class in row
order; an ``idx`` column maps partition rows back to ``ds`` rows. ``dirichlet-balanced`` is the
split of Li et al.'s LPT-FL code (NeurIPS 2024), which flwr-datasets does not offer (see
``balanced_dirichlet``). Each partition is sorted (sequential reads from the memory map; clients
shuffle their own batches). The result is cached
beside the data set, keyed by the labels' and speakers' content and the arguments, so every
client process after the first loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np

from fp8fl.data.cache import build_once
from fp8fl.data.dataset import Dataset

DIRICHLET_SCHEMES = ("dirichlet", "dirichlet-balanced")  # the schemes that read dirichlet_alpha
LABEL_SCHEMES = ("iid", *DIRICHLET_SCHEMES)  # any labelled data set
SCHEMES = (*LABEL_SCHEMES, "speaker")  # speaker: data sets with speaker ids
SINKHORN_SWEEPS = 1000  # as in the LPT-FL code


def partition(
    ds: Dataset,
    scheme: str,
    num_partitions: int,
    seed: int = 0,
    dirichlet_alpha: float = 0.3,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Split ``ds`` into ``num_partitions`` sorted int64 index arrays; every row lands in exactly one.

    ``iid``: equal random shards. ``dirichlet``: per-class proportions drawn from Dir(alpha),
    redrawn (flwr-datasets warns each time, and gives up after 10 redraws) until every partition
    has at least ``min_partition_size`` samples, so none is empty. ``dirichlet-balanced``: label
    skew from Dir(alpha) with partitions of about equal size (``balanced_dirichlet``).
    ``speaker``: partition k holds the clips of ``ds.speaker_names[k]``; ``num_partitions`` must
    equal the number of speakers (``seed`` is unused). Same arguments, same result.
    """
    check(ds, scheme, num_partitions)
    columns = [ds.labels] if ds.speakers is None else [ds.labels, ds.speakers]
    content = hashlib.sha256(b"".join(c.numpy().tobytes() for c in columns)).hexdigest()[:12]
    name = f"{ds.split}-{content}-{scheme}-n{num_partitions}"
    if scheme != "speaker":
        name += f"-s{seed}"
    if scheme == "dirichlet":
        name += f"-a{dirichlet_alpha}-m{min_partition_size}"
    if scheme == "dirichlet-balanced":
        name += f"-a{dirichlet_alpha}"
    folder = ds.cache_dir / "partitions" / f"{name}-flwr_datasets{version('flwr-datasets')}"
    args = (ds, scheme, num_partitions, seed, dirichlet_alpha, min_partition_size)
    build_once(folder, lambda tmp: save(tmp, compute(*args)))
    indices, offsets = np.load(folder / "indices.npy"), np.load(folder / "offsets.npy")
    return np.split(indices, offsets[1:-1])


def check(ds: Dataset, scheme: str, num_partitions: int) -> None:
    """Reject an unknown scheme, a partition count the split cannot fill, or a speaker count mismatch."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose from {SCHEMES}")
    if not 0 < num_partitions <= len(ds):
        raise ValueError(
            f"num_partitions must be in 1..{len(ds)} for {ds.name} {ds.split}, got {num_partitions}"
        )
    if scheme == "speaker" and ds.speaker_names is None:
        raise ValueError(f"{ds.name} has no speaker ids; use 'iid' or 'dirichlet'")
    if scheme == "speaker" and num_partitions != len(ds.speaker_names):
        raise ValueError(
            f"speaker partitions: {ds.name} {ds.split} has {len(ds.speaker_names)} speakers, "
            f"so num_partitions must be {len(ds.speaker_names)}, not {num_partitions}"
        )


def compute(
    ds: Dataset,
    scheme: str,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float,
    min_partition_size: int,
) -> list[np.ndarray]:
    """Run the partitioner for ``scheme`` (flwr-datasets', or ``balanced_dirichlet``) and map its
    rows back to ``ds`` rows. flwr-datasets (with pandas and Hugging Face datasets) is imported
    only here, on a cache miss: it costs seconds of start-up in every client process otherwise."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        Partitioner,
    )

    if scheme == "dirichlet-balanced":
        return balanced_dirichlet(ds.labels.numpy(), num_partitions, dirichlet_alpha, seed)
    if scheme == "speaker":
        order = np.arange(len(ds))
        partitioner: Partitioner = NaturalIdPartitioner(partition_by="speaker")
    else:
        # A stream of its own, so the row order is independent of the partitioner's seed-``seed`` draws.
        order = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]).permutation(len(ds))
        if scheme == "iid":
            partitioner = IidPartitioner(num_partitions)
        else:
            partitioner = DirichletPartitioner(
                num_partitions,
                "label",
                dirichlet_alpha,
                min_partition_size=min_partition_size,
                seed=seed,
            )
    columns = {"idx": order, "label": ds.labels.numpy()[order]}
    if ds.speakers is not None:
        columns["speaker"] = ds.speakers.numpy()[order]
    partitioner.dataset = HFDataset.from_dict(columns)
    parts = (
        partitioner.load_partition(k).with_format("arrow")["idx"] for k in range(num_partitions)
    )
    return [np.sort(part.to_numpy()) for part in parts]


def balanced_dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """The Dirichlet split of Li et al.'s LPT-FL code (NeurIPS 2024): each class's shares over the
    partitions are drawn from Dir(alpha); the class × partition matrix is then normalised per
    partition and per class in turn (Sinkhorn sweeps, ending per class), so that every partition
    gets about the same number of samples while the label skew stays; each class's rows, shuffled,
    are cut in its shares. Unlike flwr-datasets' DirichletPartitioner, it never needs a redraw: at
    alpha = 0.04 with 80 partitions that one fails (also with ``self_balancing``)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    shares = rng.dirichlet(np.full(num_partitions, alpha), len(classes))
    for _ in range(SINKHORN_SWEEPS):
        shares /= shares.sum(axis=0)
        shares /= shares.sum(axis=1, keepdims=True)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for c, fractions in zip(classes, shares):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(fractions)[:-1] * len(rows)).astype(np.int64)
        for part, chunk in zip(parts, np.split(rows, cuts)):
            part.append(chunk)
    result = [np.sort(np.concatenate(p)) for p in parts]
    if empty := [k for k, p in enumerate(result) if len(p) == 0]:
        raise ValueError(
            f"dirichlet-balanced split left partition(s) {empty[:5]} empty: "
            f"{len(labels)} rows are too few for {num_partitions} partitions"
        )
    return result


def save(folder: Path, parts: list[np.ndarray]) -> None:
    """Store the partitions as one concatenated index array plus offsets."""
    folder.mkdir(parents=True)
    np.save(folder / "indices.npy", np.concatenate(parts).astype(np.int64))
    np.save(folder / "offsets.npy", np.cumsum([0] + [len(p) for p in parts]))
