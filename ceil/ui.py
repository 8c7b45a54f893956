"""Console output: step logging with durations and progress bars, on stderr (stdout stays for data)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False)


def notice(text: str) -> None:
    """A line the user should see but that stops nothing (text, not markup)."""
    console.print(f"[yellow]{escape(text)}[/yellow]")


def confirm(question: str) -> None:
    """Ask before something that cannot be undone; a "no" stops the command with exit status 1
    and says nothing was done (click's abort=True exits 130, as for Ctrl-C)."""
    if not click.confirm(question):
        console.print("nothing was done")
        raise SystemExit(1)


@contextlib.contextmanager
def step(name: str, detail: str = "") -> Iterator[Callable[[str], None]]:
    """Log a bake step's name and how long it took; yields a setter for a detail known only
    at the end."""
    start = time.monotonic()
    said = [detail]
    yield lambda text: said.__setitem__(0, text)
    took = time.monotonic() - start
    # The detail quotes paths and names from cluster.yaml or the command line: text, not markup.
    console.print(f"[dim]  {name:<16}[/dim] {escape(said[0])} [dim]({took:.2f}s)[/dim]")


@contextlib.contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[callable]:
    """A bytes progress bar; yields `advance(n)`. Quiet when stderr is not a terminal."""
    with Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
