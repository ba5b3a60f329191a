"""Records made before issue 34 read as what they ran: a cq run without ``cq-grid`` is the
two's-complement grid, a QAFeL min–max run without ``qafel-minmax`` the anchored grid, an LPT-FL
run without ``lpt-points`` the conv/linear input-output points, and each is labelled apart from
new runs of the same preset (the committed records are the test data)."""

import json
import shutil
from pathlib import Path

from experiments.reporting.legacy import upgrade_config
from experiments.reporting.runs import find_runs, group_settings

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_committed_cq_runs_read_as_the_twos_complement_grid_and_fp32_is_unchanged():
    runs = {r.run_id: r for r in find_runs([RESULTS / "lenet-cifar10-150"]).runs}
    assert "cq-grid" not in json.loads((runs["iid-cq4-s0"].path / "config.json").read_text())
    assert runs["iid-cq4-s0"].method == "cq4(cq-grid=twos-complement)"
    assert runs["iid-cq4-s0"].identity.label == "CQ 4-bit (cq-grid=twos-complement)"
    assert runs["iid-cq2-s0"].method == "cq2(cq-grid=twos-complement)"
    assert runs["iid-fp32-s0"].method == "fp32" and runs["iid-uq-s0"].method == "uq"


def test_the_committed_minmax_run_reads_as_the_anchored_grid_and_qsgd_runs_are_unchanged():
    runs = {r.run_id: r for r in find_runs([RESULTS / "lenet-cifar10-async"]).runs}
    old = runs["qafel-custom-minmax4-minmax8-hidden-s0"]
    assert old.method == "qafel-custom(minmax4/minmax8/hidden, qafel-minmax=anchored)"
    assert runs["qafel-custom-qsgd8-qsgd8-hidden-s0"].method == "qafel-custom(qsgd8/qsgd8/hidden)"


def test_committed_lpt_runs_read_as_the_points_before_issue_34():
    runs = {r.run_id: r for r in find_runs([RESULTS / "lenet-cifar10-lpt"]).runs}
    assert runs["0.16-lpt8-s0"].method == "lpt8(lpt-points=conv-linear-io)"
    assert runs["0.04-lpt8-noma-s0"].method == "lpt8-noma(lpt-points=conv-linear-io)"
    assert runs["0.16-fp32-s0"].method == "fp32"


def test_a_new_run_of_the_same_preset_is_a_method_of_its_own_in_the_same_setting(tmp_path):
    for name, grid in (("old", None), ("new", "symmetric")):
        folder = tmp_path / name
        shutil.copytree(RESULTS / "lenet-cifar10-150" / "iid-cq4-s0", folder)
        if grid:
            document = json.loads((folder / "config.json").read_text())
            document["config"]["cq-grid"] = grid
            (folder / "config.json").write_text(json.dumps(document))
    shutil.copytree(RESULTS / "lenet-cifar10-150" / "iid-fp32-s0", tmp_path / "fp32")
    [setting] = group_settings(find_runs([tmp_path]).runs)
    assert set(setting.methods) == {"fp32", "cq4", "cq4(cq-grid=twos-complement)"}


def test_keys_a_record_holds_are_read_as_written():
    new = {
        "method": "qafel-custom",
        "qafel-uplink": "minmax4",
        "qafel-minmax": "flsim",
        "cq-grid": "symmetric",
        "lpt-points": "authors",
    }
    assert upgrade_config(new) == new
    assert "qafel-minmax" not in upgrade_config({"method": "qafel", "qafel-uplink": "qsgd4"})
