"""/var/lib/ceil/addons.json: what the add-on job found and did, rewritten after every change.

Written atomically (temporary file, fsync, rename) so a power cut leaves either the old or
the new report, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StatusFile:
    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, Any] = {"nodes": {}, "addons": {}}
        if path and path.is_file():
            try:
                old = json.loads(path.read_text())
                self.data["addons"] = dict(old.get("addons", {}))
            except ValueError:
                pass  # a torn file from an older writer: start afresh

    def nodes(self, ready: list[str], missing: list[str]) -> None:
        self.data["nodes"] = {"ready": ready, "missing": missing, "at": _now()}
        self.save()

    def addon(self, name: str, state: str, message: str = "", **extra: Any) -> None:
        self.data["addons"][name] = {"state": state, "message": message, "at": _now(), **extra}
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.data["updated"] = _now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
