"""The toolkit's one progress display: a live bar on a terminal, plain lines anywhere else.

Progress goes to stderr, so that what a command prints on stdout stays clean. Rich draws a bar
on a terminal; written to a file or a pipe, it would show nothing until the step ends. There
each step prints a line when it starts and at every tenth of its way instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")
STEPS = 10  # lines per task when the output is not a terminal


def progress_bar(enabled: bool, *columns: ProgressColumn) -> Progress:
    """A progress display for long work (nothing when `enabled` is False); `columns` are shown
    after the count, e.g. a `TextColumn` of a task field."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        return _LineProgress(*columns, console=console)
    return Progress(*columns, console=console, disable=not enabled)


class RateColumn(ProgressColumn):
    """Throughput: items per second over the last half minute."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")


def track(items: Sequence[T], description: str, enabled: bool) -> Iterator[T]:
    """`items`, one by one, with a progress display."""
    with progress_bar(enabled) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


class _LineProgress(Progress):
    """Prints `description: done/total (elapsed)` and the task's fields as it goes."""

    def __init__(self, *columns: ProgressColumn, console: Console):
        super().__init__(*columns, console=console, disable=True)
        self._shown: dict[TaskID, int] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        self._shown[task] = -1
        self._show(task)
        return task

    def update(self, task_id: TaskID, **changes) -> None:
        super().update(task_id, **changes)
        self._show(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._show(task_id)

    def _show(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if not task.visible:
            return
        tenth = int(STEPS * task.completed / task.total) if task.total else 0
        if tenth <= self._shown[task_id]:
            return
        self._shown[task_id] = tenth
        fields = "".join(f" {value}" for value in task.fields.values() if value)
        total = f"/{task.total:g}" if task.total else ""
        line = f"{task.description}: {task.completed:g}{total}{fields}"
        self.console.print(f"{line} ({task.elapsed or 0:.0f} s)", markup=False, highlight=False)


def hide_library_bars() -> None:
    """Hide transformers' own bars ("Loading weights", "Writing model shards"), which would
    otherwise print on every model load and save; the Hub's download bars stay.

    Call it before transformers is imported: transformers reads the Hub's global setting once,
    at import. The Hub names its download bars `huggingface_hub.*`, so enabling that group keeps
    them. `HF_HUB_DISABLE_PROGRESS_BARS`, when set, decides alone.
    """
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        return
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    disable_progress_bars()
    enable_progress_bars("huggingface_hub")
