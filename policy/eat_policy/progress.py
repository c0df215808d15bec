"""Progress for the long commands (``train``, ``evaluate``): a rich bar on a terminal; on a log
(a Kubernetes Job, ``nohup``), where rich would show only the final state, plain lines."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any


def bar(**rich_options: Any) -> Any:
    """A rich ``Progress`` (with ``rich_options``) on a terminal, else ``PlainProgress``. Tasks
    take an ``info`` field, shown after the count."""
    if not sys.stdout.isatty():
        return PlainProgress()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), **rich_options)


@dataclasses.dataclass
class _Task:
    description: str
    total: int
    completed: int
    info: str
    printed_s: float = -math.inf


class PlainProgress:
    """Rich's ``Progress`` calls used here, as log lines: one per task whenever its note changes,
    at least every ``every_s`` while it runs, and its last state at the end."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.tasks: list[_Task] = []
        self.start = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:
            self._print(task)

    def add_task(self, description: str, total: int, completed: int = 0, info: str = "") -> int:
        self.tasks.append(_Task(description, total, completed, info))
        return len(self.tasks) - 1

    def update(self, task: int, completed: int | None = None, advance: int = 0, info: str | None = None) -> None:
        t = self.tasks[task]
        t.completed = (t.completed if completed is None else completed) + advance
        changed = info is not None and info != t.info
        t.info = t.info if info is None else info
        if changed or time.monotonic() - t.printed_s >= self.every_s:
            self._print(t)

    def advance(self, task: int) -> None:
        self.update(task, advance=1)

    def _print(self, t: _Task) -> None:
        t.printed_s = now = time.monotonic()
        print(f"{t.description} {t.completed}/{t.total} {now - self.start:.0f}s {t.info}".rstrip(), flush=True)
