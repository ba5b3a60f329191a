"""Speech Commands (v2 folder; the same code reads v0.01) and the Free Spoken Digit Dataset (FSDD).

Every clip becomes 1 s of float32 audio at 16 kHz in [-1, 1]: resampled if needed (FSDD is 8 kHz;
clipped to full scale after), zero-padded at the end when shorter (the Speech Commands
convention) and centre-cropped when longer. WAVs are read with ``wave`` (16-bit PCM,
bit-exact). Per split the cache holds ``inputs`` (N×16000), ``labels``, ``speakers`` (index into
that split's sorted speaker names) and ``ids`` (the clip's relative path).
"""

from __future__ import annotations

import io
import math
import os
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
import torchaudio

from fp8fl.data.cache import (
    DatasetCorruptError,
    Source,
    new_array,
    not_found,
    read_archive,
    split_file,
    write_meta,
)

RATE = 16000
SPEECHCOMMANDS_SPLITS = ("train", "validation", "test")
SPEECHCOMMANDS_FOLDERS = (".", "speech_commands_v0.02", "SpeechCommands/speech_commands_v0.02")
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
FSDD_SPLITS = ("train", "test")
FSDD_ARCHIVE = "fsdd.tar.gz"
CHUNK = 256  # clips decoded per batch


@dataclass(frozen=True)
class Clip:
    """One recording: its id (relative path), split, class name and speaker name."""

    id: str
    split: str
    word: str
    speaker: str


def locate_speechcommands(root: Path) -> Source:
    """A folder of ``<word>/<speaker>_nohash_<n>.wav`` with the official split lists (v2 or v0.01)."""
    searched = [(root / sub).resolve() for sub in SPEECHCOMMANDS_FOLDERS]
    for folder in searched:
        if all((folder / name).is_file() for name in SPLIT_LISTS.values()):
            words = word_folders(folder)
            if words:
                keys = (
                    folder,
                    *(folder / n for n in SPLIT_LISTS.values()),
                    *(folder / w for w in words),
                )
                return Source(keys, partial(build_speechcommands, folder, words))
    raise not_found(
        "speechcommands",
        searched,
        "<root>/<word>/<speaker>_nohash_<n>.wav plus validation_list.txt and testing_list.txt "
        "(speech_commands_v0.02 unpacked; torchaudio's SpeechCommands/speech_commands_v0.02 also works)",
    )


def word_folders(folder: Path) -> tuple[str, ...]:
    """Class folders: those holding WAVs, except ``_background_noise_`` and other ``_``/``.`` names."""
    folders = (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    return tuple(sorted(d.name for d in folders if holds_wav(d)))


def holds_wav(folder: Path) -> bool:
    """Whether ``folder`` has a ``.wav``, reading its listing only up to the first one."""
    with os.scandir(folder) as entries:
        return any(e.name.endswith(".wav") for e in entries)


def build_speechcommands(folder: Path, words: tuple[str, ...], out: Path) -> None:
    """Assign each clip to the split its official list names (train otherwise) and decode it."""
    listed = {
        split: set((folder / name).read_text().split()) for split, name in SPLIT_LISTS.items()
    }
    clips = []
    for word in words:
        for path in sorted((folder / word).glob("*.wav")):
            clip_id = f"{word}/{path.name}"
            split = next((s for s, ids in listed.items() if clip_id in ids), "train")
            clips.append(Clip(clip_id, split, word, path.name.split("_", 1)[0]))
    source = f"Speech Commands folder {folder}"

    def read(clip: Clip) -> bytes:
        return (folder / clip.id).read_bytes()

    write_audio(out, "speechcommands", source, words, SPEECHCOMMANDS_SPLITS, clips, read)


def locate_fsdd(root: Path) -> Source:
    """``<root>/fsdd.tar.gz`` or an unpacked ``<root>/recordings/`` folder (the FSDD repository)."""
    archive, folder = root / FSDD_ARCHIVE, root / "recordings"
    if archive.is_file():
        return Source((archive,), partial(build_fsdd, archive))
    if folder.is_dir() and holds_wav(folder):
        return Source((folder,), partial(build_fsdd, folder))
    layout = f"<root>/{FSDD_ARCHIVE} or <root>/recordings/<digit>_<speaker>_<n>.wav"
    raise not_found("fsdd", [archive, folder], layout)


def build_fsdd(source: Path, out: Path) -> None:
    """Decode FSDD from its archive or folder; recordings with index 0-4 are the official test split."""
    if source.is_dir():
        files = {p.name: p.read_bytes() for p in source.glob("*.wav")}
    else:
        files = {
            p.name: data for p, data in read_archive("fsdd", source).items() if p.suffix == ".wav"
        }
    clips = []
    for name in sorted(files):
        parts = name.removesuffix(".wav").split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise DatasetCorruptError(
                f"fsdd: {name} in {source} is not named <digit>_<speaker>_<n>.wav"
            )
        digit, speaker, index = parts
        clips.append(Clip(name, "test" if int(index) < 5 else "train", digit, speaker))
    digits = tuple(sorted({c.word for c in clips}))
    write_audio(
        out, "fsdd", f"FSDD {source}", digits, FSDD_SPLITS, clips, lambda clip: files[clip.id]
    )


def write_audio(
    out: Path,
    name: str,
    source: str,
    classes: tuple[str, ...],
    splits: tuple[str, ...],
    clips: list[Clip],
    read: Callable[[Clip], bytes],
) -> None:
    """Decode ``clips`` split by split, a chunk at a time, into memory-mapped arrays; write the meta data."""
    out.mkdir(parents=True)
    speaker_names = {}
    for split in splits:
        part = [c for c in clips if c.split == split]
        speakers = sorted({c.speaker for c in part})
        inputs = new_array(split_file(out, split, "inputs"), (len(part), RATE), np.float32)
        for start in range(0, len(part), CHUNK):
            waves = []
            for clip in part[start : start + CHUNK]:
                waves.append(read_wav(read(clip), f"{name}: {clip.id}"))
            inputs[start : start + len(waves)] = one_second(waves).numpy()
        inputs.flush()
        np.save(split_file(out, split, "labels"), positions(classes, [c.word for c in part]))
        np.save(split_file(out, split, "speakers"), positions(speakers, [c.speaker for c in part]))
        np.save(split_file(out, split, "ids"), np.array([c.id for c in part], dtype=str))
        speaker_names[split] = speakers
    write_meta(
        out, {"name": name, "source": source, "classes": classes, "speaker_names": speaker_names}
    )


def positions(names: Sequence[str], values: list[str]) -> np.ndarray:
    """Each value's index in ``names``, as int64."""
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64)


def read_wav(data: bytes, what: str) -> tuple[torch.Tensor, int]:
    """The samples (float32 in [-1, 1)) and sample rate of a 16-bit mono PCM WAV file's bytes."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
            pcm = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise DatasetCorruptError(f"{what} is not a readable WAV ({e})") from e
    if channels != 1 or width != 2:
        got = f"{channels} channel(s) of {8 * width} bits"
        raise DatasetCorruptError(f"{what}: expected 16-bit mono PCM, got {got}")
    if len(pcm) != 2 * frames:
        raise DatasetCorruptError(f"{what} is truncated ({len(pcm) // 2} of {frames} samples)")
    return torch.from_numpy(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768), rate


def one_second(waves: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Clips at any rates as B×16000 at 16 kHz (see the module docstring).

    Clips sharing a rate are resampled in one zero-padded batch (thousands of small convolutions
    crawl when the CPU is shared); each is then cut to its own resampled length, so the result
    matches resampling it alone up to float rounding.
    """
    out = torch.zeros(len(waves), RATE)
    for rate in {r for _, r in waves}:
        rows = [i for i, (_, r) in enumerate(waves) if r == rate]
        batch = torch.nn.utils.rnn.pad_sequence([waves[i][0] for i in rows], batch_first=True)
        if rate != RATE:
            batch = resampler(rate)(batch).clamp_(
                -1, 1
            )  # the filter's ringing can overshoot full scale
        for i, x in zip(rows, batch):
            length = math.ceil(len(waves[i][0]) * RATE / rate)
            start = max(0, (length - RATE) // 2)
            kept = x[start : min(length, start + RATE)]
            out[i, : len(kept)] = kept
    return out


@cache
def resampler(rate: int) -> torchaudio.transforms.Resample:
    """A resampler to 16 kHz with its filter computed once per source rate."""
    return torchaudio.transforms.Resample(rate, RATE)
