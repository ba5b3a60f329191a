"""A quiet terminal: fp8fl's round lines, its summary, warnings and errors; no Flower INFO lines
or History dump unless ``--verbose``; a progress bar with the time left on a terminal."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from experiments.cli.flwr_cli import verbose_flag
from experiments.cli.terminal import (
    ROUND_LINE,
    QuietEcho,
    VerboseEcho,
    is_flower_info,
    quiet_flower_logs,
)
from strategies.progress import RunProgress, format_duration

# the shape of ``fp8fl-flwr run .``'s streamed log (Flower 1.39), abridged
STREAM = """\
Successfully started run 16212517388064382270
\x1b[92mINFO \x1b[0m:      Starting Flower ServerApp, config: num_rounds=2, no round_timeout
\x1b[92mINFO \x1b[0m:      [INIT]
\x1b[92mINFO \x1b[0m:      fp8fl: 10 clients, partitions 0..9, 50000 training examples in all
\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.
\x1b[92mINFO \x1b[0m:      [ROUND 1]
\x1b[92mINFO \x1b[0m:      configure_fit: strategy sampled 2 clients (out of 10)
[run-a] round 1/2: acc 29.56% · 3.21 MB sent · 2 ok / 0 failed / 0 rejected · 43.8 s · 44s left
\x1b[91mERROR \x1b[0m:     fp8fl: client of partition 3 failed: boom
[run-a] round 2/2: acc 34.73% · 6.42 MB sent · 2 ok / 0 failed / 0 rejected · 40.0 s · 0s left
│ final accuracy │ 34.73% │
\x1b[92mINFO \x1b[0m:      [SUMMARY]
\x1b[92mINFO \x1b[0m:      Run finished 2 round(s) in 84.00s
\x1b[92mINFO \x1b[0m:      	History (loss, centralized):
\x1b[92mINFO \x1b[0m:      		round 0: 2.3026544677734373
\x1b[92mINFO \x1b[0m:      	{'accuracy': [(0, 0.0948),
\x1b[92mINFO \x1b[0m:
Traceback (most recent call last):
ValueError: shown
"""


def echoed(echo) -> str:
    for line in STREAM.splitlines(keepends=True):
        echo(line)
    echo.close()
    return echo.out.getvalue()


def test_flower_info_lines_are_told_from_fp8fls_own():
    lines = STREAM.splitlines()
    assert is_flower_info(lines[1]) and is_flower_info(lines[-4])  # config, History dump
    assert not is_flower_info(lines[3])  # fp8fl's INFO message
    assert not is_flower_info(lines[4]) and not is_flower_info(lines[8])  # WARNING, ERROR
    assert not is_flower_info(lines[7])  # the round line


def test_quiet_keeps_rounds_summary_warnings_and_errors_only():
    shown = echoed(QuietEcho(io.StringIO()))
    kept = [line for line in STREAM.splitlines() if not is_flower_info(line)]
    assert shown.splitlines() == kept
    assert "History" not in shown and "[ROUND" not in shown and "configure_fit" not in shown
    assert "round 2/2" in shown and "final accuracy" in shown and "ValueError: shown" in shown
    assert "WARNING" in shown and "ERROR" in shown and "fp8fl: 10 clients" in shown


def test_verbose_shows_everything():
    assert echoed(VerboseEcho(io.StringIO())) == STREAM


def test_on_a_terminal_round_lines_drive_a_progress_bar():
    out = io.StringIO()
    echo = QuietEcho(out, Console(file=out, force_terminal=True, width=120))
    echo(STREAM.splitlines(keepends=True)[7])
    assert echo.progress is not None
    task = echo.progress.tasks[0]
    assert (task.completed, task.total) == (1, 2)
    assert task.description == "acc 29.56% · 3.21 MB sent"
    echo(STREAM.splitlines(keepends=True)[9])
    assert echo.progress is None  # the last round closes it
    assert "round 2/2" in out.getvalue()


def test_the_round_line_keeps_its_run_id_and_says_the_time_left():
    out = io.StringIO()
    progress = RunProgress("run-a", 4, Console(file=out, force_terminal=False, width=80))
    record = {"round": 1, "accuracy": 0.5, "cum_bytes": 3_210_000, "wall_s": 30.0}
    progress.round_done(record | {"elapsed_s": 40.0, "clients_ok": 2})
    line = out.getvalue().strip()
    match = ROUND_LINE.search(line)
    assert match is not None and match["run"] == "run-a", line  # not eaten as rich markup
    assert "acc 50.00% · 3.21 MB sent" in line and line.endswith("2m 00s left")  # 3 × 40 s
    assert format_duration(3725) == "1h 02m" and format_duration(42) == "42s"


def test_in_process_runs_leave_out_flowers_info_unless_verbose():
    flower = logging.getLogger("flwr")
    caught: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: caught.append(record.getMessage())
    flower.addHandler(handler)
    level = flower.level
    flower.setLevel(logging.INFO)
    try:
        with quiet_flower_logs():
            for level_, message in [
                (logging.INFO, "[ROUND 1]"),
                (logging.INFO, "fp8fl: resuming r after round 2"),
                (logging.WARNING, "a warning"),
            ]:
                flower.log(level_, message)
        with quiet_flower_logs(verbose=True):
            flower.info("[ROUND 2]")
    finally:
        flower.removeHandler(handler)
        flower.setLevel(level)
    assert caught == ["fp8fl: resuming r after round 2", "a warning", "[ROUND 2]"]


def test_verbose_is_fp8fl_flwrs_own_flag_and_not_passed_to_flwr():
    assert verbose_flag(["run", ".", "--verbose", "--stream"]) == (True, ["run", ".", "--stream"])
    assert verbose_flag(["run", "."]) == (False, ["run", "."])
