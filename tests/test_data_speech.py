"""Speech Commands (real v0.01 sample, synthetic v2 layouts) and FSDD (real archive) loaders."""

from __future__ import annotations

import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from fp8fl.data import DatasetCorruptError, DatasetNotFoundError, data_root, load_dataset
from fp8fl.data.speech import FSDD_ARCHIVE

SHARED = data_root()
SAMPLE = SHARED / "speech-commands-v0.01-sample"


def pcm(data: bytes) -> np.ndarray:
    """Samples of a canonical 44-byte-header 16-bit WAV, parsed without ``wave``, as floats."""
    return np.frombuffer(data[44:], "<i2") / 32768


def test_speechcommands_v001_sample_splits_labels_speakers() -> None:
    files = {"validation": "validation_list.txt", "test": "testing_list.txt"}
    lists = {split: set((SAMPLE / name).read_text().split()) for split, name in files.items()}
    expected: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for path in sorted(SAMPLE.glob("*/*.wav")):
        rel = f"{path.parent.name}/{path.name}"
        expected[next((s for s, ids in lists.items() if rel in ids), "train")].append(rel)
    assert {s: len(ids) for s, ids in expected.items()} == {
        "train": 205,
        "validation": 44,
        "test": 51,
    }
    speakers = {}
    for split, ids in expected.items():
        ds = load_dataset("speechcommands", root=SAMPLE, split=split)
        assert len(ds.classes) == 30 and "_background_noise_" not in ds.classes
        assert sorted(ds.ids.tolist()) == ids
        assert [ds.classes[i] for i in ds.labels] == [i.split("/")[0] for i in ds.ids]
        speaker_ids = [i.split("/")[1].split("_nohash_")[0] for i in ds.ids]
        assert [ds.speaker_names[i] for i in ds.speakers] == speaker_ids
        speakers[split] = set(ds.speaker_names)
        assert ds.inputs.shape == (len(ids), 16000) and ds.inputs.dtype == torch.float32
        raw = pcm((SAMPLE / ds.ids[0]).read_bytes())
        assert (
            np.array_equal(ds.inputs[0, : len(raw)].numpy(), raw)
            and not ds.inputs[0, len(raw) :].any()
        )
    # 41 speakers, none in two splits
    assert sum(map(len, speakers.values())) == len(set.union(*speakers.values())) == 41


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2" if width == 2 else "u1").tobytes())


def make_v2_folder(folder: Path) -> None:
    """A tiny Speech Commands v2 layout: 3 words, background noise, README, official lists."""
    rng = np.random.default_rng(0)
    for word in ("backward", "follow", "yes"):
        for speaker in ("0a7c2a8d", "1b4c9b89", "c1d39ce8"):
            write_wav(folder / word / f"{speaker}_nohash_0.wav", rng.integers(-3000, 3000, 12000))
    write_wav(folder / "_background_noise_" / "white_noise.wav", rng.integers(-3000, 3000, 60000))
    (folder / "README.md").write_text("v0.02")
    (folder / "validation_list.txt").write_text("follow/1b4c9b89_nohash_0.wav\n")
    test = [f"{word}/c1d39ce8_nohash_0.wav" for word in ("yes", "follow", "backward")]
    (folder / "testing_list.txt").write_text("\n".join(test))


@pytest.mark.parametrize(
    "inner", ["speech_commands_v0.02", "SpeechCommands/speech_commands_v0.02", "."]
)
def test_speechcommands_v2_layouts(
    inner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    make_v2_folder(tmp_path / "root" / inner)
    root = tmp_path / "root"
    train, val, test = (
        load_dataset("speechcommands", root, s) for s in ("train", "validation", "test")
    )
    assert train.classes == ("backward", "follow", "yes")
    assert (len(train), len(val), len(test)) == (5, 1, 3)
    assert test.ids.tolist() == [
        f"{w}/c1d39ce8_nohash_0.wav" for w in ("backward", "follow", "yes")
    ]
    assert val.ids.tolist() == ["follow/1b4c9b89_nohash_0.wav"] and val.labels.tolist() == [1]
    assert train.speaker_names == ("0a7c2a8d", "1b4c9b89") and test.speaker_names == ("c1d39ce8",)
    assert not train.inputs[:, 12000:].any() and train.inputs[:, :12000].abs().sum(dim=1).min() > 0


def test_speechcommands_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("speechcommands", root=tmp_path)
    for part in ("speechcommands", str(tmp_path), "testing_list.txt", "root=", "FP8FL_DATA"):
        assert part in str(err.value)
    (tmp_path / "validation_list.txt").write_text("")
    (tmp_path / "testing_list.txt").write_text("")
    with pytest.raises(
        DatasetNotFoundError, match="<word>"
    ):  # lists but no word folders: wrong layout
        load_dataset("speechcommands", root=tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_dataset("fsdd", root=tmp_path, split="validation")
    write_wav(tmp_path / "yes" / "aaaa_nohash_0.wav", np.zeros(100), width=1)
    with pytest.raises(DatasetCorruptError, match="16-bit mono"):
        load_dataset("speechcommands", root=tmp_path)
    write_wav(tmp_path / "yes" / "aaaa_nohash_0.wav", np.zeros(100))
    path = tmp_path / "yes" / "aaaa_nohash_0.wav"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DatasetCorruptError, match="truncated"):
        load_dataset("speechcommands", root=tmp_path)


def test_fsdd_counts_speakers_and_official_split() -> None:
    train, test = load_dataset("fsdd"), load_dataset("fsdd", split="test")
    assert (len(train), len(test)) == (2700, 300)
    speakers = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
    assert train.speaker_names == test.speaker_names == speakers
    assert train.classes == tuple("0123456789")
    assert (
        test.labels.bincount().tolist() == [30] * 10
        and train.speakers.bincount().tolist() == [450] * 6
    )
    for ds in (train, test):
        digit, speaker, index = zip(*(i.removesuffix(".wav").split("_") for i in ds.ids))
        assert [ds.classes[i] for i in ds.labels] == list(digit)
        assert [ds.speaker_names[i] for i in ds.speakers] == list(speaker)
        assert all((int(i) < 5) == (ds.split == "test") for i in index)
    assert len(set(train.ids) | set(test.ids)) == 3000
    assert train.inputs.shape == (2700, 16000) and float(train.inputs.abs().max()) <= 1


def test_fsdd_resampled_padded_and_cropped() -> None:
    ds = load_dataset("fsdd")
    with tarfile.open(SHARED / FSDD_ARCHIVE) as tar:
        for name in (
            "0_george_10.wav",
            "7_theo_36.wav",
        ):  # 0.57 s (padded) and 2.2 s (centre-cropped)
            raw = pcm(tar.extractfile(f"recordings/{name}").read())
            x = ds.inputs[list(ds.ids).index(name)].numpy()
            start = max(0, (2 * len(raw) - 16000) // 2)  # of the 1 s kept, in 16 kHz samples
            if start == 0:
                assert not x[2 * len(raw) :].any()
            # Band-limited 2x upsampling keeps the original samples at even positions (up to the filter).
            odd = start % 2
            kept = raw[(start + odd) // 2 :][:8000]
            assert np.corrcoef(x[odd::2][: len(kept)], kept)[0, 1] > 0.99
            alone = torchaudio.functional.resample(
                torch.from_numpy(raw).float(), 8000, 16000
            ).clamp(-1, 1)
            assert np.allclose(x[: len(alone)], alone[start : start + 16000], atol=1e-6)


def test_fsdd_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fsdd", root=tmp_path)
    for part in (
        "fsdd",
        str(tmp_path / FSDD_ARCHIVE),
        "recordings/<digit>_<speaker>_<n>.wav",
        "FP8FL_DATA",
    ):
        assert part in str(err.value)


def test_fsdd_unpacked_folder_matches_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tarfile.open(SHARED / FSDD_ARCHIVE) as tar:
        tar.extractall(tmp_path / "repo", filter="data")
    monkeypatch.setenv("FP8FL_CACHE", str(tmp_path / "cache"))
    unpacked = load_dataset("fsdd", root=tmp_path / "repo", split="test")
    monkeypatch.undo()
    archived = load_dataset("fsdd", split="test")
    assert unpacked.ids.tolist() == archived.ids.tolist() and torch.equal(
        unpacked.inputs, archived.inputs
    )
