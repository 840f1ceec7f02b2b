"""Live displays on stderr (Rich): a spinner with a changing line, and transfer bars. On a terminal they
redraw in place; elsewhere (pipes, CI logs) they stay silent and only the final lines are printed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.status import Status


@cache
def console() -> Console:
    shown = Console(stderr=True, highlight=False)
    if not shown.is_terminal:
        shown.width = max(shown.width, 160)  # a log keeps the final frame whole, not cut at 80 columns
    return shown


@contextmanager
def waiting(text: str) -> Iterator[Status]:
    """A spinner and one line of text, updated with `.update(text)`; gone when the block ends."""
    with console().status(text, spinner="dots") as status:
        yield status


def transfer() -> Progress:
    """Bars for bytes moved: done / total, rate, a task's own `detail` field, elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console(),
        transient=False,
    )
