"""Finished runs in results folders, grouped into settings and aggregated over seeds.

Every folder below the given ones that holds ``config.json`` is a run; it is finished when it also
holds ``summary.json``, and unfinished runs are left out (and listed). ``*-incomplete-N`` folders,
which ``fp8fl-sweep`` sets aside, are skipped.

Runs are grouped by *setting* and method, and aggregated over seeds. A setting is every run-config
key that changes what is trained or measured (task, model, split, the Dirichlet α of a Dirichlet
split, num-clients, format, num-server-rounds, lr, …) — not the method's switches, the seed, or
where and how the run was executed. A key that a method does not use is not part of its setting:
FP32 FedAvg (``qat = none``) uses no ``format`` or ``calibration-samples`` and only UQ+
(``server-opt = mse``) uses the ``server-opt-*`` keys, so one FP32 baseline serves every format.
When two finished runs share setting, method and seed, the one started last counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.reporting.gain import (
    EMPTY_SERIES,
    EMPTY_UPLINK,
    Curve,
    Gain,
    Series,
    Uplink,
    communication_gain,
    curve_from_rounds,
    mean_curve,
    series_from_rounds,
    uplink_from_rounds,
)
from experiments.reporting.identity import MethodId
from experiments.reporting.legacy import upgrade_config
from fp8fl.data.partitioners import DIRICHLET_SCHEMES, SCHEMES
from fp8fl.methods.registry import FAMILIES, METHODS
from fp8fl.run.results import safe_name

__all__ = [
    "BASELINE",
    "METHOD_LABELS",
    "MODEL_NAMES",
    "TASK_NAMES",
    "Found",
    "Key",
    "MethodResult",
    "Run",
    "Setting",
    "find_runs",
    "group_settings",
    "message_sizes",
]

Key = tuple[tuple[str, Any], ...]

BASELINE = "fp32"
METHOD_LABELS = {name: spec.label for name, spec in METHODS.items()}
"""Every registered method's label, in registry order (the order of table columns and legends)."""
TASK_NAMES = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "speechcommands": "SpeechCommands",
    "fsdd": "FSDD",
}
MODEL_NAMES = {
    "lenet": "LeNet",
    "resnet18": "ResNet18",
    "matchboxnet": "MatchboxNet",
    "kwt1": "KWT-1",
}
SPLIT_ORDER = SCHEMES
# run-config keys that say how or where a run was executed, or which method it is: not a setting
NOT_SETTING = frozenset(
    {
        "method",
        "qat",
        "wire",
        "server-opt",
        "seed",
        "eval-every",
        "eval-batch-size",
        "results-dir",
        "run-name",
        "data-root",
        "device",
        "resume",
        "tracking",
        # they modify the method: part of its name (Run.method)
        *("lossless", "client-formats", "layer-formats", "downlink-format", "moving-average"),
        # the keys a family's presets set (cq-bits, lpt-bits, qafel-uplink, …) say which method
        # ran, so a cq4 run shares its setting with the FP32 baseline; so do the family's variant
        # keys (lpt-downlink, cq-mse-floor, …), which make a variant of the method
        *(
            k
            for family in FAMILIES
            for k in (
                *family.settings_type.preset_keys(),
                *family.settings_type.variant_defaults(),
            )
        ),
    }
)
LABELLED_KEYS = frozenset({"task", "model", "split", "dirichlet-alpha"})
INCOMPLETE = re.compile(r"-incomplete-\d+$")


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One finished run: its folder, run config, summary, accuracy-vs-bytes curve, the
    per-round fraction of weight codes its clients left unchanged (``unchanged_codes``), its
    uplink ledger (updates, bytes, staleness) and the mean bytes of one uplink and one downlink
    message (``message_sizes``), and the CPUs it ran on (``cpus``)."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    curve: Curve
    started: str
    unchanged: Series = EMPTY_SERIES
    uplink: Uplink = EMPTY_UPLINK
    message_bytes: tuple[float | None, float | None] = (None, None)
    cpus: tuple[str, ...] = ()

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def identity(self) -> MethodId:
        """Which method the run is (``MethodId``): a custom one is told apart by its family's
        preset keys, a variant by the family keys it changed; mixed client formats, per-layer
        formats, the server moving average and the lossless stage modify it, so such a run is
        a method of its own beside the plain one, in the same setting."""
        return MethodId.of(self.config)

    @property
    def method(self) -> str:
        """The identity's name (``uq``, ``lpt8(lpt-downlink=bfp)``, ``uq{fc1:e2m1}+context``)."""
        return self.identity.name

    @property
    def key(self) -> Key:
        """The setting keys this run uses, with their values (see the module docstring)."""
        unused = set(NOT_SETTING)
        if self.config.get("split") not in DIRICHLET_SCHEMES:
            unused.add("dirichlet-alpha")
        for family in FAMILIES:
            unused |= family.idle_keys(self.config)
        return tuple(sorted((k, _hashable(v)) for k, v in self.config.items() if k not in unused))

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")

    @property
    def uplink_curve(self) -> Curve:
        """Accuracy against cumulative uplink bytes, at the evaluated rounds."""
        return Curve(self.uplink.rounds, self.uplink.cum_bytes_up, self.uplink.accuracy)


@dataclass(frozen=True)
class Found:
    """What ``find_runs`` saw: finished runs, unfinished folders, unreadable folders and the
    runs left out as duplicates (with the run that counts instead)."""

    runs: list[Run]
    unfinished: list[Path]
    unreadable: list[tuple[Path, str]]
    duplicates: list[tuple[Run, Run]]


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value)


def _run_folders(root: Path) -> Iterator[Path]:
    """Folders at or below ``root`` holding ``config.json``, except set-aside incomplete ones."""
    for config_file in sorted(root.rglob("config.json")):
        parts = config_file.parent.relative_to(root).parts
        if not any(INCOMPLETE.search(part) for part in parts):
            yield config_file.parent.resolve()


def _read_run(folder: Path) -> Run:
    """A finished run folder (raises ValueError or OSError when a file cannot be read)."""
    document = json.loads((folder / "config.json").read_text())
    if not isinstance(document.get("config"), dict) or "method" not in document["config"]:
        raise ValueError("config.json has no run config")
    summary = json.loads((folder / "summary.json").read_text())
    lines = (folder / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return Run(
        folder,
        upgrade_config(document["config"]),
        summary,
        curve_from_rounds(records),
        str(document.get("started", "")),
        series_from_rounds(records, "unchanged_codes"),
        uplink_from_rounds(records),
        message_sizes(records),
        cpus_of(document),
    )


def cpus_of(document: dict[str, Any]) -> tuple[str, ...]:
    """The CPUs a run's stretches ran on (its start, then each resumption), each named once;
    empty for runs recorded before ``config.json`` named the CPU."""
    stretches = [document, *document.get("resumed", [])]
    return tuple(dict.fromkeys(s["cpu"] for s in stretches if s.get("cpu")))


def message_sizes(records: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """Mean bytes of one uplink and one downlink message over a run's rounds (None where none
    was sent): uplink bytes ÷ updates received (``uploads`` of a buffered step, else
    ``clients_ok``), downlink bytes ÷ messages sent (``broadcast_receivers`` of a buffered step,
    else the round's ``sampled`` clients)."""
    rounds = {int(r["round"]): r for r in records if int(r["round"]) > 0}.values()
    ups = sum(int(r.get("uploads", r.get("clients_ok", 0))) for r in rounds)
    downs = sum(_downlink_messages(r) for r in rounds)
    up, down = (sum(int(r[k]) for r in rounds) for k in ("bytes_up", "bytes_down"))
    return (up / ups if ups else None), (down / downs if downs else None)


def find_runs(dirs: Sequence[Path]) -> Found:
    """Read every run folder at or below ``dirs``; keep the latest run of each setting, method
    and seed."""
    folders = sorted({f for d in dirs for f in _run_folders(Path(d))})
    runs: list[Run] = []
    unfinished: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for folder in folders:
        if not (folder / "summary.json").is_file():
            unfinished.append(folder)
            continue
        try:
            runs.append(_read_run(folder))
        except (OSError, ValueError, KeyError, TypeError) as err:
            unreadable.append((folder, f"{type(err).__name__}: {err}"))
    latest: dict[tuple[Key, str, int], Run] = {}
    duplicates: list[tuple[Run, Run]] = []
    for run in sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True):
        kept = latest.setdefault((run.key, run.method, run.seed), run)
        if kept is not run:
            duplicates.append((run, kept))
    return Found(
        sorted(latest.values(), key=lambda r: (r.method, r.seed, r.run_id)),
        unfinished,
        unreadable,
        duplicates,
    )


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MethodResult:
    """A method's runs in one setting, its seed-mean curve and its gain over FP32, on bytes
    sent both ways (``gain``, the paper's §5.3) and on uplink bytes only (``uplink_gain``)."""

    method: str
    runs: tuple[Run, ...]
    curve: Curve
    gain: Gain | None
    uplink_gain: Gain | None = None

    @property
    def accuracies(self) -> np.ndarray:
        """Final test accuracies in %, one per seed that evaluated at least one round."""
        return 100 * np.asarray(
            [r.final_accuracy for r in self.runs if r.final_accuracy is not None], dtype=float
        )

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float | None:
        return float(self.accuracies.mean()) if self.n else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1) over seeds; None for fewer than two."""
        return float(self.accuracies.std(ddof=1)) if self.n >= 2 else None

    @property
    def identity(self) -> MethodId:
        return self.runs[0].identity

    @property
    def label(self) -> str:
        return self.identity.label


@dataclass(frozen=True)
class Setting:
    """One setting: its keys, the keys that tell it apart from the others, and its methods."""

    key: Key
    extras: Key
    methods: dict[str, MethodResult]

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.key).get(name, default)

    @property
    def split_label(self) -> str:
        split = self.get("split")
        if split in DIRICHLET_SCHEMES:
            balanced = "balanced " if split == "dirichlet-balanced" else ""
            return f"{balanced}Dir({self.get('dirichlet-alpha'):g})"
        return {"iid": "i.i.d.", "speaker": "speaker-id"}.get(split, str(split))

    @property
    def extras_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.extras)

    @property
    def label(self) -> str:
        parts = [
            TASK_NAMES.get(self.get("task"), self.get("task")),
            MODEL_NAMES.get(self.get("model"), self.get("model")),
            self.split_label,
        ]
        return " · ".join(str(p) for p in parts if p) + (
            f" ({self.extras_label})" if self.extras else ""
        )

    @property
    def slug(self) -> str:
        split = self.get("split") + (
            f"{self.get('dirichlet-alpha'):g}" if self.get("split") in DIRICHLET_SCHEMES else ""
        )
        parts = [self.get("task"), self.get("model"), split, *(f"{k}{v}" for k, v in self.extras)]
        return safe_name("-".join(str(p) for p in parts))


def _results(runs: Sequence[Run]) -> dict[str, MethodResult]:
    """Per method (FP32 first): its runs by seed, seed-mean curve and gains over FP32 (on total
    and on uplink bytes)."""
    by_method: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        by_method.setdefault(run.method, []).append(run)
    curves = {m: mean_curve([r.curve for r in rs]) for m, rs in by_method.items()}
    uplinks = {m: mean_curve([r.uplink_curve for r in rs]) for m, rs in by_method.items()}
    baseline, baseline_up = curves.get(BASELINE), uplinks.get(BASELINE)
    return {
        m: MethodResult(
            m,
            tuple(by_method[m]),
            curves[m],
            communication_gain(baseline, curves[m]),
            communication_gain(baseline_up, uplinks[m]),
        )
        for m in sorted(by_method, key=lambda m: by_method[m][0].identity.order)
    }


def _sort_key(key: Key) -> tuple[Any, ...]:
    values = dict(key)
    split = values.get("split")
    return (
        str(values.get("task")),
        str(values.get("model")),
        SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER),
        repr(key),
    )


def group_settings(runs: Sequence[Run]) -> list[Setting]:
    """Group runs into settings. A setting is a maximal key; a run belongs to every setting whose
    keys include all of its own (so an FP32 run, without ``format``, is in every format's)."""
    keys = {run.key for run in runs}
    maximal = sorted(
        (k for k in keys if not any(set(k) < set(other) for other in keys)), key=_sort_key
    )
    return [
        Setting(key, _extras(key, maximal), _results([r for r in runs if set(r.key) <= set(key)]))
        for key in maximal
    ]


def _extras(key: Key, keys: Sequence[Key]) -> Key:
    """The keys of ``key`` that tell it apart from the settings sharing its task, model and split
    (different tasks differ in their label already, not in a list of run-config values)."""

    def labelled(k: Key) -> Key:
        return tuple(item for item in k if item[0] in LABELLED_KEYS)

    siblings = [dict(k) for k in keys if labelled(k) == labelled(key)]
    return tuple(
        (name, value)
        for name, value in key
        if name not in LABELLED_KEYS and len({repr(s.get(name)) for s in siblings}) > 1
    )


def _downlink_messages(record: dict[str, Any]) -> int:
    """Messages a round sent down: a buffered step's broadcast (if it made one) to every client,
    or the model to each client of a synchronous round's sample."""
    if "broadcast_receivers" in record:
        return int(record["broadcast_receivers"]) if record.get("broadcast_bytes") else 0
    return len(record.get("sampled", []))
