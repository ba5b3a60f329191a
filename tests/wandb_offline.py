"""Read a W&B offline run (``run-<id>.wandb``) back: its records are protobuf ``Record``s of
``wandb.proto.wandb_internal_pb2`` framed as a LevelDB log (32 KiB blocks, a 7-byte header per
chunk: CRC-32C, length, type FULL/FIRST/MIDDLE/LAST), after a 7-byte file header ``:W&B``.
wandb 0.31's own reader lives in its Go core, so the tests read the file with this one."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    found, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # the rest of a block too small for a header is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            break  # zero fill at the end
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows (``run.log``), each a dict of key → value."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
    ]


def config(path: Path) -> dict[str, Any]:
    """The run's config (sent with its ``run`` record, updated by ``config`` records)."""
    values: dict[str, Any] = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            update = r.run.config.update if kind == "run" else r.config.update
            values.update({i.key: json.loads(i.value_json) for i in update})
    return values


def summary(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            values.update(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.summary.update
                }
            )
    return values
