"""FedAvg with QSGD-compressed updates up and the FP32 model down: the synchronous update-
compression baseline of many papers (FedPAQ, Reisizadeh et al., AISTATS 2020, arXiv:1909.13014;
the quantizer is QSGD's, Alistarh et al., NeurIPS 2017, arXiv:1610.02132).

Each sampled client trains the FP32 model it was sent and sends its change Δ = y − x, every
floating-point tensor of it QSGD-quantized with ``qsgd-bits`` bits (sign included: 2^(b−1) − 1
levels) per bucket of ``qsgd-bucket`` consecutive elements, each bucket with its float32 norm
(``qsgd-bucket = 0``: one norm per tensor), stochastic rounding, so Q(Δ) is unbiased. The server
adds each decoded Δ to the global model it sent and takes the n_k-weighted average (FedAvg).
The preset ``qsgd8b512`` is 8 bits per bucket of 512, ~8.06 bits per weight up.
"""

from __future__ import annotations

from dataclasses import dataclass

from fp8fl.federated.seams import Aggregator, Codec, Components, RunView
from fp8fl.methods.family import Family, Preset, Settings, setting
from fp8fl.methods.fp8 import Average, Float32Codec
from fp8fl.methods.qafel import DeltaTraining, QSGDCodec

__all__ = ["QSGD", "QSGDFamily", "QSGDSettings"]

BITS = range(2, 9)


def _bits_problem(value: str) -> str | None:
    if value == "" or (value.isdigit() and int(value) in BITS):
        return None
    return f"qsgd-bits must be an integer in 2..8 (sign included), got {value!r}"


def _bucket_problem(value: str) -> str | None:
    if value == "" or value.isdigit():
        return None
    return f"qsgd-bucket must be a number of elements, 0 for one bucket per tensor, got {value!r}"


@dataclass(frozen=True)
class QSGDSettings(Settings):
    """The QSGD uplink's keys (``""``: the preset's)."""

    bits: str = setting(
        "qsgd-bits", "", "bits per element of Q(Δ), sign included", _bits_problem, preset=True
    )
    bucket: str = setting(
        "qsgd-bucket",
        "",
        "elements per QSGD bucket, each with its float32 norm (0: one per tensor)",
        _bucket_problem,
        preset=True,
    )


@dataclass(frozen=True)
class QSGDFamily(Family[QSGDSettings]):
    """FP32 local training; Δ up through QSGD; the FP32 model down; FedAvg."""

    def components(self, settings: QSGDSettings, run: RunView) -> Components:
        return Components(
            quantizer=DeltaTraining.name,
            codec=QSGDCodec.name,
            aggregator=Average.name,
            downlink=Float32Codec.name,
            moving_average=run.moving_average,
        )

    def quantizer(self, settings: QSGDSettings, run: RunView) -> DeltaTraining:
        return DeltaTraining()

    def codec(self, settings: QSGDSettings, run: RunView) -> QSGDCodec:
        return QSGDCodec(int(settings.bits), int(settings.bucket) or None)

    def downlink_codec(self, settings: QSGDSettings, run: RunView) -> Codec:
        return Float32Codec()

    def aggregator(
        self, settings: QSGDSettings, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> Aggregator:
        return Average(quantized)

    def component_problems(self, settings: QSGDSettings, run: RunView) -> list[str]:
        """The quantizer needs its bits and its bucket (a preset's or given)."""
        return [
            f"{key} must be set for a QSGD method without a preset"
            for key in ("qsgd-bits", "qsgd-bucket")
            if settings.value(key) == ""
        ]


_FEDPAQ = "FedPAQ (Reisizadeh et al., arXiv:1909.13014) with QSGD (arXiv:1610.02132)"
QSGD = QSGDFamily(
    name="qsgd",
    label="QSGD",
    marker="v",
    reference=_FEDPAQ,
    settings_type=QSGDSettings,
    presets=(
        Preset(
            "qsgd8b512", "FedAvg + QSGD 8/512", "mediumvioletred", _FEDPAQ, QSGDSettings("8", "512")
        ),
    ),
    custom=Preset(
        "qsgd-custom", "QSGD custom", "tab:gray", "QSGD settings no preset names", QSGDSettings()
    ),
)
"""FedAvg with a QSGD-bucketed uplink and an FP32 downlink: qsgd8b512."""
