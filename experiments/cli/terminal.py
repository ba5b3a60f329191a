"""What ``fp8fl-flwr run`` shows of a run's streamed log: quiet by default, everything with
``--verbose``.

Quiet keeps fp8fl's per-round line, its summary table, every warning and error (and tracebacks),
and leaves out Flower's INFO lines, among them the round-by-round chatter and the History dump at
the end. On a terminal, the per-round lines also drive a rich progress bar: round, accuracy, MB
sent and the estimated time left.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from experiments.cli.run_outcome import ANSI

__all__ = [
    "ROUND_LINE",
    "QuietEcho",
    "VerboseEcho",
    "echo_for",
    "is_flower_info",
    "quiet_flower_logs",
]

FLOWER_INFO = re.compile(r"^(INFO|DEBUG)\s*:\s?(?P<message>.*)$")
ROUND_LINE = re.compile(
    r"\[(?P<run>[^\]\s]+)\] round (?P<round>\d+)/(?P<total>\d+): (?P<facts>.*)$"
)
"""fp8fl's per-round line (``strategies.progress.RunProgress``)."""


def is_flower_info(line: str) -> bool:
    """A Flower INFO/DEBUG log line that is not one of fp8fl's own messages."""
    match = FLOWER_INFO.match(ANSI.sub("", line).strip())
    return match is not None and not match["message"].strip().startswith("fp8fl:")


class VerboseEcho:
    """Every line, as it came."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def __call__(self, line: str) -> None:
        self.out.write(line)
        self.out.flush()

    def close(self) -> None:
        pass


class QuietEcho:
    """Everything but Flower's INFO lines; per-round lines also move a progress bar when the
    console is a terminal."""

    def __init__(self, out: TextIO | None = None, console: Console | None = None) -> None:
        self.out = out or sys.stdout
        self.console = console or Console(file=self.out)
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, line: str) -> None:
        if is_flower_info(line):
            return
        text = line.rstrip("\n")
        round_line = ROUND_LINE.search(ANSI.sub("", text))
        if round_line is not None and self.console.is_terminal:
            self._advance(round_line)
        if self.progress is not None:
            self.progress.console.print(Text.from_ansi(text))
        else:
            self.out.write(line)
            self.out.flush()

    def _advance(self, line: re.Match[str]) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn(f"[bold]{line['run']}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task("", total=int(line["total"]))
            self.progress.start()
        facts = line["facts"].split(" · ")
        self.progress.update(
            self.task, completed=int(line["round"]), description=" · ".join(facts[:2])
        )
        if int(line["round"]) >= int(line["total"]):
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def echo_for(verbose: bool) -> VerboseEcho | QuietEcho:
    return VerboseEcho() if verbose else QuietEcho()


class _FlowerInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or str(record.msg).startswith("fp8fl:")


@contextmanager
def quiet_flower_logs(verbose: bool = False) -> Iterator[None]:
    """In this process (an in-process simulation), Flower's INFO lines are left out while the
    block runs, unless ``verbose``; fp8fl's own messages, warnings and errors still show."""
    flower = logging.getLogger("flwr")
    dropped = _FlowerInfoFilter()
    if not verbose:
        flower.addFilter(dropped)
    try:
        yield
    finally:
        flower.removeFilter(dropped)
