"""What travels beside the arrays: the server's fit instructions and the client's update metrics.

Both carry the wire version, the wire rounding and the format, so that either end rejects a
message encoded differently from what it expects (e.g. a client of another release, or a run
config edited between a run and its resume).
"""

from __future__ import annotations

from fp8fl.federated.config import RunConfig
from fp8fl.federated.wire import WIRE_VERSION

__all__ = [
    "ProtocolError",
    "check_instructions",
    "check_update_metrics",
    "fit_instructions",
    "update_metrics",
]

Scalar = bool | int | float | str | bytes


class ProtocolError(ValueError):
    """Instructions or metrics that do not match the run."""


def _wire_fields(config: RunConfig) -> dict[str, Scalar]:
    return {"wire-version": WIRE_VERSION, "wire": config.wire, "format": config.format}


def fit_instructions(config: RunConfig, server_round: int) -> dict[str, Scalar]:
    """The FitIns config of ``server_round``."""
    return {"server-round": server_round, **_wire_fields(config)}


def _check_wire_fields(values: dict[str, Scalar], config: RunConfig, what: str) -> None:
    for key, expected in _wire_fields(config).items():
        if key not in values:
            raise ProtocolError(f"{what} lack {key!r}")
        if values[key] != expected:
            raise ProtocolError(f"{what} say {key} = {values[key]!r}, this run uses {expected!r}")


def check_instructions(values: dict[str, Scalar], config: RunConfig) -> int:
    """Validate FitIns config on the client; return the server round."""
    _check_wire_fields(values, config, "fit instructions")
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
        **_wire_fields(config),
        "fit-seconds": fit_seconds,
    }


def check_update_metrics(values: dict[str, Scalar], config: RunConfig) -> int:
    """Validate FitRes metrics on the server; return the sender's partition id."""
    _check_wire_fields(values, config, "update metrics")
    partition_id = values.get("partition-id")
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise ProtocolError(f"update metrics carry no valid partition-id: {partition_id!r}")
    return partition_id
