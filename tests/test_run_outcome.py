"""Whether a ``flwr run`` finished is read from the run's ``summary.json``, and a failure's cause
from the first traceback of the streamed log (Flower's exit code says neither)."""

import os
import time

from experiments.cli.run_outcome import (
    ExpectedRun,
    expected_run,
    failure_cause,
    reported_failure,
    run_config_args,
)
from fp8fl.run.results import resolve_results_dir

SERVER_LOG = """\x1b[92mINFO \x1b[0m:      Starting Flower ServerApp
Traceback (most recent call last):
  File "/venv/flwr/serverapp/server_app.py", line 161, in __call__
    components = self._server_fn(context)
  File "/flwr/apps/fp8fl/strategies/app.py", line 19, in server_fn
    strategy = QuantizedFedAvg(run)
fp8fl.data.cache.DatasetNotFoundError: cifar100: data set not found; searched /x/cifar-100-python
\x1b[91mERROR \x1b[0m:     Exit Code: 700
"""

CLIENT_LOG = """Traceback (most recent call last):
  File "/venv/flwr/supercore/object_ref.py", line 159, in load_app
    module = importlib.import_module(module_str)
  File "/flwr/apps/fp8fl/clients/app.py", line 6, in <module>
    import fp8fl_missing_module
ModuleNotFoundError: No module named 'fp8fl_missing_module'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/venv/flwr/simulation/run_simulation.py", line 347, in _main_loop
    raise RuntimeError("An error was encountered. Ending simulation.") from ex
RuntimeError: An error was encountered. Ending simulation.
"""


def test_the_root_cause_and_its_side_are_named():
    assert failure_cause(SERVER_LOG.splitlines()) == (
        "ServerApp failed: DatasetNotFoundError: cifar100: data set not found; "
        "searched /x/cifar-100-python"
    )
    assert failure_cause(CLIENT_LOG.splitlines()) == (
        "ClientApp failed: ModuleNotFoundError: No module named 'fp8fl_missing_module'"
    )


def test_a_log_without_a_traceback_has_no_cause():
    assert failure_cause(["INFO : round 1", "ERROR : something odd"]) is None


def test_the_cause_printed_into_a_log_is_read_back(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("noise\nfp8fl: run failed: ServerApp failed: ValueError: bad\n")
    assert reported_failure(log) == "ServerApp failed: ValueError: bad"
    log.write_text("a finished run\n")
    assert reported_failure(log) is None


def test_run_config_arguments_in_both_spellings():
    args = ["run", ".", "--run-config", "a=1", "--stream", "--run-config=b='x'", "-c", "c=2"]
    assert run_config_args(args) == ["a=1", "b='x'", "c=2"]


def test_the_expected_folder_comes_from_defaults_and_overrides(tmp_path):
    root = resolve_results_dir("results").parent
    named = expected_run(root, [f"results-dir='{tmp_path}' run-name='x'"])
    assert named == ExpectedRun(tmp_path, "x")
    resumed = expected_run(root, [f"results-dir='{tmp_path}' resume='old' run-name='x'"])
    assert resumed == ExpectedRun(tmp_path, "old")
    assert expected_run(root, ["num-clients=0"]) is None  # invalid: the ServerApp fails too


def test_only_a_summary_written_since_the_start_counts(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    past = time.time() - 3600
    os.utime(tmp_path / "old" / "summary.json", (past, past))
    started = time.time()
    assert not ExpectedRun(tmp_path, None).finished_since(started)
    assert not ExpectedRun(tmp_path, "old").finished_since(started)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "summary.json").write_text("{}")
    assert ExpectedRun(tmp_path, None).finished_since(started)
    assert ExpectedRun(tmp_path, "new").finished_since(started)
    assert not ExpectedRun(tmp_path, "missing").finished_since(started)
