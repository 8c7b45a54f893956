"""One way to write a file only its owner may read: the secrets, the admin kubeconfig, the
workstation's known_hosts. Each is whole or absent, never half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes | str, durable: bool = False) -> None:
    """Write `path` atomically, 0600 from the first byte (no window where others can read it).
    A temp file of its own in the same folder, then renamed: two commands writing at once each
    leave a whole file. `durable` fsyncs before the rename, for what a lost file would cost the
    cluster (a secret); the workstation's own caches can be made again and skip the wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What ceil writes into an output folder (images, manifests, their partial files, the admin
# kubeconfigs): each is git-ignored there by name, never the folder's other files.
OUTPUT_NAMES = ("ceil-*.img", "ceil-*.json", ".ceil-*", "kubeconfig", "kubeconfig-tunnel")


def git_ignored_folder(path: Path, what: str) -> None:
    """Make the folder `path` with a .gitignore naming what ceil writes there, unless it has one:
    baked images hold the cluster's keys and the kubeconfig its admin key, and must never be
    committed, wherever the folder is (the repository's own .gitignore covers only its out/). By
    name, not `*`: `--out .` must not hide a project's own files from git."""
    path.mkdir(parents=True, exist_ok=True)
    marker = path / ".gitignore"
    if not marker.exists():
        marker.write_text(f"# ceil: {what}; never commit them\n" + "".join(f"/{n}\n" for n in OUTPUT_NAMES))
