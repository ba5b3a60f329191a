"""What travels beside the arrays: the server's fit instructions and the client's update metrics.

Both carry the fp8fl release, the method (preset and components), the wire version, the wire
rounding and the format, so that either end rejects a message made differently from what it expects
(e.g. a SuperNode with another fp8fl installed: the FAB carries the Flower layer, not the core; or
a run config edited between a run and its resume).
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

from fp8fl.federated.wire import WIRE_VERSION
from fp8fl.run.config import RunConfig

__all__ = [
    "RAY_NODE",
    "ProtocolError",
    "check_instructions",
    "check_update_metrics",
    "fit_instructions",
    "fp8fl_version",
    "update_metrics",
]

Scalar = bool | int | float | str | bytes
VERSION_KEY = "fp8fl-version"
RAY_NODE = "ray-node"
"""Update metric of a Ray simulation's client: the node that ran it (``clients.placement``). A fact
of the simulation, not of the method: the byte ledger leaves it out."""


class ProtocolError(ValueError):
    """Instructions or metrics that do not match the run."""


@cache
def fp8fl_version() -> str:
    """The installed fp8fl release (package metadata)."""
    try:
        return metadata.version("fp8fl")
    except metadata.PackageNotFoundError:
        return "not installed"


def _origin_fields(config: RunConfig) -> dict[str, Scalar]:
    """What made a message: the fp8fl release and the method's preset and components."""
    parts = config.components
    return {
        VERSION_KEY: fp8fl_version(),
        "method": config.method,
        "components": f"{parts.quantizer}/{parts.codec}/{parts.downlink_codec}",
    }


def _wire_fields(config: RunConfig) -> dict[str, Scalar]:
    """The wire's own fields: its version, the ``wire`` switch (``""`` outside the FP8 family),
    the format and the modifiers of the wire that are on."""
    fields: dict[str, Scalar] = {
        "wire-version": WIRE_VERSION,
        "wire": config.value("wire"),
        "format": config.format,
    }
    if config.lossless:  # absent when off, so that messages without the stage are unchanged
        fields["lossless"] = config.lossless  # true, or "context"
    for key in ("layer-formats", "downlink-format"):  # likewise absent when unset
        if value := config.value(key):
            fields[key] = value
    return fields


def fit_instructions(config: RunConfig, server_round: int) -> dict[str, Scalar]:
    """The FitIns config of ``server_round``."""
    return {"server-round": server_round, **_origin_fields(config), **_wire_fields(config)}


def _check_version(values: dict[str, Scalar], what: str, here: str) -> None:
    """The release first: another release explains any other difference."""
    version, ours = values.get(VERSION_KEY), fp8fl_version()
    if version is None:
        raise ProtocolError(
            f"{what} carry no {VERSION_KEY} (an fp8fl release without version checks), "
            f"this {here} runs fp8fl {ours}"
        )
    if version != ours:
        raise ProtocolError(f"{what} come from fp8fl {version}, this {here} runs fp8fl {ours}")


def _check_wire_fields(values: dict[str, Scalar], config: RunConfig, what: str, here: str) -> None:
    _check_version(values, what, here)
    for key, expected in (_origin_fields(config) | _wire_fields(config)).items():
        if key not in values:
            raise ProtocolError(f"{what} lack {key!r}")
        if values[key] != expected:
            raise ProtocolError(f"{what} say {key} = {values[key]!r}, this run uses {expected!r}")


def check_instructions(values: dict[str, Scalar], config: RunConfig) -> int:
    """Validate FitIns config on the client; return the server round."""
    _check_wire_fields(values, config, "fit instructions", "client")
    server_round = values.get("server-round")
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
        raise ProtocolError(f"fit instructions carry no valid server-round: {server_round!r}")
    return server_round


def update_metrics(
    config: RunConfig, partition_id: int, stats: dict[str, float], fit_seconds: float
) -> dict[str, Scalar]:
    """The FitRes metrics a client sends with its update."""
    return {
        **stats,
        "partition-id": partition_id,
        **_origin_fields(config),
        **_wire_fields(config),
        "fit-seconds": fit_seconds,
    }


def check_update_metrics(values: dict[str, Scalar], config: RunConfig) -> int:
    """Validate FitRes metrics on the server; return the sender's partition id."""
    _check_wire_fields(values, config, "update metrics", "server")
    partition_id = values.get("partition-id")
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise ProtocolError(f"update metrics carry no valid partition-id: {partition_id!r}")
    return partition_id
