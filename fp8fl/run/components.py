"""A run's components, built by its method's family from its config: the quantizer, the codecs
both ways, and the aggregator behind the wrappers any synchronous method may have (robust
bounding of each client's update, then the server moving average)."""

from __future__ import annotations

from dataclasses import dataclass

from fp8fl.federated.seams import Aggregator, Codec, Quantizer, SendsChanges
from fp8fl.methods.fp8 import Float32Codec
from fp8fl.methods.moving_average import MovingAverage
from fp8fl.methods.robust import robust_from
from fp8fl.run.config import RunConfig

__all__ = ["Built", "build", "build_codec", "build_downlink_codec", "build_quantizer"]


@dataclass(frozen=True)
class Built:
    """A run's components, built from its config and the model's layout."""

    quantizer: Quantizer
    codec: Codec  # the uplink's
    downlink_codec: Codec
    aggregator: Aggregator
    server_loop: str


def build_quantizer(config: RunConfig) -> Quantizer:
    return config.family.quantizer(config.settings, config)


def build_codec(config: RunConfig) -> Codec:
    """The uplink's codec."""
    return config.family.codec(config.settings, config)


def build_downlink_codec(config: RunConfig) -> Codec:
    return config.family.downlink_codec(config.settings, config)


def build(config: RunConfig, quantized: tuple[str, ...]) -> Built:
    """Every component of ``config``'s method; ``quantized`` names the weights the codec carries."""
    parts = config.components
    codec = build_codec(config)
    aggregator = config.family.aggregator(config.settings, config, quantized, codec)
    # robust bounding sees the clients' updates, before any moving average
    aggregator = robust_from(config.robust_aggregation, config.robust_norm_factor, aggregator)
    if parts.moving_average > 0:
        aggregator = MovingAverage(aggregator, parts.moving_average)
    downlink = build_downlink_codec(config)
    quantizer = build_quantizer(config)
    # a synchronous server adds each decoded Δ to its own global model, which is the model the
    # client started from only if the downlink carried that model exactly
    sends_changes = isinstance(quantizer, SendsChanges)
    if parts.synchronous and sends_changes and not isinstance(downlink, Float32Codec):
        raise ValueError(
            f"{config.method} sends its clients' changes Δ, which a synchronous server adds "
            f"to its global model: its downlink must carry that model exactly "
            f"({Float32Codec.name}), not {downlink.name}"
        )
    return Built(quantizer, codec, downlink, aggregator, parts.server_loop)
