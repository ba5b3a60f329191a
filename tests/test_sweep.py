"""fp8fl-sweep end to end: two tiny configurations through ``flwr run``, then a re-run that does
nothing; a failed run is reported and the next one still runs; sweep files are validated before
anything runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli.sweep import load_sweep, select_runs

ROOT = Path(__file__).resolve().parents[1]

TINY_SWEEP = """
[sweep]
name = "tiny"
results-dir = "{results}"
seeds = [0]

[base]
num-clients = 2
clients-per-round = 2
num-server-rounds = 1
local-steps = 2
batch-size = 20
eval-samples = 200
calibration-samples = 32

[grid]
method = ["fp32", "uq"]
"""


def run_sweep_cli(sweep_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli.sweep", str(sweep_file), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.integration  # runs flwr
def test_two_tiny_runs_then_a_rerun_does_nothing(tmp_path):
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY_SWEEP.format(results=tmp_path / "results"))
    first = run_sweep_cli(sweep_file)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = tmp_path / "results"
    for name in ("fp32-s0", "uq-s0"):
        summary = json.loads((results / name / "summary.json").read_text())
        assert summary["rounds"] == 1 and summary["total_bytes"] > 0
    assert json.loads((results / "sweep-tiny.json").read_text())["runs"] == {
        "fp32-s0": "done",
        "uq-s0": "done",
    }
    before = sorted(p.name for p in results.iterdir())
    again = run_sweep_cli(sweep_file)
    assert again.returncode == 0
    assert sorted(p.name for p in results.iterdir()) == before  # no new run folder, no new log
    dry = run_sweep_cli(sweep_file, "--dry-run")
    assert dry.stdout.count("done") == 2


@pytest.mark.integration  # runs flwr
def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    """The first run points at a folder without CIFAR-10 and fails; the second still runs."""
    empty = tmp_path / "nodata"
    empty.mkdir()
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(
        TINY_SWEEP.format(results=tmp_path / "results").replace(
            'method = ["fp32", "uq"]', f'method = ["fp32"]\ndata-root = ["{empty}", ""]'
        )
    )
    result = run_sweep_cli(sweep_file)
    assert result.returncode != 0 and "1 run(s) failed" in result.stderr
    statuses = json.loads((tmp_path / "results" / "sweep-tiny.json").read_text())["runs"]
    (failed, first), (done, second) = statuses.items()
    assert (first, second, done) == ("failed", "done", "fp32-default-s0")
    assert (
        failed.endswith("_nodata-s0") and "/" not in failed
    )  # a path value makes a flat folder name
    log = (tmp_path / "results" / f"{failed}.log").read_text()
    assert "data set not found" in log and str(empty) in log, log[-2000:]
    # the sweep names the cause, read from the run's own log
    assert "failed: ServerApp failed: DatasetNotFoundError: cifar10: data set not found" in (
        " ".join(result.stdout.split())
    ), result.stdout[-2000:]


def test_distinct_values_with_one_run_name_are_refused(tmp_path):
    sweep_file = tmp_path / "clash.toml"
    sweep_file.write_text(
        TINY_SWEEP.format(results=tmp_path / "results").replace(
            'method = ["fp32", "uq"]', 'method = ["fp32"]\ndata-root = ["a b", "a/b"]'
        )
    )
    with pytest.raises(SystemExit, match="fp32-a_b-s0: two grid points map to this run name"):
        load_sweep(sweep_file)


def test_the_same_point_in_two_grids_is_one_run():
    # --seeds gives every grid the same seeds: the 150-round cq file's second grid then repeats
    # points of its first, which are the same runs, not a clash of names
    sweep = load_sweep(ROOT / "experiments" / "configs" / "lenet-cifar10-150-cq.toml", seeds=[0])
    names = [run.name for run in sweep.runs]
    assert len(names) == len(set(names))
    assert {"iid-cq4-s0", "iid-cq4-det-s0", "iid-cq2-symmetric-s0"} <= set(names)
    assert {run.config.seed for run in sweep.runs} == {0}


def test_sweep_files_are_validated_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[base]\nmodel = "kwt1"\n[grid]\nmethod = ["uq", "fp16"]\n')
    with pytest.raises(SystemExit, match="does not fit task") as info:
        load_sweep(bad)
    assert "method must be one of" in str(info.value)
    assert not (tmp_path / "results").exists()


def test_set_and_seeds_override_the_file(tmp_path):
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY_SWEEP.format(results=tmp_path / "results"))
    sweep = load_sweep(sweep_file, {"num-server-rounds": 3}, seeds=[1, 2])
    assert [r.name for r in sweep.runs] == ["fp32-s1", "uq-s1", "fp32-s2", "uq-s2"]
    assert {r.config.num_server_rounds for r in sweep.runs} == {3}


def test_only_keeps_the_runs_its_patterns_match_and_refuses_a_pattern_that_matches_none():
    bytes_file = ROOT / "experiments" / "configs" / "lenet-cifar10-150-bytes.toml"
    sweep = load_sweep(bytes_file, seeds=[1, 2])
    chosen = select_runs(sweep, ["iid-uq-context-*", "iid-uq-fc1_e2m1-context-s2"])
    assert [r.name for r in chosen.runs] == [
        "iid-uq-context-s1",
        "iid-uq-context-s2",
        "iid-uq-fc1_e2m1-context-s2",
    ]
    assert chosen.results_dir == sweep.results_dir
    with pytest.raises(SystemExit, match=r"--only iid-uq-e5m2-\*: no run of this sweep matches"):
        select_runs(sweep, ["iid-uq-context-*", "iid-uq-e5m2-*"])


def test_several_grids_each_with_its_own_seeds_run_seed_major(tmp_path):
    sweep_file = tmp_path / "multi.toml"
    sweep_file.write_text(
        """
[sweep]
seeds = [0, 1]
[base]
num-clients = 2
[[grid]]
split = ["iid"]
method = ["uq", "bq"]
[[grid]]
split = ["dirichlet"]
method = ["bq"]
seeds = [0]
"""
    )
    names = [run.name for run in load_sweep(sweep_file).runs]
    assert names == ["iid-uq-s0", "iid-bq-s0", "dirichlet-bq-s0", "iid-uq-s1", "iid-bq-s1"]
    assert [r.name for r in load_sweep(sweep_file, seeds=[5]).runs] == [
        "iid-uq-s5",
        "iid-bq-s5",
        "dirichlet-bq-s5",
    ]


def test_the_150_round_sweep_file_is_the_issued_setting():
    sweep = load_sweep(ROOT / "experiments" / "configs" / "lenet-cifar10-150.toml")
    assert len(sweep.runs) == 15
    assert {r.config.num_server_rounds for r in sweep.runs} == {150}
    assert {(r.config.split, r.config.method, r.config.seed) for r in sweep.runs} == {
        *(("iid", m, s) for m in ("fp32", "uq", "uq+", "bq") for s in (0, 1, 2)),
        *(("dirichlet", m, 0) for m in ("uq", "bq", "fp32")),
    }


def test_the_paper_budget_sweep_file_is_the_papers_setting():
    """Issue 30: §5.1's CIFAR-10 budget, 500,000 client steps per run, in the issued order."""
    sweep = load_sweep(ROOT / "experiments" / "configs" / "lenet-cifar10-paper.toml")
    assert [(r.config.method, r.config.seed) for r in sweep.runs] == [
        ("fp32", 0),
        ("uq", 0),
        ("bq", 0),
        ("uq+", 0),
        ("fp32", 1),
        ("uq", 1),
    ]
    for run in sweep.runs:
        c = run.config
        assert (c.task, c.model, c.split, c.num_clients, c.clients_per_round) == (
            "cifar10",
            "lenet",
            "iid",
            100,
            0.1,
        )
        assert (c.num_server_rounds, c.local_epochs, c.batch_size, c.lr, c.weight_decay) == (
            1000,
            5,
            50,
            0.1,
            1e-3,
        )
        assert (c.eval_every, c.eval_samples, c.optimizer) == (25, 0, "sgd")
        # 10 clients a round × 5 epochs × 500 / 50 steps × 1000 rounds
        steps = c.clients_per_round_count * c.local_epochs * (50_000 // 100 // c.batch_size)
        assert steps * c.num_server_rounds == 500_000


def test_the_issue_34_reruns_have_names_of_their_own_and_the_old_runs_keep_theirs():
    """The reruns on the new grids and points must not be taken for the committed runs (a sweep
    skips a name whose folder holds a summary), and the old names keep what those runs ran."""
    configs, results = ROOT / "experiments" / "configs", ROOT / "experiments" / "results"
    cq = {r.name: r.config for r in load_sweep(configs / "lenet-cifar10-150-cq.toml").runs}
    new_cq = {n: c for n, c in cq.items() if c.to_mapping()["cq-grid"] == "symmetric"}
    assert sorted(new_cq) == [
        "iid-cq2-symmetric-s0",
        *(f"iid-cq4-symmetric-s{s}" for s in (0, 1, 2)),
    ]
    assert {c.num_server_rounds for c in cq.values()} == {150}
    assert cq["iid-cq4-s0"].to_mapping()["cq-grid"] == "twos-complement"
    lpt = {r.name: r.config for r in load_sweep(configs / "lenet-cifar10-lpt.toml").runs}
    new_lpt = {n for n, c in lpt.items() if c.to_mapping()["lpt-points"] == "authors"}
    assert new_lpt == {
        f"{a}-{m}-authors-s0" for a in ("0.16", "0.04") for m in ("lpt8", "lpt8-noma")
    }
    assert lpt["0.16-lpt8-s0"].to_mapping()["lpt-points"] == "conv-linear-io"
    asynchronous = load_sweep(configs / "lenet-cifar10-async.toml").runs
    [minmax] = [r for r in asynchronous if r.config.to_mapping()["qafel-uplink"] == "minmax4"]
    assert minmax.name == "qafel-custom-minmax4-minmax8-hidden-flsim-s0"
    assert minmax.config.to_mapping()["qafel-minmax"] == "flsim"
    committed = {p.name: p for p in results.glob("*/*") if (p / "summary.json").is_file()}
    assert {"iid-cq4-s0", "0.16-lpt8-s0", "qafel-custom-minmax4-minmax8-hidden-s0"} <= set(
        committed
    )
    # a rerun committed under its new name ran what the new name says
    new_settings = {
        **dict.fromkeys(new_cq, ("cq-grid", "symmetric")),
        **dict.fromkeys(new_lpt, ("lpt-points", "authors")),
        minmax.name: ("qafel-minmax", "flsim"),
    }
    for name, (key, value) in new_settings.items():
        if name in committed:
            recorded = json.loads((committed[name] / "config.json").read_text())["config"]
            assert recorded[key] == value, name


def test_the_150_round_bytes_sweep_file_is_the_issued_search():
    """Issue 33's search: 5 of the 8 planned configurations of UQ, seed 0, in the 150-round
    i.i.d. setting (the file says why three are left out); apart from the keys it searches, each
    run is the setting of the existing FP32 runs."""
    sweep = load_sweep(ROOT / "experiments" / "configs" / "lenet-cifar10-150-bytes.toml")
    reference = load_sweep(ROOT / "experiments" / "configs" / "lenet-cifar10-150.toml")
    (fp32,) = [r for r in reference.runs if r.name == "iid-fp32-s0"]
    searched = ("lossless", "layer-formats", "downlink-format")
    assert len(sweep.runs) == 5 and {r.config.seed for r in sweep.runs} == {0}
    assert sweep.results_dir == reference.results_dir
    assert {tuple(r.config.to_mapping()[k] for k in searched) for r in sweep.runs} == {
        ("context", "", ""),
        (True, "fc1:e2m1", ""),
        *(("context", f"fc1:{f}", "") for f in ("e2m1", "e3m2", "e2m3")),
    }
    kept = set(fp32.config.to_mapping()) - {
        *searched,
        "method",
        "qat",
        "wire",
        "server-opt",
        "run-name",
    }
    for run in sweep.runs:
        assert run.config.method == "uq"
        assert {k: run.config.to_mapping()[k] for k in kept} == {
            k: fp32.config.to_mapping()[k] for k in kept
        }


def test_a_sweep_with_committed_runs_writes_into_their_folder():
    """A sweep skips the runs whose folder holds a summary only if it looks in the folder where
    they are committed: a sweep file naming the default results/sweeps/<name> would run them
    all again (the issue 33/34 reruns and the paper runs must add to experiments/results)."""
    configs, results = ROOT / "experiments" / "configs", ROOT / "experiments" / "results"
    checked = 0
    for sweep_file in sorted(configs.glob("*.toml")):
        if sweep_file.name == "flower-config.toml":  # the SuperLink connections, not a sweep
            continue
        sweep = load_sweep(sweep_file)
        committed = results / sweep.name
        if committed.is_dir() or sweep.name == "lenet-cifar10-paper":
            assert sweep.results_dir.resolve() == committed.resolve(), sweep_file.name
            checked += 1
    assert checked >= 6


def test_every_committed_run_is_the_run_its_sweep_file_names():
    """A sweep skips a finished folder of the same name: every committed run must have recorded
    the run config its sweep file gives that name today (where and how it was recorded aside)."""
    from experiments.cli.sweep import recorded_changes

    checked = 0
    for sweep_file in sorted((ROOT / "experiments" / "configs").glob("*.toml")):
        if "[sweep]" not in sweep_file.read_text():
            continue  # flower-config.toml: the SuperLink's settings
        sweep = load_sweep(sweep_file)
        for run in sweep.runs:
            folder = sweep.results_dir / run.name
            if (folder / "summary.json").is_file():
                assert recorded_changes(folder, run) == [], (sweep_file.name, run.name)
                checked += 1
    assert checked >= 60


def test_a_finished_run_with_another_config_is_reported_not_passed_off(tmp_path):
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY_SWEEP.format(results=tmp_path / "results"))
    runs = {r.name: r for r in load_sweep(sweep_file).runs}
    recorded = runs["uq-s0"].config.to_mapping()
    for name, lr in (("fp32-s0", runs["fp32-s0"].config.lr), ("uq-s0", 0.5)):
        folder = tmp_path / "results" / name
        folder.mkdir(parents=True)
        config = runs[name].config.to_mapping() | {"lr": lr, "results-dir": "elsewhere"}
        (folder / "config.json").write_text(json.dumps({"config": config}))
        (folder / "summary.json").write_text("{}")
    assert recorded["lr"] != 0.5
    dry = run_sweep_cli(sweep_file, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = {line.split()[0]: line for line in dry.stdout.splitlines() if line.strip()}
    assert lines["fp32-s0"].split()[1] == "done"  # results-dir says where, not what: not compared
    assert f"differs: lr was 0.5, now {recorded['lr']!r}" in lines["uq-s0"]
    # a real sweep keeps both folders as they are, runs nothing and exits non-zero
    ran = run_sweep_cli(sweep_file)
    assert ran.returncode != 0
    assert "1 run(s) finished with another run config: uq-s0" in ran.stderr
    assert (
        json.loads((tmp_path / "results" / "uq-s0" / "config.json").read_text())["config"]["lr"]
        == 0.5
    )
    assert not (tmp_path / "results" / "uq-s0.log").exists()
