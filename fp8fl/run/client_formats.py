"""Mixed-precision clients as the run sees them: which format each partition's client uses, and
the run config as the clients of one format see it. The family of the run's method decides
(``Family.partition_formats`` and ``Family.client_view``; the FP8 family's ``client-formats``,
``fp8fl.federated.client_formats``): both ends build a client's model, codecs and protocol fields
from its view.
"""

from __future__ import annotations

import dataclasses

from fp8fl.run.config import RunConfig

__all__ = ["client_config", "partition_config", "partition_formats"]


def partition_formats(config: RunConfig) -> tuple[str, ...]:
    """The format of every partition of a mixed-precision run; ``()`` for a single-format run."""
    return config.family.partition_formats(config.settings, config)


def client_config(config: RunConfig, fmt: str) -> RunConfig:
    """The run as a client of format ``fmt`` sees it (the family's ``client_view``): a
    single-format config in that format."""
    settings, fmt = config.family.client_view(config.settings, fmt)
    return dataclasses.replace(config, settings=settings, format=fmt)


def partition_config(config: RunConfig, partition: int) -> RunConfig:
    """The run as the client of ``partition`` sees it (``config`` itself in a single-format run)."""
    formats = partition_formats(config)
    return client_config(config, formats[partition]) if formats else config
