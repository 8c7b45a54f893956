"""The ext4 root partition through debugfs: no mounting, no root. Files are written into a staged
partition file (content too big for the boot partition: k3s binaries); files are read straight
from the image at the partition's offset (the base image's package list)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

from .errors import CeilError


def write_files(image: Path, files: dict[str, Path], mode: int = 0o755) -> None:
    """Write {absolute target path: local file} into the ext4 file system `image`, root-owned.

    Parent folders are created (0755). An existing target is replaced, so a re-bake converges.
    """
    if shutil.which("debugfs") is None:
        raise CeilError("debugfs not found: it writes k3s files into the root partition"
                        " (apt install e2fsprogs / brew install e2fsprogs and add its sbin to PATH)")
    script: list[str] = []
    made: set[str] = set()
    for target, src in sorted(files.items()):
        path = PurePosixPath(target)
        if not path.is_absolute() or ".." in path.parts:
            raise CeilError(f"root-fs target {target!r} must be an absolute path without '..'")
        for parent in reversed(path.parents):
            p = str(parent)
            if p != "/" and p not in made:
                script.append(f'mkdir "{p}"')  # an existing folder only prints a complaint
                made.add(p)
        script += [
            f'rm "{path}"',
            f'write "{src}" "{path}"',
            f'set_inode_field "{path}" mode 0{0o100000 | mode:o}',
            f'set_inode_field "{path}" uid 0',
            f'set_inode_field "{path}" gid 0',
        ]
    result = subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input="\n".join(script) + "\n",
                            capture_output=True, text=True)
    missing = [t for t in files if not exists(image, t)]
    if result.returncode != 0 or missing:
        raise CeilError(f"debugfs could not write {missing or list(files)} into the root partition: {result.stderr.strip()[-800:]}")


def exists(image: Path, target: str) -> bool:
    r = subprocess.run(["debugfs", "-R", f'stat "{target}"', str(image)], capture_output=True, text=True)
    return r.returncode == 0 and "Inode:" in r.stdout


def read_file(image: Path, target: str) -> bytes:
    r = subprocess.run(["debugfs", "-R", f'cat "{target}"', str(image)], capture_output=True)
    return r.stdout


def read_file_at(image: Path, offset: int, target: str) -> bytes | None:
    """`target` from the ext4 file system starting `offset` bytes into `image` (e2fsprogs reads
    `image?offset=N`), or None when it does not exist."""
    if shutil.which("debugfs") is None:
        raise CeilError("debugfs not found: it reads the base image's root partition"
                        " (apt install e2fsprogs / brew install e2fsprogs and add its sbin to PATH)")
    fs = f"{image}?offset={offset}"
    stat = subprocess.run(["debugfs", "-R", f'stat "{target}"', fs], capture_output=True, text=True)
    if "Inode:" not in stat.stdout:
        return None
    return subprocess.run(["debugfs", "-R", f'cat "{target}"', fs], capture_output=True, check=True).stdout
