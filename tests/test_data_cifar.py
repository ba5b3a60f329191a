"""CIFAR loaders on the real shared JPEG archive, torchvision-format roots, and their errors."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fp8fl.data import DatasetCorruptError, DatasetNotFoundError, data_root, load_dataset
from fp8fl.data.cifar import JPEG_ARCHIVE

SHARED = data_root()
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# (split, row, id, label, pixel sum): pinned from a first build and checked against PIL below.
PINNED = [
    ("train", 0, "train/airplane/0000.jpg", 0, 456420),
    ("train", 12345, "train/bird/2345.jpg", 2, 386041),
    ("train", 49999, "train/truck/4999.jpg", 9, 322105),
    ("test", 5000, "test/dog/0000.jpg", 5, 284731),
]
TOTALS = {"train": 18537712937, "test": 3732740007}


@pytest.mark.parametrize("split, count", [("train", 5000), ("test", 1000)])
def test_cifar10_counts_and_classes(split: str, count: int) -> None:
    ds = load_dataset("cifar10", split=split)
    assert ds.classes == CLASSES
    assert ds.inputs.shape == (10 * count, 3, 32, 32) and ds.inputs.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert ds.labels.bincount().tolist() == [count] * 10
    assert ds.speakers is None and ds.speaker_names is None
    assert all(ds.ids[i].split("/")[1] == CLASSES[int(label)] for i, label in enumerate(ds.labels))


def test_cifar10_pinned_pixels_match_pil() -> None:
    with tarfile.open(SHARED / JPEG_ARCHIVE) as tar:
        for split, row, name, label, total in PINNED:
            ds = load_dataset("cifar10", split=split)
            assert (ds.ids[row], int(ds.labels[row]), int(ds.inputs[row].sum())) == (
                name,
                label,
                total,
            )
            pil = np.array(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("RGB"))
            assert torch.equal(ds.inputs[row], torch.from_numpy(pil).permute(2, 0, 1))
    for split, total in TOTALS.items():
        assert int(load_dataset("cifar10", split=split).inputs.sum(dtype=torch.int64)) == total


def test_cifar10_rebuild_is_identical_and_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = load_dataset("cifar10")
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path))
    rebuilt = load_dataset("cifar10")
    assert rebuilt.cache_dir.parent == tmp_path
    assert torch.equal(rebuilt.labels, shared.labels) and torch.equal(rebuilt.inputs, shared.inputs)
    assert rebuilt.mean == shared.mean and rebuilt.std == shared.std
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_cifar10_statistics_and_memory_map() -> None:
    ds = load_dataset("cifar10")
    assert np.allclose(ds.mean, [0.491, 0.482, 0.447], atol=2e-3)  # the JPEG copy's, near the usual
    assert np.allclose(ds.std, [0.245, 0.243, 0.261], atol=2e-3)
    assert np.allclose(
        ds.mean, ds.inputs.sum(dim=(0, 2, 3), dtype=torch.float64) / (len(ds) * 1024 * 255)
    )
    x = (
        ds.inputs[
            torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:5000]
        ].double()
        / 255
    )
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3)), atol=2e-3)
    before = ds.inputs[0, 0, 0, 0].item()
    ds.inputs[0, 0, 0, 0] = (
        before + 1
    )  # copy-on-write: private to this process, the cache is untouched
    assert load_dataset("cifar10").inputs[0, 0, 0, 0].item() == before
    client = ds.subset(np.array([3, 1, 4]))
    assert (
        torch.equal(client.inputs[1], ds.inputs[1])
        and client.ids.tolist() == ds.ids[[3, 1, 4]].tolist()
    )


def write_torchvision_root(root: Path, fine: bool) -> tuple[np.ndarray, list[int]]:
    """A small root in torchvision's pickle format (CIFAR-100's names and keys when ``fine``)."""
    rng = np.random.default_rng(0)
    if fine:
        folder, train, test, meta, labels_key, names_key = (
            "cifar-100-python",
            ["train"],
            "test",
            "meta",
            "fine_labels",
            "fine_label_names",
        )
    else:
        folder, test, meta, labels_key, names_key = (
            "cifar-10-batches-py",
            "test_batch",
            "batches.meta",
            "labels",
            "label_names",
        )
        train = [f"data_batch_{i}" for i in range(1, 6)]
    (root / folder).mkdir(parents=True)
    data = rng.integers(0, 256, (6 * len(train), 3072), dtype=np.uint8)
    labels = rng.integers(0, 3, len(data)).tolist()
    for i, name in enumerate([*train, test]):
        rows = slice(6 * i, 6 * i + 6) if name != test else slice(0, 6)
        (root / folder / name).write_bytes(
            pickle.dumps({"data": data[rows], labels_key: labels[rows]})
        )
    (root / folder / meta).write_bytes(pickle.dumps({names_key: ["c0", "c1", "c2"]}))
    return data, labels


@pytest.mark.parametrize("name, fine", [("cifar10", False), ("cifar100", True)])
def test_torchvision_root(
    name: str, fine: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    data, labels = write_torchvision_root(tmp_path / "root", fine)
    with pytest.raises(
        DatasetCorruptError, match="failed its check"
    ):  # torchvision's md5s reject it
        load_dataset(name, root=tmp_path / "root")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    ds = load_dataset(name, root=tmp_path / "root")
    assert ds.classes == ("c0", "c1", "c2")
    assert torch.equal(ds.inputs, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert ds.labels.tolist() == labels
    assert len(load_dataset(name, root=tmp_path / "root", split="test")) == 6


def test_missing_root_names_everything(tmp_path: Path) -> None:
    for name in ("cifar10", "cifar100"):
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset(name, root=tmp_path / "nowhere")
        message = str(err.value)
        assert name in message and str(tmp_path / "nowhere") in message
        assert "cifar-1" in message and "root=" in message and "FP8FL_DATA" in message


def test_default_root_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP8FL_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="splits"):
        load_dataset("cifar10", split="validation")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist")


def test_wrong_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "root").mkdir()
    with tarfile.open(tmp_path / "root" / JPEG_ARCHIVE, "w:gz") as tar:
        info = tarfile.TarInfo("images/0000.jpg")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DatasetCorruptError, match=r"train\|test/<class>/NNNN\.jpg"):
        load_dataset("cifar10", root=tmp_path / "root")
    assert all(p.name.endswith(".lock") for p in (tmp_path / "cache").iterdir())
