"""Message sizes: what one message of each method costs on the wire, per direction.

For every setting and method (seed-mean): final accuracy, mean bytes of an uplink message (the
run's uplink bytes ÷ the updates received: ``clients_ok`` of a synchronous round, ``uploads`` of a
buffered server step) and of a downlink message (downlink bytes ÷ messages sent: the round's
sample, or a buffered step's broadcast to every client), both also as **bits per weight**: every
byte Flower carried (codes, frequency tables of the lossless stage, clipping ranges, biases and
norms, framing) over the model's conv and linear weights, the tensors a quantizer compresses. The
weight count needs the class count of the task: fixed by the data set for CIFAR-10/100 and FSDD;
"—" for Speech Commands, whose classes depend on the folders present.

Beside them, the final accuracy as mean ± sample std over seeds, the bytes the run sent up and in
all, and the communication gain over FP32 (§5.3 of Wang et al. 2024, arXiv:2407.02610: bytes to the
lower of the two best accuracies) counted twice: on bytes sent both ways, as the paper does, and on
uplink bytes only, as the clipped-uniform paper (Bozorgasl & Chen, arXiv:2405.13365) counts, since
its downlink is FP32. Last, the final accuracy against FP32's **paired by seed**: the mean,
min and max over the seeds both ran of (the method's final accuracy − FP32's at that seed), which
takes the seed's share of the spread (data order, sampling, initial model) out of the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from experiments.reporting.runs import BASELINE, MethodResult, Setting
from experiments.reporting.tables import write_csv
from fp8fl.models.architectures import build_model

__all__ = ["CLASS_COUNTS", "paired_differences", "weight_count", "write_messages"]

CLASS_COUNTS = {"cifar10": 10, "cifar100": 100, "fsdd": 10}
"""Classes of the tasks whose data set fixes them."""


@cache
def weight_count(model: str, task: str) -> int | None:
    """Elements of the conv and linear weights of ``model`` for ``task`` (None: classes unknown)."""
    if task not in CLASS_COUNTS:
        return None
    layers = build_model(model, CLASS_COUNTS[task]).modules()
    return sum(m.weight.numel() for m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def paired_differences(setting: Setting, result: MethodResult) -> list[float]:
    """Points of final accuracy over FP32's, one per seed both ran (FP32 itself: none)."""
    baseline = setting.methods.get(BASELINE)
    if baseline is None or result.method == BASELINE:
        return []
    fp32 = {r.seed: r.final_accuracy for r in baseline.runs if r.final_accuracy is not None}
    return [
        100 * (r.final_accuracy - fp32[r.seed])
        for r in result.runs
        if r.final_accuracy is not None and r.seed in fp32
    ]


def _row(setting: Setting, result: MethodResult) -> dict[str, Any]:
    up = _mean([run.message_bytes[0] for run in result.runs])
    down = _mean([run.message_bytes[1] for run in result.runs])
    weights = weight_count(setting.get("model"), setting.get("task"))

    def bits(size: float | None) -> float | None:
        return None if size is None or not weights else 8 * size / weights

    gain, uplink_gain = result.gain, result.uplink_gain
    paired = paired_differences(setting, result)
    return {
        "setting": setting.label,
        "method": result.method,
        "label": result.label,
        "seeds": len(result.runs),
        "final_accuracy_pct": result.mean,
        "final_accuracy_std_pct": result.std,
        "bytes_per_up_message": up,
        "bytes_per_down_message": down,
        "bits_per_weight_up": bits(up),
        "bits_per_weight_down": bits(down),
        "uplink_bytes": _mean([r.summary.get("bytes_up") for r in result.runs]),
        "total_bytes": _mean([r.summary.get("total_bytes") for r in result.runs]),
        "gain_vs_fp32": None if gain is None else gain.value,
        "gain_acc_pct": None if gain is None else 100 * gain.target,
        "uplink_gain_vs_fp32": None if uplink_gain is None else uplink_gain.value,
        "uplink_gain_acc_pct": None if uplink_gain is None else 100 * uplink_gain.target,
        "paired_seeds": len(paired),
        "paired_vs_fp32_pts": _mean(paired),
        "paired_vs_fp32_min_pts": min(paired, default=None),
        "paired_vs_fp32_max_pts": max(paired, default=None),
    }


def _cell(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _markdown(setting: Setting, rows: Sequence[dict[str, Any]]) -> str:
    weights = weight_count(setting.get("model"), setting.get("task"))
    lines = [
        f"### {setting.label}: message sizes"
        + (f" ({weights:,} conv and linear weights)" if weights else ""),
        "",
        "| method | seeds | final acc. (%) | bytes / up msg | bytes / down msg | bits/weight up "
        "| bits/weight down | uplink MB | total MB | gain vs FP32, total (at acc.) "
        "| gain vs FP32, uplink (at acc.) | vs FP32, paired (points) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = _cell(r["final_accuracy_pct"], ".2f")
        if r["final_accuracy_std_pct"] is not None:
            accuracy += f" ± {r['final_accuracy_std_pct']:.2f}"
        lines.append(
            f"| {r['label']} | {r['seeds']} | {accuracy} "
            f"| {_cell(r['bytes_per_up_message'], ',.0f')} "
            f"| {_cell(r['bytes_per_down_message'], ',.0f')} "
            f"| {_cell(r['bits_per_weight_up'], '.2f')} | {_cell(r['bits_per_weight_down'], '.2f')} "
            f"| {_megabytes(r['uplink_bytes'])} | {_megabytes(r['total_bytes'])} "
            f"| {_gain(r['gain_vs_fp32'], r['gain_acc_pct'])} "
            f"| {_gain(r['uplink_gain_vs_fp32'], r['uplink_gain_acc_pct'])} "
            f"| {_paired(r)} |"
        )
    notes = (
        "Final acc.: mean ± sample std over seeds. Gain: FP32's bytes ÷ the method's bytes, each "
        "until it first reached the lower of the two best seed-mean accuracies (in brackets); "
        "total counts both directions (the paper's §5.3), uplink the clients' messages only. "
        "Paired: the method's final accuracy − FP32's at the same seed, mean [min … max] over the "
        "seeds both ran (their count after the semicolon)."
    )
    return "\n".join([*lines, "", notes]) + "\n"


def _paired(row: dict[str, Any]) -> str:
    n = row["paired_seeds"]
    if not n:
        return "—"
    mean = f"{row['paired_vs_fp32_pts']:+.2f}"
    if n == 1:
        return f"{mean}; 1"
    low, high = row["paired_vs_fp32_min_pts"], row["paired_vs_fp32_max_pts"]
    return f"{mean} [{low:+.2f} … {high:+.2f}]; {n}"


def _megabytes(size: float | None) -> str:
    return _cell(size and size / 1e6, ",.1f")


def _gain(value: float | None, accuracy_pct: float | None) -> str:
    return "—" if value is None else f"{value:.2f}× ({accuracy_pct:.2f} %)"


def write_messages(settings: Sequence[Setting], out_dir: Path) -> tuple[list[Path], str]:
    """``messages.md`` and ``messages.csv`` over all settings; returns them and the markdown."""
    tables, rows = [], []
    for setting in settings:
        setting_rows = [_row(setting, result) for result in setting.methods.values()]
        tables.append(_markdown(setting, setting_rows))
        rows += setting_rows
    text = "\n".join(tables)
    (out_dir / "messages.md").write_text(text)
    write_csv(out_dir / "messages.csv", rows)
    return [out_dir / "messages.md", out_dir / "messages.csv"], text
