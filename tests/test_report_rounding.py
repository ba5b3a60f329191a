"""The rounding-gap figure (experiments.reporting.rounding) and the paper's numbers beside
Tables 1 and 3, on synthetic results folders with hand-computed answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.reporting.rounding import Band, falls_behind, rounding_gap
from experiments.reporting.runs import Setting, find_runs, group_settings
from tests.test_report import ABSENT, read_csv, report, table_row, write_run

BQ = {
    0: [0.10, 0.50, 0.60, 0.70],
    1: [0.10, 0.48, 0.62, 0.66],
    2: [0.10, 0.52, 0.58, 0.71],
    5: [0.10, 0.10, 0.10, 0.10],  # no UQ run of seed 5
}
UQ = {
    0: [0.10, 0.51, 0.63, 0.73],
    1: [0.10, 0.50, 0.64, 0.70],
    2: [0.10, 0.50, 0.62, 0.72],
    3: [0.10, 0.90, 0.90, 0.90],  # no BQ run of seed 3
}
# BQ − UQ per paired seed (0, 1, 2) in points: round 0: 0, 0, 0; round 1: −1, −2, +2;
# round 2: −3, −2, −4; round 3: −3, −4, −1


def write_pair(root: Path, bq: dict[int, list], uq: dict[int, list], **kwargs) -> None:
    for method, seeds in (("bq", bq), ("uq", uq)):
        for seed, accuracy in seeds.items():
            write_run(root, method, seed, accuracy, **kwargs.get(f"{method}{seed}", {}))


def only_setting(root: Path) -> Setting:
    [setting] = group_settings(find_runs([root]).runs)
    return setting


def test_the_gap_is_the_mean_min_and_max_of_per_seed_differences(tmp_path):
    write_pair(tmp_path / "r", BQ, UQ)
    result = rounding_gap(only_setting(tmp_path / "r"))
    assert result.seeds == (0, 1, 2)  # seeds 3 and 5 are unpaired
    gap = result.gap
    assert gap.rounds.tolist() == [0, 1, 2, 3]
    assert gap.mean == pytest.approx([0, -1 / 3, -3, -8 / 3])
    assert gap.low == pytest.approx([0, -2, -4, -4])
    assert gap.high == pytest.approx([0, 2, -2, -1])


def test_a_round_not_evaluated_in_one_seed_of_either_method_is_left_out(tmp_path):
    bq = {**BQ, 1: [0.10, 0.48, None, 0.66]}
    uq = {**UQ, 0: [0.10, None, 0.63, 0.73]}
    write_pair(tmp_path / "r", bq, uq)
    gap = rounding_gap(only_setting(tmp_path / "r")).gap
    assert gap.rounds.tolist() == [0, 3]
    assert gap.mean == pytest.approx([0, -8 / 3])


@pytest.mark.parametrize(
    ("mean", "r0"),
    [
        ([-1, -3, -1, -2.5, -3], 4),  # recovers at round 3, behind for good from round 4
        ([0, -1, -2, -2.5, -3], 3),  # exactly −2 counts as 2 points behind
        ([-3, -3, -3, -3, -1], None),  # recovers at the last round
        ([0, 1, 0, -1, -1.9], None),
        ([-2.1, -3, -4, -5, -6], 1),
    ],
)
def test_falls_behind_from_the_first_round_that_stays_2_points_behind(mean, r0):
    mean = np.asarray(mean, dtype=float)
    assert falls_behind(Band(np.arange(1, 6), mean, mean, mean)) == r0


def test_the_report_writes_figure_csv_and_a_summary_line(tmp_path):
    write_pair(tmp_path / "r", BQ, UQ)
    out = report(tmp_path, tmp_path / "r")
    stem = out / "rounding-gap-cifar10-lenet-iid"
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = stem.with_suffix(".svg").read_text()
    assert "BQ − UQ, mean over seeds (n=3)" in svg and "CIFAR10 · LeNet · i.i.d., 3 rounds" in svg
    rows = read_csv(stem.with_suffix(".csv"))
    assert list(rows[0]) == [
        "round",
        "gap_mean",
        "gap_min",
        "gap_max",
        "n_seeds",
        "bq_unchanged_mean",
        "uq_unchanged_mean",
    ]
    assert [(r["round"], r["gap_mean"], r["gap_min"], r["gap_max"]) for r in rows] == [
        ("0", "0.0", "0.0", "0.0"),
        ("1", "-0.333333", "-2.0", "2.0"),
        ("2", "-3.0", "-4.0", "-2.0"),
        ("3", "-2.666667", "-4.0", "-1.0"),
    ]
    assert {r["n_seeds"] for r in rows} == {"3"}
    assert {r["bq_unchanged_mean"] for r in rows} == {""}  # no round recorded it
    console = (tmp_path / "console.txt").read_text()
    assert (
        "CIFAR10 · LeNet · i.i.d.: BQ − UQ at round 3: −2.7 points (−4.0…−1.0 over 3 seeds); "
        "BQ falls ≥ 2 points behind from round 2"
    ) in console


def test_the_summary_says_never_when_bq_does_not_stay_behind(tmp_path):
    write_pair(tmp_path / "r", {0: [0.1, 0.5, 0.5, 0.7]}, {0: [0.1, 0.6, 0.6, 0.71]})
    report(tmp_path, tmp_path / "r")
    assert (
        "BQ − UQ at round 3: −1.0 points (−1.0…−1.0 over 1 seed); BQ falls ≥ 2 points behind: never"
    ) in (tmp_path / "console.txt").read_text()


def test_unchanged_codes_skip_null_and_absent_rounds(tmp_path):
    codes = {
        "bq0": {"unchanged": [ABSENT, 0.9, None, 0.8]},
        "bq1": {"unchanged": [ABSENT, 0.7, 0.6, 0.6]},
        "uq0": {"unchanged": [ABSENT, 0.5, 0.4, 0.3]},
        "uq1": {"unchanged": [ABSENT, 0.3, 0.2, None]},
    }
    bq, uq = ({s: seeds[s] for s in (0, 1)} for seeds in (BQ, UQ))
    write_pair(tmp_path / "r", bq, uq, **codes)
    result = rounding_gap(only_setting(tmp_path / "r"))
    bq_band, uq_band = result.unchanged["bq"], result.unchanged["uq"]
    assert bq_band.rounds.tolist() == [1, 3] and uq_band.rounds.tolist() == [1, 2]
    assert bq_band.mean == pytest.approx([0.8, 0.7])
    assert (bq_band.low, bq_band.high) == (pytest.approx([0.7, 0.6]), pytest.approx([0.9, 0.8]))
    assert uq_band.mean == pytest.approx([0.4, 0.3])
    rows = read_csv(report(tmp_path, tmp_path / "r") / "rounding-gap-cifar10-lenet-iid.csv")
    assert [(r["bq_unchanged_mean"], r["uq_unchanged_mean"]) for r in rows] == [
        ("", ""),
        ("0.8", "0.4"),
        ("", "0.3"),
        ("0.7", ""),
    ]


def test_files_only_for_settings_where_bq_and_uq_share_a_seed(tmp_path):
    root = tmp_path / "r"
    write_pair(root, {0: BQ[0]}, {0: UQ[0]})
    write_run(root, "uq", 0, UQ[0], name="uq-lr", lr=0.01)  # no BQ
    write_run(root, "bq", 0, BQ[0], name="bq-dir", split="dirichlet")
    write_run(root, "uq", 1, UQ[1], name="uq-dir", split="dirichlet")  # no seed in common
    out = report(tmp_path, root)
    assert sorted(p.name for p in out.glob("rounding-gap-*")) == [
        f"rounding-gap-cifar10-lenet-iid-lr0.1.{ext}" for ext in ("csv", "png", "svg")
    ]
    assert (tmp_path / "console.txt").read_text().count("BQ − UQ at round") == 1


def test_the_clipped_uniform_pair_gets_its_own_gap_files_beside_bq_uq(tmp_path):
    """cq4-det − cq4 is the same paired gap, written as ``rounding-gap-cq4-…``; its methods record
    no unchanged codes (FP32 downlink), so those columns are empty."""
    root = tmp_path / "r"
    write_pair(root, BQ, UQ)
    for method, seeds in (("cq4-det", BQ), ("cq4", UQ)):
        for seed, accuracy in seeds.items():
            write_run(root, method, seed, accuracy, cq_bits="4")
    out = report(tmp_path, root)
    stem = out / "rounding-gap-cq4-cifar10-lenet-iid"
    svg = stem.with_suffix(".svg").read_text()
    assert "cq4-det − cq4, mean over seeds (n=3)" in svg
    assert "weight codes unchanged" not in svg  # no panel for codes nobody recorded
    rows = read_csv(stem.with_suffix(".csv"))
    assert [r["gap_mean"] for r in rows] == ["0.0", "-0.333333", "-3.0", "-2.666667"]
    assert {(r["cq4-det_unchanged_mean"], r["cq4_unchanged_mean"]) for r in rows} == {("", "")}
    console = (tmp_path / "console.txt").read_text()
    assert "cq4-det − cq4 at round 3: −2.7 points (−4.0…−1.0 over 3 seeds); cq4-det falls" in (
        console
    )
    assert console.count("BQ − UQ at round") == 1


def test_the_paper_line_under_cifar10_lenet_rows_only(tmp_path):
    root = tmp_path / "r"
    for method in ("fp32", "uq", "uq+", "bq"):
        write_run(root, method, 0, [0.1, 0.5, 0.7, 0.8])
        write_run(root, method, 0, [0.1, 0.5, 0.7, 0.8], name=f"{method}-dir", split="dirichlet")
        write_run(root, method, 0, [0.1, 0.5, 0.7, 0.8], name=f"{method}-fsdd", task="fsdd")
    out = report(tmp_path, root)
    table1, table3 = (out / "table1.md").read_text(), (out / "table3.md").read_text()
    paper_rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table1.splitlines()
        if line.startswith("| paper ")
    ]
    assert paper_rows == [
        [
            "paper",
            "",
            "i.i.d.",
            "1000 (× 5 local epochs)",
            "3",
            "82.1 ± 0.1 / 1.0×",
            "82.0 ± 0.1 / 4.1×",
            "82.2 ± 0.3 / 4.7×",
            "—",  # the paper's Table 1 has no BQ column
        ],
        [
            "paper",
            "",
            "Dir(0.3)",
            "1000 (× 5 local epochs)",
            "3",
            "77.1 ± 0.4 / 1.0×",
            "77.3 ± 0.9 / 3.9×",
            "77.7 ± 0.5 / 3.9×",
            "—",
        ],
    ]
    lines = table1.splitlines()
    assert lines[lines.index(next(x for x in lines if x.startswith("| paper "))) - 1].startswith(
        "| CIFAR10 | LeNet | i.i.d. "
    )
    assert "1000 rounds × 5 local epochs" in table1
    assert table_row(table3, "paper")[-3:] == ["82.1 ± 0.1 / —", "80.1 ± 0.1 / —", "82.0 ± 0.1 / —"]
    assert table3.count("| paper ") == 1  # Table 3 is i.i.d. only
    rows = read_csv(out / "table1.csv")
    assert [
        (r["task"], r["split"], r["paper_uq_acc_mean_pct"], r["paper_uq_gain"]) for r in rows
    ] == [
        ("cifar10", "iid", "82.0", "4.1"),
        ("cifar10", "dirichlet", "77.3", "3.9"),
        ("fsdd", "iid", "", ""),
    ]
    assert rows[0]["paper_source"] == "Wang et al. 2024 Table 1, 1000 rounds × 5 local epochs"


def test_no_paper_line_for_another_alpha_or_format(tmp_path):
    root = tmp_path / "r"
    write_run(root, "uq", 0, [0.1, 0.5, 0.7, 0.8], split="dirichlet", dirichlet_alpha=0.5)
    write_run(root, "uq", 0, [0.1, 0.5, 0.7, 0.8], name="e5m2", format="e5m2")
    table1 = (report(tmp_path, root) / "table1.md").read_text()
    assert "| paper " not in table1 and "Wang et al." not in table1
