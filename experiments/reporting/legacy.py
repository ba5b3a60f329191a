"""Run records made before a run-config key existed, read as what they ran.

A key added later gives new runs its default; a record made before the key existed lacks it and
ran what the key now names otherwise. Issue 34 changed two grids and LPT-FL's quantization
points, and added their keys:

* ``cq-grid`` (new default "symmetric"): a record without it ran the clipped-uniform grid in
  two's complement, so it reads as ``cq-grid = "twos-complement"`` (a cq run from before is
  labelled "CQ 4-bit (cq-grid=twos-complement)" beside the new "CQ 4-bit");
* ``qafel-minmax`` (new default "flsim"): a record without it whose ``qafel-uplink`` or
  ``qafel-downlink`` is ``minmax<b>`` ran the min–max grid anchored at the tensor's minimum, so it
  reads as ``qafel-minmax = "anchored"``;
* ``lpt-points`` (new default "authors"): a record without it quantized the input and output of
  every conv/linear, so it reads as ``lpt-points = "conv-linear-io"``.

The key is filled in only when missing, so records that hold it are read as written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEGACY_VALUES", "upgrade_config"]

LEGACY_VALUES = {
    "cq-grid": "twos-complement",
    "qafel-minmax": "anchored",
    "lpt-points": "conv-linear-io",
}
"""What each key's behaviour was before the key existed."""


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a record's run config) with the keys it predates set to what it ran."""
    out = dict(config)
    out.setdefault("cq-grid", LEGACY_VALUES["cq-grid"])
    out.setdefault("lpt-points", LEGACY_VALUES["lpt-points"])
    wires = (str(out.get("qafel-uplink", "")), str(out.get("qafel-downlink", "")))
    if any(w.startswith("minmax") for w in wires):
        out.setdefault("qafel-minmax", LEGACY_VALUES["qafel-minmax"])
    return out
