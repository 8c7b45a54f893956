"""The test-bed cache's two rules, shared by every artefact kept there (images, repositories,
the API server build): one builder at a time per artefact (a lock file), and nothing partial
ever visible (built in a temporary sibling, renamed into place when complete)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _unmount_below(path: Path) -> None:
    """mmdebstrap mounts /proc, /sys, /dev in the chroot; a killed build can leave them behind."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_below(path)
        shutil.rmtree(path)


def atomic_dir(final: Path, build) -> None:
    """Run build(tmp) in a temporary sibling of `final`, then rename it to `final`."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        remove_tree(final)
        tmp.rename(final)
    finally:
        remove_tree(tmp)


def ensure_built(final: Path, build, force: bool, what: str) -> Path:
    """build(tmp) renamed to `final`, under the lock of final's folder, unless `final` already holds
    a finished build (its manifest.json, written last) and force is off."""
    with lock(final.parent / ".lock"):
        if force or not (final / "manifest.json").is_file():
            atomic_dir(final, build)
        else:
            logging.getLogger(final.parent.name).info("%s cached: %s", what, final)
    return final
