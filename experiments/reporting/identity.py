"""Which method a run is, as the report tells methods apart: a small dataclass read from a run's
recorded run config, never parsed back from a name.

A run is its ``method`` (a preset, or a family's custom method), with

* a custom method's preset-key values (``qafel-custom(qsgd8/qsgd8/hidden)``) and the family's
  variant keys it changed (``lpt8(lpt-downlink=bfp)``, ``cq4(cq-grid=twos-complement)``);
* the modifiers around any method: mixed client formats (``uq[fp32:0.3,e4m3:0.7]``), per-layer
  and downlink formats (``uq{fc1:e2m1,down:e3m2}``), the server moving average (``fp32+ma0.9``)
  and the lossless stage (``uq+lossless``, ``uq+context``).

``MethodId.name`` writes that as one string, the key of the report's tables, plots and CSV files
(unchanged from the records made before the identity was a dataclass); ``label`` is what a
legend or a table header shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fp8fl.methods.family import Family
from fp8fl.methods.registry import METHODS, family_of

__all__ = ["MethodId"]

_PRESETS = list(METHODS)


@dataclass(frozen=True)
class _Spelling:
    """How a name or a label writes each difference from the plain preset (``str.format``)."""

    variant: str
    client_formats: str
    layers: str
    moving_average: str
    context: str
    lossless: str


_NAME = _Spelling("({})", "[{}]", "{{{}}}", "+ma{:g}", "+context", "+lossless")
_LABEL = _Spelling(
    " ({})", " mixed({})", " layers({})", " + MA λ={:g}", " + context coding", " + lossless"
)


@dataclass(frozen=True)
class MethodId:
    """A run's method: its family (None for a name this registry does not know), the run-config
    ``method``, the settings that make it a variant, and its modifiers."""

    method: str
    family: Family[Any] | None = None
    switches: tuple[str, ...] = ()  # a custom method's preset-key values, in key order
    changed: tuple[tuple[str, Any], ...] = ()  # variant keys off their defaults
    client_formats: str = ""
    layers: str = ""  # layer-formats, then the downlink's own format as down:<format>
    moving_average: float = 0.0
    lossless: bool | str = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> MethodId:
        """The identity of the run whose recorded run config is ``config``."""
        method = config["method"]
        try:
            family: Family[Any] | None = family_of(method)
        except KeyError:
            family = None
        switches: tuple[str, ...] = ()
        changed: tuple[tuple[str, Any], ...] = ()
        if family is not None:
            settings = family.settings_type
            if method == family.custom.name:
                switches = tuple(str(config.get(k)) for k in settings.preset_keys())
            changed = tuple(
                (k, config[k])
                for k, default in settings.variant_defaults().items()
                if config.get(k, default) != default
            )
        layers = config.get("layer-formats") or ""
        if down := config.get("downlink-format"):
            layers += f"{',' if layers else ''}down:{down}"
        return cls(
            method,
            family,
            switches,
            changed,
            config.get("client-formats") or "",
            layers,
            config.get("moving-average") or 0.0,
            config.get("lossless") or False,
        )

    @property
    def _variant(self) -> str:
        parts = ["/".join(self.switches), ", ".join(f"{k}={v}" for k, v in self.changed)]
        return ", ".join(p for p in parts if p)

    def _spell(self, head: str, spelling: _Spelling) -> str:
        """``head``, then each difference from the plain preset in ``spelling``'s words."""
        parts = [head]
        if variant := self._variant:
            parts.append(spelling.variant.format(variant))
        if self.client_formats:
            parts.append(spelling.client_formats.format(self.client_formats))
        if self.layers:
            parts.append(spelling.layers.format(self.layers))
        if self.moving_average:
            parts.append(spelling.moving_average.format(self.moving_average))
        if self.lossless:
            parts.append(spelling.context if self.lossless == "context" else spelling.lossless)
        return "".join(parts)

    @property
    def name(self) -> str:
        """One string: ``method(variant)[client formats]{layers}+maλ+lossless``."""
        return self._spell(self.method, _NAME)

    @property
    def label(self) -> str:
        """The preset's label (a custom method's its family's), then each difference in words."""
        head = self.method if self.family is None else self.family.preset(self.method).label
        return self._spell(head, _LABEL)

    @property
    def order(self) -> tuple[int, str]:
        """Registry order of the preset, each variant or modified method right after it."""
        rank = _PRESETS.index(self.method) if self.method in _PRESETS else len(_PRESETS)
        return rank, self.name

    @property
    def asynchronous(self) -> bool:
        """Whether its family runs on a buffered (asynchronous) server loop."""
        return self.family is not None and self.family.asynchronous
