"""fp8fl-report (experiments.reporting.report) on synthetic results folders written by the tests."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from experiments.reporting.report import main, write_report
from experiments.reporting.runs import METHOD_LABELS, find_runs, group_settings
from tests.presets import PAPER_PRESETS

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
BASE = {
    "task": "cifar10",
    "model": "lenet",
    "split": "iid",
    "dirichlet-alpha": 0.3,
    "num-clients": 10,
    "num-server-rounds": 3,
    "lr": 0.1,
    "format": "e4m3",
    "server-opt-steps": 5,
    "calibration-samples": 256,
    "eval-every": 1,
    "results-dir": "results",
    "device": "auto",
    # every record since issue 34 holds these (tests/test_legacy_records.py reads older ones)
    "cq-grid": "symmetric",
    "qafel-minmax": "flsim",
    "lpt-points": "authors",
}
ABSENT = object()
ROUND_BYTES = {"fp32": 4 * MB, "qat-fp32wire": 4 * MB, "randqat-fp32wire": 4 * MB}  # others: 1 MB


def write_run(
    root: Path,
    method: str,
    seed: int,
    accuracy: list,
    *,
    finished: bool = True,
    name: str | None = None,
    started: str = "2026-01-01T00:00:00+00:00",
    unchanged: list | None = None,
    uploads: int | None = None,
    up_share: int = 4,
    round_bytes: int | None = None,
    **overrides,
) -> Path:
    """A run folder as the ServerApp writes it: round 0 to R with ``accuracy`` (None = not
    evaluated), each round sending ``round_bytes`` or ``ROUND_BYTES[method]`` (default 1 MB),
    1/``up_share`` of it up, from 2 clients after round 0 (``uploads`` given: a buffered server
    step of that many uploads with staleness 0..K-1), and per round the ``unchanged_codes`` in
    ``unchanged`` (None = null, ``ABSENT`` = no such key). A peer method's run has empty FP8
    switches, as a preset run of its family records."""
    config = {
        **BASE,
        "method": method,
        "seed": seed,
        **dict(
            zip(("qat", "wire", "server-opt"), PAPER_PRESETS.get(method, ("",) * 3), strict=True)
        ),
        **{k.replace("_", "-"): v for k, v in overrides.items()},
    }
    folder = root / (name or f"{method}-s{seed}")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"run-id": folder.name, "config": config, "seed": seed, "started": started})
    )
    step = round_bytes or ROUND_BYTES.get(method, MB)
    records = [
        {
            "round": r,
            "accuracy": a,
            "loss": 1.0,
            "cum_bytes": r * step,
            "cum_bytes_up": r * (step // up_share),
            "bytes_up": step // up_share if r else 0,
            "bytes_down": step - step // up_share if r else 0,
        }
        | (
            {
                "uploads": uploads,
                "staleness": list(range(uploads)),
                "broadcast_bytes": (step - step // up_share) // 100,
                "broadcast_receivers": 100,
            }
            if uploads and r
            else {"clients_ok": 2 if r and not uploads else 0, "sampled": [3, 7] if r else []}
        )
        for r, a in enumerate(accuracy)
    ]
    for record, value in zip(records, unchanged or [], strict=False):
        if value is not ABSENT:
            record["unchanged_codes"] = value
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        evaluated = [r for r in records[1:] if r["accuracy"] is not None]
        best = max(evaluated, key=lambda r: r["accuracy"])
        (folder / "summary.json").write_text(
            json.dumps(
                {
                    "run_id": folder.name,
                    "method": method,
                    "rounds": len(records) - 1,
                    "final_accuracy": evaluated[-1]["accuracy"],
                    "best_accuracy": best["accuracy"],
                    "best_round": best["round"],
                    "total_bytes": records[-1]["cum_bytes"],
                    "bytes_up": records[-1]["cum_bytes_up"],
                    "bytes_down": records[-1]["cum_bytes"] - records[-1]["cum_bytes_up"],
                    "wall_s": 12.5,
                    "results_dir": str(folder),
                }
            )
        )
    return folder


def write_paper_grid(root: Path) -> None:
    """FP32, UQ and UQ+ with three seeds: UQ has FP32's curve at a quarter of the bytes."""
    for seed, final in enumerate((0.80, 0.82, 0.84)):
        write_run(root, "fp32", seed, [0.1, 0.5, 0.7, final])
    for seed, final in enumerate((0.79, 0.80, 0.81)):
        write_run(root, "uq", seed, [0.1, 0.5, 0.7, final])
    for seed in range(3):
        write_run(root, "uq+", seed, [0.1, 0.7, 0.8, 0.8])


def report(tmp_path: Path, *dirs: Path) -> Path:
    out = tmp_path / "report"
    with open(tmp_path / "console.txt", "w") as console:
        write_report(list(dirs), out, Console(file=console, width=200))
    return out


def table_row(markdown: str, first_cell: str) -> list[str]:
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {first_cell} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_regenerated_report_is_byte_identical(tmp_path):
    """The same runs give the same files, figures included (no date, fixed SVG ids), so a
    committed report regenerated after new runs changes only where the results changed."""
    write_paper_grid(tmp_path / "results")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = report(tmp_path / "a", tmp_path / "results")
    second = report(tmp_path / "b", tmp_path / "results")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert any(p.suffix == ".svg" for p in files) and any(p.suffix == ".png" for p in files)
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    changed = [p for p in files if (first / p).read_bytes() != (second / p).read_bytes()]
    assert changed == []


def test_table1_has_mean_std_over_seeds_and_the_gain(tmp_path):
    write_paper_grid(tmp_path / "results")
    out = report(tmp_path, tmp_path / "results")
    markdown = (out / "table1.md").read_text()
    header = table_row(markdown, "Task")
    assert header == [
        "Task",
        "Model",
        "Split",
        "Rounds",
        "Seeds",
        "FP32 FedAvg",
        "FP8FedAvg-UQ",
        "FP8FedAvg-UQ+",
    ]
    assert table_row(markdown, "CIFAR10") == [
        "CIFAR10",
        "LeNet",
        "i.i.d.",
        "3",
        "3",
        "82.0 ± 2.0 / 1.0×",
        "80.0 ± 1.0 / 4.0×",
        "80.0 ± 0.0 / 6.0×",
    ]  # UQ+: acc* = its best 0.8; FP32 reaches it at 12 MB, UQ+ at 2 MB
    assert table_row(markdown, "Average gain")[-3:] == ["1.0×", "4.0×", "6.0×"]
    [row] = read_csv(out / "table1.csv")
    assert (row["fp32_n"], row["uq_acc_mean_pct"], row["uq_acc_std_pct"], row["uq_gain"]) == (
        "3",
        "80.0",
        "1.0",
        "4.0",
    )
    assert row["uq+_gain_acc_pct"] == "80.0" and row["format"] == "e4m3"
    assert not (out / "table2.md").exists() and not (out / "table3.md").exists()


def test_a_single_seed_says_n1_and_a_missing_baseline_gives_no_gain(tmp_path):
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.6, 0.65])
    markdown = (report(tmp_path, tmp_path / "r") / "table1.md").read_text()
    assert table_row(markdown, "CIFAR10")[-1] == "65.0 (n=1) / —"
    assert table_row(markdown, "Average gain")[-1] == "—"


def test_tables_2_and_3_when_their_methods_ran(tmp_path):
    write_paper_grid(tmp_path / "r")
    for seed in range(2):
        write_run(tmp_path / "r", "bq", seed, [0.1, 0.4, 0.6, 0.7])
        write_run(tmp_path / "r", "qat-fp32wire", seed, [0.1, 0.5, 0.7, 0.81 + seed / 100])
    out = report(tmp_path, tmp_path / "r")
    table2, table3 = (out / "table2.md").read_text(), (out / "table3.md").read_text()
    assert table_row(table2, "Task")[-2:] == ["FP32 FedAvg", "det. QAT"]  # no rand. QAT ran
    assert table_row(table2, "CIFAR10")[-2:] == ["82.0 ± 2.0", "81.5 ± 0.7"]
    assert table_row(table3, "Task")[-3:] == ["FP32 FedAvg", "det. CQ", "rand. CQ"]
    # BQ peaks at 0.7: FP32 first reaches it at round 2 (8 MB), BQ at round 3 (3 MB)
    assert table_row(table3, "CIFAR10")[-2:] == ["70.0 ± 0.0 / 2.7×", "80.0 ± 1.0 / 4.0×"]
    assert table_row(out.joinpath("table1.md").read_text(), "Task")[-1] == "BQ (det. comm.)"
    assert read_csv(out / "table2.csv")[0]["qat-fp32wire_acc_std_pct"] == "0.7071"


def test_unfinished_incomplete_and_sweep_files_are_left_out(tmp_path):
    results = tmp_path / "sweep"
    write_run(results, "fp32", 0, [0.1, 0.5, 0.7, 0.8])
    write_run(results, "uq", 0, [0.1, 0.5], finished=False)
    write_run(results, "uq", 0, [0.1, 0.9, 0.9, 0.9], name="uq-s0-incomplete-1")
    (results / "sweep.json").write_text("{}")
    (results / "uq-s0.log").write_text("log")
    found = find_runs([results, results])  # the same folder twice counts once
    assert [r.run_id for r in found.runs] == ["fp32-s0"]
    assert found.unfinished == [(results / "uq-s0").resolve()]
    report(tmp_path, results)
    assert "unfinished (no summary.json)" in (tmp_path / "console.txt").read_text()


def test_no_finished_run_is_a_clear_error(tmp_path):
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5], finished=False)
    with pytest.raises(SystemExit, match="no finished run"):
        main([str(tmp_path / "r"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not a folder"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])


def test_one_fp32_baseline_serves_every_format(tmp_path):
    write_run(tmp_path / "r", "fp32", 0, [0.1, 0.5, 0.7, 0.8])
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.7, 0.8])
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.4, 0.6, 0.7], name="uq-e5m2", format="e5m2")
    settings = group_settings(find_runs([tmp_path / "r"]).runs)
    assert [s.extras for s in settings] == [(("format", "e4m3"),), (("format", "e5m2"),)]
    assert [list(s.methods) for s in settings] == [["fp32", "uq"], ["fp32", "uq"]]
    assert [s.methods["uq"].gain.value for s in settings] == [4.0, 8 / 3]
    assert settings[1].label == "CIFAR10 · LeNet · i.i.d. (format=e5m2)"


def test_settings_differ_in_any_training_key_but_not_in_how_a_run_ran(tmp_path):
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.7, 0.8])
    write_run(
        tmp_path / "r",
        "uq",
        1,
        [0.1, 0.5, 0.7, 0.8],
        device="cuda",
        eval_every=2,
        resume="uq-s1-old",
    )
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.7, 0.6], name="uq-lr", lr=0.01)
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.7, 0.6], name="uq-dir", split="dirichlet")
    settings = group_settings(find_runs([tmp_path / "r"]).runs)
    assert [(s.split_label, s.extras_label, s.methods["uq"].n) for s in settings] == [
        ("i.i.d.", "lr=0.01", 1),
        ("i.i.d.", "lr=0.1", 2),
        ("Dir(0.3)", "", 1),
    ]
    assert len({s.slug for s in settings}) == 3


def test_different_tasks_need_no_setting_label(tmp_path):
    """Two sweeps of different tasks differ in many keys; the task already tells them apart."""
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.5, 0.7, 0.8])
    write_run(
        tmp_path / "r",
        "uq",
        0,
        [0.1, 0.5, 0.7, 0.8],
        name="kws",
        task="fsdd",
        model="matchboxnet",
        split="speaker",
        num_clients=6,
        lr=0.01,
    )
    settings = group_settings(find_runs([tmp_path / "r"]).runs)
    assert [(s.label, s.extras) for s in settings] == [
        ("CIFAR10 · LeNet · i.i.d.", ()),
        ("FSDD · MatchboxNet · speaker-id", ()),
    ]


def test_a_repeated_seed_counts_once_the_latest_run(tmp_path):
    write_run(tmp_path / "a", "uq", 0, [0.1, 0.5, 0.7, 0.5], started="2026-01-01T10:00:00+00:00")
    write_run(tmp_path / "b", "uq", 0, [0.1, 0.5, 0.7, 0.8], started="2026-01-02T10:00:00+00:00")
    out = report(tmp_path, tmp_path / "a", tmp_path / "b")
    assert table_row((out / "table1.md").read_text(), "CIFAR10")[-1] == "80.0 (n=1) / —"
    rows = read_csv(out / "runs.csv")
    # two folders given: paths are relative to the folder that holds both
    assert [(r["final_accuracy_pct"], r["path"], r["note"]) for r in rows] == [
        ("50.0", "a/uq-s0", "not counted: same setting, method and seed as b/uq-s0"),
        ("80.0", "b/uq-s0", ""),
    ]


def test_runs_csv_has_one_row_per_run(tmp_path):
    write_paper_grid(tmp_path / "r")
    rows = read_csv(report(tmp_path, tmp_path / "r") / "runs.csv")
    assert len(rows) == 9
    first = rows[0]
    assert (
        first["method"],
        first["seed"],
        first["final_accuracy_pct"],
        first["total_bytes"],
        first["rounds"],
        first["wall_s"],
    ) == ("fp32", "0", "80.0", str(12 * MB), "3", "12.5")
    assert first["setting"] == "CIFAR10 · LeNet · i.i.d."
    assert first["path"] == "fp32-s0"  # relative to the folder given


def test_runs_csv_names_the_cpus_a_run_ran_on(tmp_path):
    """A run resumed on another machine lists both CPUs, once each, in order; a run recorded
    before config.json named its CPU has an empty cell."""
    write_paper_grid(tmp_path / "r")
    config_file = tmp_path / "r" / "uq-s1" / "config.json"
    document = json.loads(config_file.read_text())
    document.update(cpu="CPU A", resumed=[{"cpu": "CPU B"}, {"cpu": "CPU A"}, {"at": "x"}])
    config_file.write_text(json.dumps(document))
    rows = read_csv(report(tmp_path, tmp_path / "r") / "runs.csv")
    cpus = {row["path"]: row["cpu"] for row in rows}
    assert cpus.pop("uq-s1") == "CPU A; CPU B"
    assert set(cpus.values()) == {""}


def test_no_report_file_holds_a_path_of_this_machine(tmp_path):
    """Reports are portable: every path in them is relative to the folder given."""
    write_paper_grid(tmp_path / "r")
    out = report(tmp_path, tmp_path / "r")
    for path in out.iterdir():
        if path.suffix in (".csv", ".md", ".svg"):
            assert str(tmp_path) not in path.read_text(), path.name


def test_rounds_without_evaluation_are_skipped(tmp_path):
    write_run(tmp_path / "r", "fp32", 0, [0.1, None, 0.7, 0.8])
    write_run(tmp_path / "r", "uq", 0, [0.1, 0.6, None, 0.8])
    [setting] = group_settings(find_runs([tmp_path / "r"]).runs)
    assert setting.methods["uq"].curve.rounds.tolist() == [0, 1, 3]
    assert setting.methods["uq"].gain.value == 4.0


def test_fig4_is_written_with_legend_and_gain_labels(tmp_path):
    write_paper_grid(tmp_path / "r")
    out = report(tmp_path, tmp_path / "r")
    png, svg = out / "fig4-cifar10-lenet-iid.png", out / "fig4-cifar10-lenet-iid.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    for label in (
        "FP32 FedAvg (n=3)",
        "FP8FedAvg-UQ (n=3, gain 4.0×)",
        "FP8FedAvg-UQ+ (n=3, gain 6.0×)",
        "min–max over seeds",
    ):
        assert label in text


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.reporting.report",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "no finished run" in result.stderr


def test_lossless_and_mixed_runs_are_methods_of_their_own_in_the_same_setting():
    """A lossless or mixed-format run is compared beside the plain methods of its setting (same
    FP32 baseline), under a name and label that say what modifies it."""
    from experiments.reporting.identity import MethodId

    def identity(method: str, **modifiers: object) -> MethodId:
        return MethodId.of(
            {"method": method, **{k.replace("_", "-"): v for k, v in modifiers.items()}}
        )

    assert identity("uq").label == METHOD_LABELS["uq"] and identity("uq").name == "uq"
    lossless = identity("uq", lossless=True)
    assert (lossless.name, lossless.label) == ("uq+lossless", METHOD_LABELS["uq"] + " + lossless")
    mixed = identity("uq", client_formats="fp32:0.3,e4m3:0.7", lossless=True)
    assert mixed.name == "uq[fp32:0.3,e4m3:0.7]+lossless"
    assert mixed.label == METHOD_LABELS["uq"] + " mixed(fp32:0.3,e4m3:0.7) + lossless"
    averaged = identity("fp32", moving_average=0.9)
    assert (averaged.name, averaged.label) == ("fp32+ma0.9", METHOD_LABELS["fp32"] + " + MA λ=0.9")
    # UQ+'s own "+" is part of its name: the identity needs no parsing to tell
    plus = identity("uq+", lossless=True)
    assert (plus.name, plus.label) == ("uq++lossless", METHOD_LABELS["uq+"] + " + lossless")
    layered = identity("uq", layer_formats="fc1:e2m1", downlink_format="e3m2", lossless="context")
    assert layered.name == "uq{fc1:e2m1,down:e3m2}+context"
    assert layered.label == METHOD_LABELS["uq"] + " layers(fc1:e2m1,down:e3m2) + context coding"
    custom = identity(
        "qafel-custom", qafel_uplink="qsgd8", qafel_downlink="qsgd8", qafel_start="hidden"
    )
    assert custom.name == "qafel-custom(qsgd8/qsgd8/hidden)" and custom.asynchronous
    assert custom.label == "QAFeL custom (qsgd8/qsgd8/hidden)"
    assert identity("lpt8", lpt_downlink="bfp").name == "lpt8(lpt-downlink=bfp)"
    assert identity("nonesuch").label == "nonesuch" and not identity("nonesuch").asynchronous
    methods = [identity("bq"), plus, lossless, averaged, identity("fp32"), identity("uq")]
    ordered = [m.name for m in sorted(methods, key=lambda m: m.order)]
    assert ordered == ["fp32", "fp32+ma0.9", "uq", "uq+lossless", "uq++lossless", "bq"]


def test_a_moving_average_run_joins_the_setting_of_its_plain_twin(tmp_path):
    """FP32 with the server moving average (the LPT-FL comparison) sits beside plain FP32, which
    stays the baseline of the gains."""
    write_run(tmp_path, "fp32", 0, [0.1, 0.2, 0.3, 0.4], moving_average=0.0)  # off: plain
    write_run(tmp_path, "fp32", 0, [0.1, 0.2, 0.3, 0.4], name="fp32-ma-s0", moving_average=0.9)
    (setting,) = group_settings(find_runs([tmp_path]).runs)
    assert list(setting.methods) == ["fp32", "fp32+ma0.9"]
    assert setting.methods["fp32+ma0.9"].label == METHOD_LABELS["fp32"] + " + MA λ=0.9"


def test_a_lossless_run_joins_the_setting_of_its_plain_twin(tmp_path):
    write_run(tmp_path, "fp32", 0, [0.1, 0.2, 0.3, 0.4])
    write_run(tmp_path, "uq", 0, [0.1, 0.2, 0.3, 0.4])
    write_run(tmp_path, "uq", 0, [0.1, 0.2, 0.3, 0.4], name="uq-ll-s0", lossless=True)
    (setting,) = group_settings(find_runs([tmp_path]).runs)
    assert list(setting.methods) == ["fp32", "uq", "uq+lossless"]
    assert setting.methods["uq+lossless"].label == METHOD_LABELS["uq"] + " + lossless"


def test_a_peer_method_shares_the_fp32_setting_and_customs_are_told_apart(tmp_path):
    """A preset's switches (cq-bits, qafel-uplink, …) name the method, not the setting: cq4 is
    compared with the FP32 run of its sweep. Two custom runs with different switches are two
    methods, labelled with their switches."""
    peer_defaults = {"cq_bits": "", "qafel_uplink": "", "qafel_downlink": "", "qafel_start": ""}
    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6], **peer_defaults)
    write_run(tmp_path, "cq4", 0, [0.1, 0.3, 0.5, 0.6], **peer_defaults | {"cq_bits": "4"})
    for up in ("qsgd8", "qsgd4"):
        switches = {"qafel_uplink": up, "qafel_downlink": "qsgd8", "qafel_start": "hidden"}
        write_run(tmp_path, "qafel-custom", 0, [0.1, 0.2, 0.3, 0.4], name=up, **switches)
    (setting,) = group_settings(find_runs([tmp_path]).runs)
    assert list(setting.methods) == [
        "fp32",
        "cq4",
        "qafel-custom(qsgd4/qsgd8/hidden)",
        "qafel-custom(qsgd8/qsgd8/hidden)",
    ]
    assert setting.methods["cq4"].gain is not None and setting.methods["cq4"].gain.value == 4
    assert setting.methods["qafel-custom(qsgd8/qsgd8/hidden)"].label == (
        "QAFeL custom (qsgd8/qsgd8/hidden)"
    )


def test_a_family_switch_beyond_the_presets_makes_a_variant_in_the_same_setting(tmp_path):
    """An LPT run with the block-FP downlink (``lpt-downlink``, which no preset sets) is compared
    with the FP32 run of its sweep, as a variant beside plain LPT; a custom method lists such a
    switch after its preset switches; the default value names no variant."""
    peer = {"lpt_bits": "", "lpt_downlink": "fp32", "cq_bits": "", "cq_downlink": "fp32"}
    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6], **peer)
    write_run(tmp_path, "lpt8", 0, [0.1, 0.2, 0.4, 0.5], **peer | {"lpt_bits": "8"})
    bfp = peer | {"lpt_bits": "8", "lpt_downlink": "bfp"}
    write_run(tmp_path, "lpt8", 0, [0.1, 0.2, 0.3, 0.5], name="lpt8-bfp", **bfp)
    custom = peer | {"cq_bits": "4,2,2,4", "cq_rounding": "nearest", "cq_average": "nk"}
    write_run(
        tmp_path, "cq-custom", 0, [0.1, 0.2, 0.3, 0.4], **custom | {"cq_downlink": "quantized"}
    )
    (setting,) = group_settings(find_runs([tmp_path]).runs)
    assert list(setting.methods) == [
        "fp32",
        "lpt8",
        "lpt8(lpt-downlink=bfp)",
        "cq-custom(4,2,2,4/nearest/nk, cq-downlink=quantized)",
    ]
    assert setting.methods["lpt8(lpt-downlink=bfp)"].label == "LPT-FL 8-bit (lpt-downlink=bfp)"
    assert setting.methods["lpt8(lpt-downlink=bfp)"].gain is not None


def test_uploads_to_target_for_buffered_and_synchronous_runs(tmp_path):
    """The uploads table counts a buffered step's K uploads and a synchronous round's clients,
    at the first evaluated round reaching the common target (floored best of the worst method)."""
    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6])
    write_run(tmp_path, "fedbuff", 0, [0.1, 0.2, 0.45, 0.55], uploads=10)
    write_run(tmp_path, "qafel", 0, [0.1, None, 0.556, 0.4], uploads=10)
    out = report(tmp_path, tmp_path)
    (markdown,) = out.glob("uploads-*.md")
    assert "to 55 % test accuracy" in markdown.read_text()
    rows = {r["method"]: r for r in read_csv(markdown.with_suffix(".csv"))}
    # fp32 first reaches 55 % at round 3 (2 clients per round); FedBuff at round 3, QAFeL at 2
    assert (rows["fp32"]["round"], float(rows["fp32"]["uploads"])) == ("3", 6.0)
    assert (rows["fedbuff"]["round"], float(rows["fedbuff"]["uploads"])) == ("3", 30.0)
    assert (rows["qafel"]["round"], float(rows["qafel"]["uploads"])) == ("2", 20.0)
    assert float(rows["qafel"]["bytes_up"]) == 2 * MB // 4
    assert float(rows["fp32"]["bytes_total"]) == 3 * 4 * MB
    assert (rows["qafel"]["staleness_median"], rows["qafel"]["staleness_max"]) == ("4.5", "9")
    assert "| FedBuff | 1 | 55.00 | 3 | 30 | 0.8 | 1.00× |" in markdown.read_text()
    assert (out / f"{markdown.stem.replace('uploads', 'uplink')}.png").is_file()


def test_an_uploads_target_nobody_reaches_says_so(tmp_path):
    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6])
    write_run(tmp_path, "fedbuff", 0, [0.1, 0.2, 0.45, 0.55], uploads=10)
    with open(tmp_path / "console.txt", "w") as console:
        write_report([tmp_path], tmp_path / "out", Console(file=console, width=200), target=0.58)
    text = next((tmp_path / "out").glob("uploads-*.md")).read_text()
    assert "to 58 % test accuracy" in text
    assert table_row(text, "FedBuff")[4] == "not reached"
    assert table_row(text, "FP32")[3] == "3"


@pytest.mark.parametrize("option", [["--target", "0"], ["--milestones", "70", "101"]])
def test_the_uploads_target_and_the_milestones_must_be_percentages(tmp_path, capsys, option):
    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "out"), *option])
    assert "take percentages in (0, 100]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_milestones_give_the_first_round_of_the_seed_mean_and_of_each_seed(tmp_path):
    """FP32 (4 MB a round) means 0.1, 0.5, 0.7, 0.82 over rounds 0-3; UQ (1 MB) ends 0.79, 0.80,
    0.81, so its mean reaches 80 % at round 3 though seed 0 never does; UQ+ is at 0.8 from round
    2; nothing reaches 85 %."""
    write_paper_grid(tmp_path / "r")
    out = tmp_path / "report"
    with open(tmp_path / "console.txt", "w") as console:
        write_report([tmp_path / "r"], out, Console(file=console), milestones=[70, 80, 85])
    rows = {(r["method"], float(r["threshold_pct"])): r for r in read_csv(out / "milestones.csv")}
    assert len(rows) == 9
    fp32_70, uq_80, uqp_80 = rows["fp32", 70.0], rows["uq", 80.0], rows["uq+", 80.0]
    assert (fp32_70["round"], fp32_70["total_bytes"]) == ("2", str(float(8 * MB)))
    assert (uq_80["round"], uq_80["seeds_reaching"], uq_80["first_seed_round"]) == ("3", "2", "3")
    assert (uqp_80["round"], uqp_80["total_bytes"]) == ("2", str(float(2 * MB)))
    assert {rows[m, 85.0]["round"] for m in ("fp32", "uq", "uq+")} == {""}
    text = (out / "milestones.md").read_text()
    assert table_row(text, "FP8FedAvg-UQ")[1:] == [
        "3",
        "r2, 0.00 GB [2–2]",
        "r3, 0.00 GB [3–3, 2 of 3 seeds]",
        "—",
    ]


def test_message_sizes_per_direction_and_bits_per_weight(tmp_path):
    """Bytes of one message: uplink bytes over updates received, downlink bytes over messages
    sent (a synchronous round's sample, a buffered step's broadcast to every client); bits per
    weight over LeNet's conv and linear weights."""
    from experiments.reporting.messages import weight_count

    write_run(tmp_path, "fp32", 0, [0.1, 0.3, 0.5, 0.6])
    write_run(tmp_path, "fedbuff", 0, [0.1, 0.2, 0.45, 0.55], uploads=10)
    out = report(tmp_path, tmp_path)
    rows = {r["method"]: r for r in read_csv(out / "messages.csv")}
    # fp32: 4 MB a round, 1 MB up from 2 clients and 3 MB down to 2 clients
    assert float(rows["fp32"]["bytes_per_up_message"]) == MB / 2
    assert float(rows["fp32"]["bytes_per_down_message"]) == 3 * MB / 2
    # fedbuff: 1 MB a step, 0.25 MB up from 10 uploads and 0.75 MB down as 100 broadcasts
    assert float(rows["fedbuff"]["bytes_per_up_message"]) == MB / 4 / 10
    assert float(rows["fedbuff"]["bytes_per_down_message"]) == 7500
    weights = weight_count("lenet", "cifar10")
    assert weights == 797_248  # the count docs/lossless.md and REPRODUCTION.md give for LeNet
    assert float(rows["fp32"]["bits_per_weight_up"]) == pytest.approx(8 * MB / 2 / weights)
    assert weight_count("kwt1", "speechcommands") is None  # its classes depend on the folders


def test_message_table_gives_mean_std_and_the_gain_on_uplink_and_total_bytes(tmp_path):
    """A method with an FP32 downlink (as the clipped-uniform paper's) gains on the uplink but
    little in all: FP32 sends 1 MB up and 3 MB down a round, cq4 0.1 MB up and 3 MB down."""
    for seed, final in ((0, 0.6), (1, 0.5)):
        write_run(tmp_path, "fp32", seed, [0.1, 0.3, 0.5, final])
    write_run(tmp_path, "cq4", 0, [0.1, 0.3, 0.5, 0.6], round_bytes=3_100_000, up_share=31)
    out = report(tmp_path, tmp_path)
    rows = {r["method"]: r for r in read_csv(out / "messages.csv")}
    assert float(rows["fp32"]["final_accuracy_pct"]) == pytest.approx(55)
    assert float(rows["fp32"]["final_accuracy_std_pct"]) == pytest.approx(50**0.5)  # ddof = 1
    # acc* = min(FP32's seed-mean best 0.55, cq4's 0.6) = 0.55, first reached in round 3 by both
    assert float(rows["cq4"]["gain_acc_pct"]) == pytest.approx(55)
    assert float(rows["cq4"]["gain_vs_fp32"]) == pytest.approx(4 / 3.1)
    assert float(rows["cq4"]["uplink_gain_vs_fp32"]) == pytest.approx(1 / 0.1)
    assert float(rows["cq4"]["uplink_bytes"]) == 3 * 100_000
    text = (out / "messages.md").read_text()
    assert table_row(text, "FP32")[2] == f"55.00 ± {50**0.5:.2f}"
    assert table_row(text, METHOD_LABELS["cq4"])[-2] == "10.00× (55.00 %)"


def test_message_table_pairs_the_final_accuracy_with_fp32_by_seed(tmp_path):
    """FP32 ends at 60 and 50 % (seeds 0, 1); UQ at 58, 49 and 70 % (seeds 0-2). Paired by seed,
    UQ is 2 and 1 points under FP32 (seed 2 has no FP32 run and is left out), though its seed
    mean (59 %) is 4 points over FP32's (55 %)."""
    for seed, final in ((0, 0.6), (1, 0.5)):
        write_run(tmp_path, "fp32", seed, [0.1, 0.3, 0.5, final])
    for seed, final in ((0, 0.58), (1, 0.49), (2, 0.7)):
        write_run(tmp_path, "uq", seed, [0.1, 0.3, 0.5, final])
    out = report(tmp_path, tmp_path)
    rows = {r["method"]: r for r in read_csv(out / "messages.csv")}
    assert rows["uq"]["paired_seeds"] == "2"
    assert float(rows["uq"]["paired_vs_fp32_pts"]) == pytest.approx(-1.5)
    assert float(rows["uq"]["paired_vs_fp32_min_pts"]) == pytest.approx(-2)
    assert float(rows["uq"]["paired_vs_fp32_max_pts"]) == pytest.approx(-1)
    assert (rows["fp32"]["paired_seeds"], rows["fp32"]["paired_vs_fp32_pts"]) == ("0", "")
    text = (out / "messages.md").read_text()
    assert table_row(text, METHOD_LABELS["uq"])[-1] == "-1.50 [-2.00 … -1.00]; 2"
    assert table_row(text, "FP32")[-1] == "—"


def test_the_frontier_puts_every_run_at_its_bits_per_weight_with_its_family_marker(tmp_path):
    """One point per run at (bits of one uplink + one downlink message per weight, final
    accuracy); FP8 and clipped-uniform runs in their family's marker; FP32's mean as the line."""
    from experiments.reporting.frontier import total_bits_per_weight
    from experiments.reporting.messages import weight_count
    from fp8fl.methods.registry import FAMILIES

    write_paper_grid(tmp_path / "r")
    write_run(tmp_path / "r", "cq4", 0, [0.1, 0.5, 0.6, 0.7])
    out = report(tmp_path, tmp_path / "r")
    svg = (out / "frontier-cifar10-lenet-iid.svg").read_text()
    for label in ("FP32 FedAvg (FP8, n=3)", "FP8FedAvg-UQ (FP8, n=3)", "(clipped-uniform, n=1)"):
        assert label in svg
    assert (out / "frontier-cifar10-lenet-iid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (setting,) = group_settings(find_runs([tmp_path / "r"]).runs)
    weights = weight_count("lenet", "cifar10")
    fp32 = setting.methods["fp32"].runs[0]  # 4 MB a round: 1 MB up from 2, 3 MB down to 2
    assert total_bits_per_weight(fp32, weights) == pytest.approx(8 * 2 * MB / weights)
    uq = setting.methods["uq"].runs[0]  # 1 MB a round
    assert total_bits_per_weight(uq, weights) == pytest.approx(8 * MB / 2 / weights)
    assert len({family.marker for family in FAMILIES}) == len(FAMILIES)  # one marker each


def test_layer_formats_and_context_coding_make_methods_in_the_same_setting(tmp_path):
    """Per-layer formats, a downlink format and context coding modify the method, not the
    setting: such runs share FP32's baseline."""
    write_run(tmp_path, "fp32", 0, [0.1, 0.2, 0.3, 0.4])
    write_run(tmp_path, "uq", 0, [0.1, 0.2, 0.3, 0.4], name="ctx-s0", lossless="context")
    write_run(
        tmp_path,
        "uq",
        0,
        [0.1, 0.2, 0.3, 0.4],
        name="fc1-s0",
        layer_formats="fc1:e2m1",
        downlink_format="e3m2",
    )
    (setting,) = group_settings(find_runs([tmp_path]).runs)
    assert list(setting.methods) == ["fp32", "uq+context", "uq{fc1:e2m1,down:e3m2}"]
    assert setting.methods["uq+context"].label == METHOD_LABELS["uq"] + " + context coding"
    assert setting.methods["uq{fc1:e2m1,down:e3m2}"].label == (
        METHOD_LABELS["uq"] + " layers(fc1:e2m1,down:e3m2)"
    )


def test_variants_take_colors_no_registered_method_has():
    """A figure with every registered method and as many variants as spare colors: each has
    its own color (the frontier of the 150-round folder had cq4 and UQ's context variant
    both orange)."""
    import matplotlib

    from experiments.reporting.plots import METHOD_COLORS, OTHER_COLORS, colors_for

    variants = [f"uq(variant {i})" for i in range(len(OTHER_COLORS))]
    colors = colors_for([*METHOD_COLORS, *variants])
    hexes = [matplotlib.colors.to_hex(c) for c in colors.values()]
    assert len(set(hexes)) == len(hexes) == len(METHOD_COLORS) + len(OTHER_COLORS)
    assert len(OTHER_COLORS) >= 12
