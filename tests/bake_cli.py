"""`python bake.py ...` as a user runs it, from their folder: the one way tests start the CLI in a
subprocess (what they check is what a user sees: exit status, stdout, stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bake_py(*args: str, cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bake.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def bake_py_waiting(*args: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`bake.py ARGS` started while the test holds secrets/.lock: the process, still waiting, and
    what it said up to its wait. It must say that it waits, not go on or stop."""
    proc = subprocess.Popen([sys.executable, str(REPO / "bake.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said = ""
    while "waiting for another ceil command" not in said:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError(f"bake.py {' '.join(args)} went on or stopped without waiting: {said}")
        said += line
    return proc, said
