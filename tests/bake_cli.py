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
