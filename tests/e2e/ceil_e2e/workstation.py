"""The user's side of the workstation tests: their SSH agent, and `python bake.py` as they run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ceil_infra.helpers import wait_for

REPO = Path(__file__).resolve().parents[3]


class Agent:
    """An ssh-agent holding the run's key, as a user's agent holds theirs: `bake.py` finds the
    key there (nothing in ~/.ssh), and keeps host keys in a cache of this test's own."""

    def __init__(self, tmp_path: Path, key: Path):
        self.sock, self.cache = tmp_path / "agent.sock", tmp_path / "cache"
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.sock)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for("the ssh agent's socket", self.sock.exists, timeout=10, every=0.2)
            subprocess.run(["ssh-add", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(self.sock)},
                           check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def bake_py(self) -> list[str]:
        return ["env", f"SSH_AUTH_SOCK={self.sock}", f"CEIL_CACHE={self.cache}", sys.executable, str(REPO / "bake.py")]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
