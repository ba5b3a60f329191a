"""CIFAR-10/100: from torchvision's standard root, or (CIFAR-10) the project's JPEG archive.

Both become ``<split>_inputs.npy`` (uint8 N×3×32×32, CHW RGB), ``<split>_labels.npy`` (int64) and
``<split>_ids.npy`` in the cache, plus the training split's per-channel mean/std (of pixels/255)
for normalisation. A torchvision root holds the original lossless pixels, so it wins over the
JPEG archive (quality 75, lossy) when a root has both.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from fp8fl.data.cache import (
    DatasetCorruptError,
    Source,
    not_found,
    read_archive,
    split_file,
    write_meta,
)

JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
# torchvision's data set class and the folder it reads; torchvision itself is imported only to
# build a cache (it costs seconds of start-up in every client process otherwise)
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}
SPLITS = ("train", "test")
Split = tuple[torch.Tensor, np.ndarray, np.ndarray]  # inputs, labels, ids


def locate(name: str, root: Path) -> Source:
    """Find ``name`` under ``root`` (torchvision's root, its inner folder, or the JPEG archive's folder)."""
    cls_name, folder = TORCHVISION[name]
    if root.name == folder:
        root = root.parent
    if (root / folder).is_dir():
        files = tuple(sorted(p for p in (root / folder).iterdir() if p.is_file()))
        return Source(files, partial(build_torchvision, name, root))
    archive = root / JPEG_ARCHIVE
    if name == "cifar10" and archive.is_file():
        return Source((archive,), partial(build_jpeg, archive))
    layout = f"torchvision's {cls_name} root, i.e. <root>/{folder}/ with its batch files"
    searched = [root / folder]
    if name == "cifar10":
        layout += f", or <root>/{JPEG_ARCHIVE} (train|test/<class>/NNNN.jpg)"
        searched.append(archive)
    raise not_found(name, searched, layout)


def build_torchvision(name: str, root: Path, out: Path) -> None:
    """Convert torchvision's pickled batches (integrity-checked by torchvision) into the cache."""
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    splits: dict[str, Split] = {}
    for split in SPLITS:
        try:
            data = cls(str(root), train=split == "train", download=False)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
            raise DatasetCorruptError(
                f"{name}: torchvision root {root} failed its check ({e})"
            ) from e
        ids = np.array([f"{split}/{i:05d}" for i in range(len(data))])
        splits[split] = (
            torch.from_numpy(data.data).permute(0, 3, 1, 2),
            np.asarray(data.targets),
            ids,
        )
    write_images(out, name, f"torchvision root {root}", tuple(data.classes), splits)


def build_jpeg(archive: Path, out: Path) -> None:
    """Checksum, read and batch-decode the JPEG archive ``train|test/<class>/NNNN.jpg``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    members = read_archive("cifar10", archive)
    bad = [
        str(p)
        for p in members
        if len(p.parts) != 3 or p.parts[0] not in SPLITS or p.suffix != ".jpg"
    ]
    if bad or not members:
        layout = "train|test/<class>/NNNN.jpg"
        raise DatasetCorruptError(f"cifar10: {archive} is not laid out as {layout}: {bad[:3]}")
    classes = tuple(sorted({p.parts[1] for p in members}))
    splits: dict[str, Split] = {}
    for split in SPLITS:
        paths = sorted(p for p in members if p.parts[0] == split)
        blobs = [torch.frombuffer(bytearray(members[p]), dtype=torch.uint8) for p in paths]
        try:
            images = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))
        except RuntimeError as e:
            raise DatasetCorruptError(f"cifar10: a JPEG in {archive} does not decode ({e})") from e
        labels = np.array([classes.index(p.parts[1]) for p in paths])
        splits[split] = (images, labels, np.array([str(p) for p in paths]))
    write_images(out, "cifar10", f"JPEG archive {archive}", classes, splits)


def write_images(
    out: Path, name: str, source: str, classes: tuple[str, ...], splits: dict[str, Split]
) -> None:
    """Write each split's arrays and the meta data, with the training split's channel statistics."""
    out.mkdir(parents=True)
    for split, (images, labels, ids) in splits.items():
        np.save(split_file(out, split, "inputs"), images.contiguous().numpy())
        np.save(split_file(out, split, "labels"), labels.astype(np.int64))
        np.save(split_file(out, split, "ids"), ids)
    mean, std = channel_stats(splits["train"][0])
    write_meta(out, {"name": name, "source": source, "classes": classes, "mean": mean, "std": std})


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of ``images/255`` (uint8 N×C×H×W), from 256-bin histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        m = float((counts * values).sum() / counts.sum())
        mean.append(m)
        std.append(float((counts * (values - m) ** 2).sum() / counts.sum()) ** 0.5)
    return mean, std
