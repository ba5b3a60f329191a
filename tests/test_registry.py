"""The method registry is the one source of methods: the README's method table, the preset tables of
the family pages (docs/methods/), the report's labels and colours, the server loops and the
checkpoint all agree with it, and every codec states the exact size of what it sends."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clients.app import CLIENTS
from experiments.reporting.plots import METHOD_COLORS
from experiments.reporting.runs import METHOD_LABELS
from fp8fl.federated.wire import StateLayout
from fp8fl.methods import registry
from fp8fl.methods.fp8 import FP8Settings
from fp8fl.methods.registry import FAMILIES, METHODS, family_of
from fp8fl.run.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fp8fl.run.components import build
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import build_run_model
from strategies.loops import SERVER_LOOPS

ROOT = Path(__file__).resolve().parents[1]


# Each method family's page: its presets' table, the table the README's rows link to.
FAMILY_PAGES = {
    "fp8": "docs/methods/fp8.md",
    "cq": "docs/methods/clipped_uniform.md",
    "lpt": "docs/methods/lpt.md",
    "qafel": "docs/methods/qafel.md",
    "qsgd": "docs/methods/qsgd.md",
}


def method_rows(path: str) -> dict[str, list[str]]:
    """The table rows of ``path`` that name a registered method: ``| `name` | cell | ... |``."""
    text = (ROOT / path).read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", text, re.MULTILINE)
    return {name: [c.strip() for c in rest.split("|")] for name, rest in rows if name in METHODS}


def test_the_readme_method_table_is_the_registry():
    """One row per preset, in the registry's order: its label, a link to its family's page and
    the run-config values the preset sets (``key=value, ...``)."""
    rows = method_rows("README.md")
    assert list(rows) == list(METHODS)
    for name, spec in METHODS.items():
        label, family, preset, *_ = rows[name]
        assert label == spec.label, name
        assert f"]({FAMILY_PAGES[family_of(name).name]})" in family, name
        assert preset == ", ".join(f"{k}={v}" for k, v in spec.recipe.items()), name


def test_each_family_page_lists_its_presets_as_the_registry():
    """A family page's preset table: a column per key the presets set, a row per preset."""
    assert set(FAMILY_PAGES) == {family.name for family in FAMILIES}
    for family, page in FAMILY_PAGES.items():
        specs = {name: spec for name, spec in METHODS.items() if family_of(name).name == family}
        text = (ROOT / page).read_text()
        header = re.search(r"^\| `method` \| label \| (.+) \|$", text, re.MULTILINE)
        assert header, page
        keys = [c.strip() for c in header.group(1).split("|")]
        rows = method_rows(page)
        assert list(rows) == list(specs), page
        for name, spec in specs.items():
            label, *cells = rows[name]
            assert label == spec.label, (page, name)
            assert keys[: len(spec.recipe)] == list(spec.recipe), (page, name)
            assert cells[: len(spec.recipe)] == list(spec.recipe.values()), (page, name)


def test_the_report_takes_labels_and_colours_from_the_registry():
    assert {m: s.label for m, s in METHODS.items()} == METHOD_LABELS
    assert {m: s.color for m, s in METHODS.items()} == METHOD_COLORS
    assert len({s.color for s in METHODS.values()}) == len(METHODS)  # one colour per method


def test_every_server_loop_has_flower_code_and_every_method_builds_the_components_it_names():
    assert set(SERVER_LOOPS) == set(registry.SERVER_LOOPS) == set(CLIENTS)
    for name in METHODS:
        config = RunConfig.from_mapping({"method": name})
        parts = config.components
        built = build(config, ())
        assert parts.server_loop in SERVER_LOOPS and built.server_loop == parts.server_loop
        assert built.quantizer.name == parts.quantizer, name
        assert built.aggregator.name in (parts.aggregator, "moving-average"), name


def test_a_synchronous_method_that_sends_changes_needs_an_exact_downlink(monkeypatch):
    # the server adds each Δ to its own model: a lossy downlink would make it add Δ to a model
    # the client never trained from, so building such a method fails instead of drifting
    config = RunConfig.from_mapping({"method": "qsgd8b512"})
    assert build(config, ()).downlink_codec.name == "fp32"
    lossy = SimpleNamespace(name="e4m3")
    monkeypatch.setattr(type(config.family), "downlink_codec", lambda self, s, run: lossy)
    with pytest.raises(ValueError, match=r"qsgd8b512 sends its clients' changes.*not e4m3"):
        build(config, ())


def test_a_family_s_keys_are_typed_fields_that_its_presets_fill_and_its_checks_guard():
    """The run config's family keys land in the family's settings, typed by their defaults; a
    preset fills only its preset keys; a wrong type or value is reported by key."""
    config = RunConfig.from_mapping({"method": "uq+", "server-opt-steps": 3})
    assert isinstance(config.settings, FP8Settings)
    assert (config.settings.server_opt, config.settings.server_opt_steps) == ("mse", 3)
    assert config.preset.recipe == {"qat": "nearest", "wire": "stochastic", "server-opt": "mse"}
    cq = RunConfig.from_mapping({"method": "cq4", "cq-grid": "twos-complement"})
    assert (cq.settings.bits, cq.settings.grid, cq.method) == ("4", "twos-complement", "cq4")
    with pytest.raises(ConfigError, match="server-opt-steps must be int"):
        RunConfig.from_mapping({"method": "uq+", "server-opt-steps": "three"})
    with pytest.raises(ConfigError, match="server-opt-grid must be >= 1"):
        RunConfig.from_mapping({"method": "uq+", "server-opt-grid": 0})
    with pytest.raises(ConfigError, match="cq-bits applies to the clipped-uniform methods only"):
        RunConfig.from_mapping({"method": "uq", "cq-bits": "4"})
    # another family's non-exclusive key is kept as given, recorded, and unused
    shared = RunConfig.from_mapping({"method": "fp32", "lpt-points": "conv-linear-io"})
    assert shared.to_mapping()["lpt-points"] == "conv-linear-io"
    assert shared.settings == RunConfig.from_mapping({"method": "fp32"}).settings


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("fmt", ["e4m3", "e2m1"])
def test_each_codec_states_the_exact_size_of_what_it_sends(method, fmt):
    config = RunConfig.from_mapping({"method": method, "format": fmt})
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = StateLayout.from_model(model)
    codec = build(config, layout.quantized).codec
    arrays = layout.pack(model.state_dict(), codec, torch.Generator().manual_seed(1))
    assert sum(a.nbytes for a in arrays) == layout.nbytes(codec)
    assert [(a.dtype, a.size) for a in arrays] == [
        (s.dtype, s.size) for s in layout.array_specs(codec)
    ]


def test_checkpoints_carry_the_aggregator_state_and_old_ones_still_load(tmp_path):
    state = {"w": torch.arange(3.0)}
    memory = {"moving_average.w": torch.ones(3)}
    save_checkpoint(tmp_path, Checkpoint(2, state, {"up": 1, "down": 2}, {"seed": 0}, {}, memory))
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.aggregator["moving_average.w"], memory["moving_average.w"])
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["version"] = 1
    del payload["aggregator"]
    torch.save(payload, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path).aggregator == {}


def test_stateless_aggregators_refuse_a_state_they_never_wrote():
    config = RunConfig.from_mapping({"method": "uq"})
    aggregator = build(config, ("fc.weight",)).aggregator
    assert aggregator.state_dict() == {}
    with pytest.raises(ValueError, match="keeps no state"):
        aggregator.load_state_dict({"x": torch.zeros(1)})


def test_component_options_are_validated_by_the_component_all_at_once():
    with pytest.raises(ValueError) as err:
        RunConfig.from_mapping({"server-opt-steps": -1, "server-opt-grid": 0, "lr": -1.0})
    message = str(err.value)
    assert "server-opt-steps must be >= 0" in message and "server-opt-grid must be >= 1" in message
    assert "lr must be > 0" in message
    assert np.isfinite(RunConfig.from_mapping({}).to_mapping()["server-opt-steps"])
