"""Console output: step logging with durations and progress bars, on stderr (stdout stays for data)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

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

# Roles baked side by side (bakery.bake_side_by_side) keep each role's lines here, in the thread
# working on it, and print them one role after another: interleaved, the steps of two roles read
# as one muddle. None: print at once.
_transcript: ContextVar[list[str] | None] = ContextVar("transcript", default=None)
# rich shows one live display at a time: while work runs side by side, every progress bar is a
# task of this one display (rich's Progress takes tasks from any thread).
_shared_progress: Progress | None = None


def say(markup: str) -> None:
    """Print a line of rich markup, or keep it in this thread's transcript (see transcript())."""
    lines = _transcript.get()
    if lines is None:
        console.print(markup)
    else:
        lines.append(markup)


@contextlib.contextmanager
def transcript(lines: list[str]) -> Iterator[list[str]]:
    """While it lasts, say() and step() in this thread append to `lines` instead of printing."""
    token = _transcript.set(lines)
    try:
        yield lines
    finally:
        _transcript.reset(token)


def print_transcript(lines: list[str]) -> None:
    for line in lines:
        console.print(line)


def notice(text: str) -> None:
    """A line the user should see but that stops nothing (text, not markup); with the lines of
    the role it concerns when roles are baked side by side (say())."""
    say(f"[yellow]{escape(text)}[/yellow]")


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
    say(f"[dim]  {name:<16}[/dim] {escape(said[0])} [dim]({took:.2f}s)[/dim]")


def _progress_display() -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def shared_progress() -> Iterator[None]:
    """One display for the progress bars of work running side by side, in any thread."""
    global _shared_progress
    with _progress_display() as progress:
        _shared_progress = progress
        try:
            yield
        finally:
            _shared_progress = None


def stop_if_asked(stop: threading.Event | None) -> None:
    """KeyboardInterrupt once `stop` is set: how work in a worker thread learns that the user
    pressed Ctrl-C (signals reach the main thread only)."""
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def byte_progress(description: str, total: int | None,
                  stop: threading.Event | None = None) -> Iterator[Callable[[int], None]]:
    """A bytes progress bar; yields `advance(n)`. Quiet when stderr is not a terminal. Once `stop`
    is set, advance raises KeyboardInterrupt (stop_if_asked): a worker thread copying gigabytes
    stops within its next chunk."""
    def advancing(progress: Progress, task) -> Callable[[int], None]:
        def advance(n: int) -> None:
            stop_if_asked(stop)
            progress.advance(task, n)
        return advance

    if _shared_progress is not None:
        progress = _shared_progress
        task = progress.add_task(description, total=total)
        try:
            yield advancing(progress, task)
        finally:
            progress.remove_task(task)
        return
    with _progress_display() as progress:
        yield advancing(progress, progress.add_task(description, total=total))
