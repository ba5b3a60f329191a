"""Bytes per round on the wire for each model, FP32 vs FP8 methods, from the byte ledger itself.

    python -m experiments.bench bytes [--clients-per-round 10]

For every model it builds the messages of one round exactly as a run does — the downlink FitIns
(global model in the method's wire format plus the fit instructions) and one client's FitRes (its
update plus metrics) — and counts their payloads with ``strategies.ledger``. No training happens:
message sizes depend only on the model, the method and the format.
"""

from __future__ import annotations

import argparse

import torch
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from rich.console import Console
from rich.table import Table

from fp8fl.models.architectures import MODELS
from fp8fl.run.components import build
from fp8fl.run.config import RunConfig
from fp8fl.run.protocol import fit_instructions, update_metrics
from fp8fl.run.training import build_run_model, run_layout
from strategies.ledger import fitins_bytes, fitres_bytes

TASK_OF = {
    "lenet": "cifar10",
    "resnet18": "cifar10",
    "matchboxnet": "speechcommands",
    "kwt1": "speechcommands",
}
NUM_CLASSES = {"cifar10": 10, "speechcommands": 35}
INPUT_SHAPE = {
    "lenet": (4, 3, 32, 32),
    "resnet18": (4, 3, 32, 32),
    "matchboxnet": (4, 64, 101),
    "kwt1": (4, 98, 40),
}


def message_bytes(model_name: str, method: str, fmt: str) -> tuple[int, int]:
    """(downlink FitIns bytes, uplink FitRes bytes) of one client in one round."""
    task = TASK_OF[model_name]
    config = RunConfig.from_mapping(
        {"task": task, "model": model_name, "method": method, "format": fmt}
    )
    torch.manual_seed(0)
    model = build_run_model(config, NUM_CLASSES[task])
    layout = run_layout(config, model)
    built = build(config, layout.quantized)
    if built.quantizer.calibrates:
        built.quantizer.calibrate(model, torch.randn(INPUT_SHAPE[model_name]))
    arrays = layout.pack(model.state_dict(), built.codec, torch.Generator())
    down = FitIns(ndarrays_to_parameters(arrays), fit_instructions(config, 1))
    stats = {"train-loss": 1.0, "train-loss-last": 1.0, "local-steps": 1.0, "train-seconds": 1.0}
    up = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(arrays),
        500,
        update_metrics(config, 0, stats, 1.0),
    )
    return fitins_bytes(down), fitres_bytes(up)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench bytes")
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--format", default="e4m3")
    args = parser.parse_args(argv)
    k = args.clients_per_round
    table = Table(title=f"bytes per round with {k} clients (down + up), format {args.format}")
    for column in ("model", "fp32 per round", "uq per round", "fp32 ÷ uq", "uq per message"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in MODELS:
        fp32 = message_bytes(name, "fp32", args.format)
        uq = message_bytes(name, "uq", args.format)
        table.add_row(
            name,
            f"{k * sum(fp32):,}",
            f"{k * sum(uq):,}",
            f"{sum(fp32) / sum(uq):.2f}x",
            f"{uq[0]:,} down / {uq[1]:,} up",
        )
    Console().print(table)
