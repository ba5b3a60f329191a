"""Progress of a run: a live rich bar on a terminal, one line per round otherwise (e.g. in
``flwr run --stream`` logs: round, accuracy, bytes sent, clients, time and the estimated time
left), and a short summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["RunProgress", "format_bytes", "format_duration"]


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    return f"{count:.2f} GB"


def format_duration(seconds: float) -> str:
    """``1h 02m``, ``3m 05s`` or ``42s``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _describe(record: dict[str, Any]) -> str:
    acc = "—" if record.get("accuracy") is None else f"{100 * record['accuracy']:.2f}%"
    return (
        f"acc {acc} · {format_bytes(record.get('cum_bytes', 0))} sent · "
        f"{record.get('clients_ok', 0)} ok / {record.get('clients_failed', 0)} failed / "
        f"{record.get('clients_rejected', 0)} rejected"
    )


class RunProgress:
    def __init__(self, run_id: str, total_rounds: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.run_id = run_id
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn(f"[bold]{run_id}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("starting", total=total_rounds)
            self.progress.start()
        self.total_rounds = total_rounds
        self.rounds_done = 0  # in this process (a resumed run starts later)

    def round_done(self, record: dict[str, Any]) -> None:
        self.rounds_done += 1
        if self.progress is not None:
            self.progress.update(
                self.task, completed=record["round"], description=_describe(record)
            )
        else:
            left = (self.total_rounds - record["round"]) * (
                record.get("elapsed_s", 0) / self.rounds_done
            )
            # plain text (no rich markup: the run id in brackets is not a style)
            self.console.out(
                f"[{self.run_id}] round {record['round']}/{self.total_rounds}: "
                f"{_describe(record)} · {record.get('wall_s', 0):.1f} s · "
                f"{format_duration(left)} left",
                highlight=False,
            )

    def finish(self, summary: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
        table = Table(title=f"fp8fl run {self.run_id}")
        table.add_column("")
        table.add_column("value", justify="right")
        final, best = summary.get("final_accuracy"), summary.get("best_accuracy")
        rows = [
            ("rounds", str(summary.get("rounds"))),
            ("final accuracy", "—" if final is None else f"{100 * final:.2f}%"),
            (
                "best accuracy",
                "—" if best is None else f"{100 * best:.2f}% (round {summary.get('best_round')})",
            ),
            ("bytes up", format_bytes(summary.get("bytes_up", 0))),
            ("bytes down", format_bytes(summary.get("bytes_down", 0))),
            ("bytes total", format_bytes(summary.get("total_bytes", 0))),
            ("wall time", f"{summary.get('wall_s', 0):.1f} s"),
            ("results", str(summary.get("results_dir"))),
        ]
        for name, value in rows:
            table.add_row(name, value)
        self.console.print(table)
