"""Cached MFCC features (real FSDD and Speech Commands sample) and batch-wise augmentation."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from fp8fl.data import data_root, features, load_dataset, mfcc, prepare_images, prepare_mfcc
from fp8fl.data.features import crop_and_flip

SHAPES = {"mfcc40": (98, 40), "mfcc64": (64, 101)}


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_mfcc_cached_once_and_row_aligned(kind: str) -> None:
    ds = load_dataset("fsdd", split="test")
    first = features(ds, kind)
    assert first.shape == (len(ds), *SHAPES[kind]) and first.dtype == torch.float32
    files = sorted((ds.cache_dir / "features").glob(f"test_{kind}-*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = features(ds, kind)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(again, first)
    rows = [0, 137, 299]
    assert torch.equal(
        first[rows], mfcc(ds.inputs[rows], kind)
    )  # per clip, independent of the batch
    assert torch.equal(mfcc(ds.inputs[:1], kind)[0], first[0])
    client = ds.subset(torch.tensor([299, 0, 137])).subset([1, 2])  # rows 0 and 137
    assert torch.equal(features(client, kind), first[[0, 137]])


def test_mfcc_on_speech_commands_sample_and_errors() -> None:
    sample = data_root() / "speech-commands-v0.01-sample"
    if sample.is_dir():
        validation = load_dataset("speechcommands", root=sample, split="validation")
        assert features(validation, "mfcc40").shape == (44, 98, 40)
    if (data_root() / "cifar10-jpeg.tar.gz").is_file():
        with pytest.raises(ValueError, match="not an audio"):
            features(load_dataset("cifar10", split="test"), "mfcc40")
    with pytest.raises(ValueError, match="unknown feature kind"):
        mfcc(torch.zeros(1, 16000), "mfcc13")


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_spec_augment_per_sample_seeded_train_only(kind: str) -> None:
    x = torch.randn(64, *SHAPES[kind]) + 5  # no natural zeros
    assert prepare_mfcc(x, kind, train=False) is x
    out = prepare_mfcc(x, kind, True, torch.Generator().manual_seed(1))
    assert torch.equal(out, prepare_mfcc(x, kind, True, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, prepare_mfcc(x, kind, True, torch.Generator().manual_seed(2)))
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    time_axis, freq_axis = (1, 2) if kind == "mfcc40" else (2, 1)
    # Every masked cell lies in a fully masked frame or a fully masked coefficient band.
    whole_frames, whole_bands = (
        zero.all(dim=freq_axis, keepdim=True),
        zero.all(dim=time_axis, keepdim=True),
    )
    assert torch.equal(zero, whole_frames | whole_bands)
    patterns = {tuple(z.flatten().tolist()) for z in zero}
    assert len(patterns) > 32  # masks are drawn per sample, not once per batch
    before = torch.random.get_rng_state()
    prepare_mfcc(x, kind, True, torch.Generator().manual_seed(3))
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone


def flipped(image: torch.Tensor, flip: bool) -> torch.Tensor:
    return TF.horizontal_flip(image) if flip else image


def test_image_crop_flip_matches_torchvision_per_sample() -> None:
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    out = crop_and_flip(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, crop_and_flip(x, 4, torch.Generator().manual_seed(0)))
    seen = set()
    for image, result in zip(x, out):
        padded = TF.pad(image, [4])
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(result, flipped(TF.crop(padded, top, left, 32, 32), flip))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 40 and len({flip for _, _, flip in seen}) == 2


def test_prepare_images_normalises_and_augments_train_only() -> None:
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = prepare_images(x, mean, std, train=False)
    expected = (x.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    assert plain.dtype == torch.float32 and torch.allclose(plain, expected)
    # the same arithmetic as torchvision's normalize, bit for bit, laid out channels-last
    assert torch.equal(plain, TF.normalize(x.float() / 255, list(mean), list(std)))
    assert plain.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(5)
    train = prepare_images(x, mean, std, train=True, generator=g)
    same_crops = crop_and_flip(x, 4, torch.Generator().manual_seed(5))
    assert torch.allclose(train, prepare_images(same_crops, mean, std, False))
