"""Every method by name: the registry is the list of method families.

Each family (``fp8fl.methods.family.Family``, one per module of ``fp8fl/methods/``) brings its
typed settings, its presets, its components and its report hints. Config validation, the sweep,
the report and the README's method table are generated from or checked against ``FAMILIES``.

Adding a method: write its family in one module of ``fp8fl/methods/`` (see
``docs/architecture.md``) and add it to ``FAMILIES`` here.
"""

from __future__ import annotations

from typing import Any

from fp8fl.methods.clipped_uniform import CLIPPED_UNIFORM
from fp8fl.methods.family import Family, Preset
from fp8fl.methods.fp8 import FP8
from fp8fl.methods.lpt import LPT
from fp8fl.methods.qafel import QAFEL
from fp8fl.methods.qsgd import QSGD

__all__ = ["FAMILIES", "METHODS", "SERVER_LOOPS", "family_of"]

FAMILIES: tuple[Family[Any], ...] = (FP8, CLIPPED_UNIFORM, LPT, QAFEL, QSGD)
METHODS: dict[str, Preset[Any]] = {p.name: p for f in FAMILIES for p in f.presets}
"""Every preset by name, family by family in registry order."""
SERVER_LOOPS = ("sync", "buffered-simulated", "buffered-real")
"""Server loops by name; their Flower code lives in ``strategies.loops``."""


def family_of(method: str) -> Family[Any]:
    """The family of a preset or of a family's custom method; raises KeyError for an unknown
    name."""
    for family in FAMILIES:
        if method in (p.name for p in (*family.presets, family.custom)):
            return family
    raise KeyError(method)
