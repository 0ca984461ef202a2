"""Progress for long runs: a bar per stage and per board on a terminal, one line per step and per
job in logs (a nightly log shows what finished when, not an hour of silence)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=self.console,
        ) if self.live else None
        self._boards: dict[str, TaskID] = {}
        if self._progress:
            self._progress.start()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None) -> Iterator[Callable[[str], None]]:
        if not self.live:
            self.console.print(f"[bold]{name}[/bold]")
        task = self._progress.add_task(name, total=total, status="") if self._progress else None
        done, start = 0, time.monotonic()

        def step(what: str) -> None:
            nonlocal done
            done += 1
            if self._progress and task is not None:
                self._progress.update(task, advance=1, status=what)
            else:
                minutes, seconds = divmod(int(time.monotonic() - start), 60)
                self.console.print(f"  {minutes:d}:{seconds:02d} {what}", highlight=False, markup=False)

        yield step
        if self._progress and task is not None:
            self._progress.update(task, total=done, completed=done, status="done")
        else:
            self.console.print(f"  {done} steps done")

    def boards(self, jobs_per_board: dict[str, int], what: str = "jobs") -> None:
        """A bar per board; ``what`` names a later batch (repeats after the run's own jobs)."""
        for board, total in jobs_per_board.items():
            if self._progress:
                name = f"board {board}" if what == "jobs" else f"board {board} {what}"
                self._boards[board] = self._progress.add_task(name, total=total, status="")
            else:
                self.console.print(f"board {board}: {total} {what}")

    def job_done(self, board: str, what: str, ok: bool, detail: str) -> None:
        mark = "ok" if ok else "FAILED"
        if self._progress and board in self._boards:
            self._progress.update(self._boards[board], advance=1, status=f"{what}: {mark} {detail}"[:70])
        else:
            self.console.print(f"  [{board}] {what}: {mark} {detail}", highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress:
            self._progress.stop()
