"""The boot partition, written with mtools on a FAT image file: no mounting, no root.

The bake stages the boot partition as its own small file (mtools works on it at offset 0),
then splices it back into the output image.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import CeilError

# mtools refuses images whose geometry it dislikes unless told not to check; Pi images are fine.
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}


def _run(args: list[str], image: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=ENV, capture_output=True)
    if result.returncode != 0:
        raise CeilError(
            f"{args[0]} failed on the boot partition of {image}: "
            f"{result.stderr.decode(errors='replace').strip() or result.stdout.decode(errors='replace').strip()}"
        )
    return result


def read_file(image: Path, path: str, offset: int = 0) -> bytes | None:
    """Bytes of `path` (e.g. 'cmdline.txt') on the FAT image (or the FAT `offset` bytes into a
    disk image), or None if absent."""
    target = f"{image}@@{offset}" if offset else str(image)
    result = subprocess.run(["mtype", "-i", target, f"::/{path}"], env=ENV, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def missing_files(image: Path, names: list[str], offset: int = 0) -> list[str]:
    """Those of `names` (files in the FAT's top folder) that are not there, from one listing
    instead of each file's bytes (a kernel is tens of MB). FAT names are case-insensitive."""
    present = {name.lower() for name in list_dir(image, offset=offset)}
    return [n for n in names if n.lower() not in present]


def write_file(image: Path, path: str, data: bytes, tmpdir: Path) -> None:
    src = tmpdir / Path(path).name
    src.write_bytes(data)
    _run(["mcopy", "-o", "-i", str(image), str(src), f"::/{path}"], image)


def put_tree(image: Path, src: Path, dest: str) -> None:
    """Copy the folder `src` to `::/dest` (replacing an older one, e.g. from a previous bake)."""
    if subprocess.run(["mdir", "-i", str(image), f"::/{dest}"], env=ENV, capture_output=True).returncode == 0:
        _run(["mdeltree", "-i", str(image), f"::/{dest}"], image)
    _run(["mmd", "-i", str(image), f"::/{dest}"], image)
    entries = sorted(str(p) for p in src.iterdir())
    if entries:
        _run(["mcopy", "-s", "-o", "-i", str(image), *entries, f"::/{dest}/"], image)


def list_dir(image: Path, path: str = "", offset: int = 0) -> list[str]:
    """The names in a folder of the FAT image (or of the FAT `offset` bytes into a disk image)."""
    target = f"{image}@@{offset}" if offset else str(image)
    result = _run(["mdir", "-b", "-i", target, f"::/{path}"], image)
    return [line.rstrip("/").rsplit("/", 1)[-1] for line in result.stdout.decode(errors="replace").splitlines()
            if line.strip()]


def append_cmdline(current: bytes, flags: list[str], replace: tuple[str, ...] = ()) -> bytes:
    """cmdline.txt is one line: append each flag not already present, exactly once. A parameter
    named in `replace` keeps only the given value (the image may carry another country)."""
    line = current.decode().strip().replace("\n", " ")
    words = [w for w in line.split() if w.split("=", 1)[0] not in replace or w in flags]
    for flag in flags:
        if flag not in words:
            words.append(flag)
    return (" ".join(words) + "\n").encode()
