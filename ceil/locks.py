"""One way for a ceil command to wait its turn: an flock, which the kernel frees when the holder
exits, however it exits (a killed bake leaves no lock to clean up)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def _say_on_stderr(text: str) -> None:
    from .ui import notice

    notice(text)


@contextlib.contextmanager
def exclusive(path: Path, why: str, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `path` for the block: a folder itself (nothing is left in it), or a lock file, created
    0600. A second holder says it waits, and why (`say`, by default on stderr), then waits."""
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (say or _say_on_stderr)(f"waiting for another ceil command that holds {path}: {why}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_held(folder: Path, why: str) -> Iterator[None]:
    """`folder`, made if missing, for one command at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder, why):
        yield
