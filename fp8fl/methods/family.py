"""A method family as one typed object: its settings, its presets, its components and how the
report shows it.

A family module (``fp8.py``, ``clipped_uniform.py``, ``lpt.py``, ``qafel.py``) exports one
``Family`` whose

* ``settings_type`` is a frozen ``Settings`` dataclass: one typed field per run-config key of the
  family, declared with ``setting`` (key, default, help, check);
* ``presets`` are named recipes, ``Settings`` values with a label, a colour and a source, as
  torchao's float8 recipes are; ``custom`` names a combination no preset names;
* ``components`` names its quantizer, codec, aggregator and server loop, and ``quantizer``,
  ``codec``, ``downlink_codec`` and ``aggregator`` build them;
* ``marker`` and the presets' labels and colours are its report hints.

The registry (``fp8fl.methods.registry``) is the list of families. Config validation, the
ClientApp, the ServerApp and the report ask the family; nothing outside it compares its name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Generic, Self, TypeVar

from fp8fl.federated.seams import Aggregator, Codec, Components, Quantizer, RunView

__all__ = [
    "Family",
    "Preset",
    "Setting",
    "Settings",
    "setting",
]

_SETTING = "fp8fl.setting"


@dataclass(frozen=True)
class Setting:
    """A run-config key of a family: its help, its check (a problem, or None when the value is
    fine) and whether it is one of the keys the presets set (``preset``; ``""`` then takes the
    preset's value). ``exclusive`` keys must keep their default in another family's run. A
    ``variant`` key changes the method rather than the experiment's setting: a run that sets it
    is reported as a variant of its preset (``lpt8(lpt-downlink=bfp)``)."""

    key: str
    help: str
    check: Callable[[Any], str | None] | None = None
    preset: bool = False
    exclusive: bool = False
    variant: bool = False


def setting(
    key: str,
    default: Any,
    help: str,
    check: Callable[[Any], str | None] | None = None,
    *,
    preset: bool = False,
    exclusive: bool = False,
    variant: bool = False,
) -> Any:
    """A field of a ``Settings`` dataclass: the run-config ``key`` with its default and check."""
    meta = Setting(key, help, check, preset, exclusive or preset, variant)
    return field(default=default, metadata={_SETTING: meta})


class Settings:
    """Base of a family's frozen settings dataclass: every field is a run-config key."""

    @classmethod
    @cache
    def declared(cls) -> Mapping[str, tuple[str, Setting, Any]]:
        """Run-config key -> (field name, its ``Setting``, its default), in field order; built
        once per settings class (every key look-up goes through it)."""
        return MappingProxyType(
            {
                f.metadata[_SETTING].key: (f.name, f.metadata[_SETTING], f.default)
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            }
        )

    @classmethod
    def preset_keys(cls) -> tuple[str, ...]:
        """The keys the family's presets set: which method a run is."""
        return tuple(k for k, (_, s, _) in cls.declared().items() if s.preset)

    @classmethod
    def variant_defaults(cls) -> dict[str, Any]:
        """The ``variant`` keys with their defaults."""
        return {k: d for k, (_, s, d) in cls.declared().items() if s.variant}

    def value(self, key: str) -> Any:
        return getattr(self, self.declared()[key][0])

    def to_mapping(self) -> dict[str, Any]:
        """Run-config key -> value."""
        return {key: getattr(self, name) for key, (name, _, _) in self.declared().items()}

    def with_values(self, values: Mapping[str, Any]) -> Self:
        """A copy with the run-config ``values`` (keys of this family) set."""
        declared = self.declared()
        return dataclasses.replace(  # type: ignore[type-var]
            self, **{declared[k][0]: v for k, v in values.items()}
        )

    def problems(self) -> list[str]:
        """Each key's own check, then the combinations that make no sense."""
        found = []
        for name, meta, _ in self.declared().values():
            if meta.check is not None and (problem := meta.check(getattr(self, name))):
                found.append(problem)
        return found + self.combination_problems()

    def combination_problems(self) -> list[str]:
        """Problems that need more than one of the family's keys (none by default)."""
        return []


S = TypeVar("S", bound=Settings)


@dataclass(frozen=True)
class Preset(Generic[S]):
    """A named recipe of a family: its settings, and how tables and plots show it."""

    name: str
    label: str
    color: str
    reference: str
    settings: S

    @property
    def recipe(self) -> dict[str, Any]:
        """The run-config values the preset sets (its family's preset keys)."""
        return {k: self.settings.value(k) for k in type(self.settings).preset_keys()}


@dataclass(frozen=True)
class Family(ABC, Generic[S]):
    """One method family (see the module docstring)."""

    name: str
    label: str  # its name in messages and on the frontier's legend
    marker: str  # its marker on the frontier plot
    reference: str
    settings_type: type[S]
    presets: tuple[Preset[S], ...]
    custom: Preset[S]
    asynchronous: bool = False  # buffered server loops: the report compares uploads to target

    @abstractmethod
    def components(self, settings: S, run: RunView) -> Components:
        """The registered names of the run's quantizer, codec, aggregator and server loop."""

    @abstractmethod
    def quantizer(self, settings: S, run: RunView) -> Quantizer: ...

    @abstractmethod
    def codec(self, settings: S, run: RunView) -> Codec:
        """The uplink's codec."""

    @abstractmethod
    def downlink_codec(self, settings: S, run: RunView) -> Codec: ...

    @abstractmethod
    def aggregator(
        self, settings: S, run: RunView, quantized: tuple[str, ...], codec: Codec
    ) -> Aggregator:
        """The server update; ``quantized`` names the weights the codec carries."""

    def problems(self, settings: S, run: RunView) -> list[str]:
        """What is wrong with the settings, found with every other problem of the run config:
        each key's check and their combinations, by default."""
        return settings.problems()

    def component_problems(self, settings: S, run: RunView) -> list[str]:
        """What is wrong with the run once every single value is valid (a list of bits against
        the model, the modifiers the components cannot take); none by default."""
        return []

    def optimizer(self, settings: S) -> str | None:
        """The optimizer of the quantizer's own local step, when it brings one."""
        return None

    def partition_formats(self, settings: S, run: RunView) -> tuple[str, ...]:
        """The number format of every partition's client in a mixed-precision run; ``()`` when
        every client uses the run's ``format`` (the only choice unless a family says otherwise)."""
        return ()

    def client_view(self, settings: S, fmt: str) -> tuple[S, str]:
        """The settings and format the clients of format ``fmt`` of a mixed-precision run use."""
        raise TypeError(f"the {self.label} methods have no clients in formats of their own")

    def idle_keys(self, values: Mapping[str, Any]) -> frozenset[str]:
        """Report hint: the run-config keys that do nothing in a run with these ``values`` (the
        family's own keys as given, or unset), so that runs differing only there share a
        setting; none by default."""
        return frozenset()

    def preset(self, name: str) -> Preset[S]:
        """A preset or the custom method of this family, by name (KeyError otherwise)."""
        return {p.name: p for p in (*self.presets, self.custom)}[name]

    def resolve(self, settings: S) -> Preset[S]:
        """The first preset whose preset keys ``settings`` match, else the custom method."""
        keys = self.settings_type.preset_keys()
        return next(
            (
                p
                for p in self.presets
                if all(settings.value(k) == p.settings.value(k) for k in keys)
            ),
            self.custom,
        )
