"""Robust aggregation (per-entry norm bounding, ``fp8fl.methods.robust``) in front of every
method's aggregator, against the hostile clients' well-formed updates."""

import functools
import math

import pytest
import torch

from clients.hostile_client import negate_model, scale_ranges
from fp8fl.federated.seams import ClientUpdate
from fp8fl.methods.robust import ClipReport, NormBound, bound_updates
from fp8fl.run.components import build
from fp8fl.run.config import ConfigError, RunConfig
from fp8fl.run.training import build_run_model, run_layout

HONEST, HOSTILE = 8, (8, 9)  # partitions 0..7 honest, 8 and 9 hostile
NOISE = 0.01  # relative size of an honest client's change


def _aggregator(method: str, rule: str):
    config = RunConfig.from_mapping({"method": method, "robust-aggregation": rule})
    model = build_run_model(config, 10)
    return build(config, run_layout(config, model).quantized).aggregator


@functools.cache
def _updates(method: str, attack: str):
    """The global state and ten decoded updates of ``method`` (seeded): honest ones are the
    global model plus small noise, sent through the codec; two are hostile. Cached: encoding
    (OCTAV, block-FP) is the slow part, and both rules see the same updates."""
    config = RunConfig.from_mapping({"method": method})
    torch.manual_seed(0)
    model = build_run_model(config, 10)
    layout = run_layout(config, model)
    built = build(config, layout.quantized)
    if built.quantizer.calibrates:
        built.quantizer.calibrate(model, torch.randn(16, 3, 32, 32))
    global_state = {k: v.float() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    updates = []
    for k in range(HONEST + len(HOSTILE)):
        noise = {
            n: v * (1 + NOISE * torch.randn(v.shape, generator=generator))
            for n, v in global_state.items()
        }
        arrays = layout.pack(noise, built.codec, generator)
        if k in HOSTILE:
            if attack == "scale-ranges":
                arrays = scale_ranges(layout, built.codec, arrays)
            else:
                arrays = negate_model(layout, built.codec, arrays, generator)
        state, side = layout.unpack_with_side(arrays, built.codec)
        updates.append(ClientUpdate(k, 100, state, {}, side))
    return global_state, updates


def _largest_change(global_state, state) -> float:
    """max over entries of ‖state − global‖ / ‖global‖."""
    return max(
        float(torch.linalg.vector_norm(state[n].double() - g.double()))
        / max(float(torch.linalg.vector_norm(g.double())), 1e-12)
        for n, g in global_state.items()
    )


@pytest.mark.parametrize(
    ("method", "attack"),
    [
        ("uq", "scale-ranges"),
        ("uq", "negate-model"),
        ("uq+", "scale-ranges"),
        ("bq", "negate-model"),
        ("fp32", "negate-model"),  # the FP32 and LPT-FL methods send no ranges to scale
        ("cq8", "scale-ranges"),
        ("cq8", "negate-model"),
        ("lpt8", "negate-model"),
    ],
)
def test_the_bound_keeps_every_entry_of_every_method_near_the_honest_changes(method, attack):
    """Honest clients change each entry by about NOISE (relative, plus the wire's rounding); the
    hostile ones by 10 to 1000x. Without the rule some entry moves far; with it every entry of
    the aggregate stays within the honest clients' largest change (each clipped update lies
    within factor x median <= the largest honest ‖Δ‖ of the global model, and the aggregate of
    the averages and the moving average is a convex combination of them)."""
    global_state, updates = _updates(method, attack)
    attacked = _aggregator(method, "none").aggregate(global_state, updates, 1).state
    assert _largest_change(global_state, attacked) > 1.0
    aggregator = _aggregator(method, "norm-bound")
    honest = max(_largest_change(global_state, u.state) for u in updates[:HONEST])
    robust = aggregator.aggregate(global_state, updates, 1)
    slack = 1.05 if method == "uq+" else 1.0 + 1e-6  # ServerOptimize's STE steps leave w̄ a little
    assert _largest_change(global_state, robust.state) <= honest * slack
    assert set(robust.metrics["clipped"]) >= {"8", "9"}
    for pid in ("8", "9"):
        assert robust.metrics["clipped"][pid].max_ratio > 5


def test_updates_inside_the_bound_pass_bit_for_bit():
    global_state, updates = _updates("uq", "scale-ranges")
    aggregator = _aggregator("uq", "norm-bound")
    honest = updates[:HONEST]
    bounded, report = bound_updates(global_state, honest, factor=1e6)
    assert report == {}
    for before, after in zip(honest, bounded):
        assert all(torch.equal(before.state[n], after.state[n]) for n in before.state)
    assert isinstance(aggregator, NormBound)
    plain = aggregator.inner.aggregate(global_state, honest, 1).state
    wide = NormBound(aggregator.inner, 1e6).aggregate(global_state, honest, 1).state
    assert all(torch.equal(plain[n], wide[n]) for n in plain)


def test_a_clipped_change_has_exactly_the_bound_and_keeps_its_direction():
    global_state = {"a": torch.zeros(3), "alpha": torch.tensor(1.0)}
    deltas = [1.0, 2.0, 3.0, 4.0, 1000.0]  # median 3
    updates = [
        ClientUpdate(k, 10, {"a": torch.tensor([d, 0.0, 0.0]), "alpha": torch.tensor(1.0 + e)})
        for k, (d, e) in enumerate(zip(deltas, [1.0, 2.0, 3.0, 4.0, 10.0]))
    ]
    bounded, report = bound_updates(global_state, updates, factor=1.0)
    assert [float(u.state["a"][0]) for u in bounded] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert [float(u.state["alpha"]) for u in bounded] == [2.0, 3.0, 4.0, 4.0, 4.0]
    assert report["4"] == ClipReport(clipped=2, of=2, max_ratio=333.3, worst="a")
    assert set(report) == {"3", "4"}


def test_side_information_is_bounded_around_the_clients_median():
    """A client that claims a tiny quantization MSE (to take the inverse-MSE average) is pulled
    to within factor x the median absolute deviation of the median."""
    errors = [1.0e-5, 1.1e-5, 0.9e-5, 1.2e-5, 1e-12]
    updates = [
        ClientUpdate(k, 10, {"w": torch.zeros(1)}, side={"w:mse": torch.tensor(e)})
        for k, e in enumerate(errors)
    ]
    bounded, report = bound_updates({"w": torch.zeros(1)}, updates, factor=2.0)
    median = 1.0e-5
    mad = 0.1e-5  # median of |e - median|: 0, 0.1, 0.1, 0.2, ~1 (x 1e-5)
    hostile = float(bounded[4].side["w:mse"])
    assert math.isclose(hostile, median - 2.0 * mad, rel_tol=1e-5)
    assert set(report) == {"4"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"robust-aggregation": "median"}, "robust-aggregation must be one of none, norm-bound"),
        ({"robust-norm-factor": 0.5}, "robust-norm-factor must be >= 1"),
    ],
)
def test_bad_settings_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_the_rule_wraps_every_method_under_its_moving_average():
    config = RunConfig.from_mapping({"method": "lpt8", "robust-aggregation": "norm-bound"})
    aggregator = build(config, ("w",)).aggregator
    assert aggregator.name == "moving-average" and isinstance(aggregator.inner, NormBound)
    assert build(RunConfig.from_mapping({"method": "uq"}), ("w",)).aggregator.name == "average"
