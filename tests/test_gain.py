"""The §5.3 communication gain (experiments.reporting.gain) on hand-made curves with known answers."""

import math

import numpy as np
import pytest

from experiments.reporting.gain import (
    Curve,
    accuracy_range,
    communication_gain,
    curve_from_rounds,
    first_reach,
    mean_curve,
)

MB = 1_000_000


def curve(accuracy, round_bytes=4 * MB):
    """Rounds 0..R with ``accuracy`` (None = not evaluated) and ``round_bytes`` sent per round."""
    return curve_from_rounds(
        {"round": r, "accuracy": a, "cum_bytes": r * round_bytes} for r, a in enumerate(accuracy)
    )


FP32 = [0.10, 0.40, 0.60, 0.70, 0.75]


def test_identical_curves_have_gain_exactly_one():
    gain = communication_gain(curve(FP32), curve(FP32))
    assert gain.value == 1.0
    assert gain.target == 0.75 and gain.baseline_bytes == gain.method_bytes == 16 * MB


def test_same_accuracy_with_four_times_fewer_bytes_has_gain_exactly_four():
    gain = communication_gain(curve(FP32), curve(FP32, round_bytes=MB))
    assert gain.value == 4.0
    assert (gain.baseline_bytes, gain.method_bytes) == (16 * MB, 4 * MB)


def test_a_method_below_fp32s_best_is_compared_at_its_own_best():
    # the method peaks at 0.60 (round 3); FP32 first reaches 0.60 at round 2
    gain = communication_gain(curve(FP32), curve([0.10, 0.30, 0.50, 0.60, 0.55], round_bytes=MB))
    assert gain.target == 0.60
    assert (gain.baseline_bytes, gain.method_bytes) == (8 * MB, 3 * MB)
    assert gain.value == pytest.approx(8 / 3)


def test_a_method_above_fp32_is_compared_at_fp32s_best():
    # FP32 peaks at 0.75 (round 4); the method first passes 0.75 at round 2
    gain = communication_gain(curve(FP32), curve([0.10, 0.50, 0.80, 0.85, 0.90], round_bytes=MB))
    assert gain.target == 0.75
    assert (gain.baseline_bytes, gain.method_bytes) == (16 * MB, 2 * MB)
    assert gain.value == 8.0


def test_the_first_crossing_counts_not_the_best_round():
    # acc* = FP32's best 0.75; the method passes it at round 1, dips, and peaks at round 3
    method = curve([0.10, 0.80, 0.70, 0.90, 0.85], round_bytes=MB)
    gain = communication_gain(curve(FP32), method)
    assert gain.target == 0.75 and gain.method_bytes == 1 * MB and gain.value == 16.0
    # a non-monotone baseline: acc* = 0.55 is first reached at round 1, not at its best round 4
    baseline = curve([0.10, 0.56, 0.40, 0.50, 0.60])
    gain = communication_gain(baseline, curve([0.10, 0.20, 0.30, 0.40, 0.55], round_bytes=MB))
    assert gain.baseline_bytes == 4 * MB and gain.method_bytes == 4 * MB and gain.value == 1.0


def test_curves_that_never_rise_above_round_zero_have_no_gain():
    flat = curve([0.10, 0.10, 0.09, 0.08])
    assert communication_gain(flat, curve(FP32)) is None  # FP32 learnt nothing
    assert communication_gain(curve(FP32), flat) is None  # the method learnt nothing
    assert communication_gain(flat, flat) is None


@pytest.mark.parametrize(
    "baseline, method",
    [
        (None, curve(FP32)),
        (curve(FP32), None),
        (curve([]), curve(FP32)),
        (curve(FP32), curve([])),
        (curve(FP32), curve([None, None, None])),
    ],
)
def test_missing_or_empty_curves_have_no_gain(baseline, method):
    assert communication_gain(baseline, method) is None


def test_rounds_without_evaluation_are_skipped():
    sparse = curve([0.10, None, 0.60, None, 0.75])
    assert sparse.rounds.tolist() == [0, 2, 4]
    assert sparse.cum_bytes.tolist() == [0, 8 * MB, 16 * MB]
    assert first_reach(sparse, 0.5) == 8 * MB  # round 1 is not evaluated: round 2 is first
    assert communication_gain(curve(FP32), sparse).value == 1.0
    nan = curve_from_rounds(
        [
            {"round": 0, "accuracy": math.nan, "cum_bytes": 0},
            {"round": 1, "accuracy": 0.5, "cum_bytes": MB},
        ]
    )
    assert nan.rounds.tolist() == [1]


def test_records_are_read_in_round_order_once_each():
    records = [
        {"round": 2, "accuracy": 0.6, "cum_bytes": 2 * MB},
        {"round": 0, "accuracy": 0.1, "cum_bytes": 0},
        {"round": 1, "accuracy": 0.5, "cum_bytes": MB},
    ]
    assert curve_from_rounds(records).rounds.tolist() == [0, 1, 2]
    repeated = curve_from_rounds([*records, {"round": 2, "accuracy": 0.7, "cum_bytes": 2 * MB}])
    assert repeated.rounds.tolist() == [0, 1, 2] and repeated.accuracy[2] == 0.7


def test_first_reach_is_none_when_never_reached():
    assert first_reach(curve(FP32), 0.76) is None
    assert first_reach(curve(FP32), 0.75) == 16 * MB


def test_seed_mean_uses_only_rounds_evaluated_in_every_seed():
    a = curve([0.10, 0.40, 0.60, 0.70])
    b = curve([0.20, None, 0.80, 0.90])
    c = Curve(np.array([0, 2, 3]), np.array([0.0, 10.0 * MB, 15.0 * MB]), np.array([0.0, 0.7, 0.8]))
    mean = mean_curve([a, b, c])
    assert mean.rounds.tolist() == [0, 2, 3]
    np.testing.assert_allclose(mean.accuracy, [0.10, 0.70, 0.80])
    np.testing.assert_allclose(mean.cum_bytes, [0, 26 * MB / 3, 13 * MB])
    low, high = accuracy_range([a, b, c])
    np.testing.assert_allclose(low, [0.0, 0.6, 0.7])
    np.testing.assert_allclose(high, [0.2, 0.8, 0.9])


def test_float_round_off_of_seed_means_is_not_a_miss():
    baseline = mean_curve([curve([0.1, 0.5, 0.7, 0.8])] * 3)  # round 2: 0.6999999999999998
    method = mean_curve([curve([0.1, 0.4, 0.6, 0.7], MB)] * 2)  # best 0.7
    assert baseline.accuracy[2] < 0.7
    gain = communication_gain(baseline, method)
    assert gain.baseline_bytes == 8 * MB and gain.method_bytes == 3 * MB


def test_seed_mean_of_no_curves_is_empty_and_has_no_gain():
    assert len(mean_curve([])) == 0
    assert [len(x) for x in accuracy_range([])] == [0, 0]
    assert communication_gain(mean_curve([]), curve(FP32)) is None


def test_gain_on_seed_means_differs_from_the_mean_of_per_seed_gains():
    """The documented choice: one gain on the seed-mean curves, not the mean of per-seed gains."""
    fp32 = [curve([0.1, 0.5, 0.7]), curve([0.1, 0.8, 0.9])]
    uq = [curve([0.1, 0.6, 0.8], MB), curve([0.1, 0.6, 0.8], MB)]
    # seed means: FP32 0.1, 0.65, 0.8 and UQ 0.1, 0.6, 0.8 both first reach 0.8 at round 2
    assert communication_gain(mean_curve(fp32), mean_curve(uq)).value == 4.0
    # per seed: acc* = 0.7 (round 2 for both), then acc* = 0.8 (FP32 round 1, UQ round 2)
    assert [communication_gain(f, u).value for f, u in zip(fp32, uq)] == [4.0, 2.0]
