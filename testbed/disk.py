"""Disk image layout of a test bed, without loop devices or mounts.

MBR with p1 FAT32 (the flavor's boot label, type 0x0c, bootable) and p2 ext4 (the flavor's root
label) filling the rest, as on the real Pi images. The file systems are created in place inside the
sparse image file: mkfs.fat --offset, mtools for the FAT contents, mke2fs -E offset -d to populate
ext4 from a directory. Only blocks with data are allocated.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
SECTOR = 512


@dataclass(frozen=True)
class Layout:
    size: int        # bytes, whole image
    boot_start: int  # bytes
    boot_size: int   # bytes
    disk_id: str     # 8 hex digits: the MBR disk signature (PARTUUID prefix)

    @property
    def root_start(self) -> int:
        return self.boot_start + self.boot_size

    @property
    def root_size(self) -> int:
        return self.size - self.root_start


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc


def partition(img: Path, layout: Layout) -> None:
    with open(img, "wb") as f:
        f.truncate(layout.size)
    script = (
        "label: dos\n"
        f"label-id: 0x{layout.disk_id}\n"
        "unit: sectors\n"
        f"start={layout.boot_start // SECTOR}, size={layout.boot_size // SECTOR}, type=c, bootable\n"
        f"start={layout.root_start // SECTOR}, type=83\n"
    )
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(img)], input=script)


def make_boot(img: Path, layout: Layout, label: str, files: Path) -> None:
    volid = layout.disk_id  # any 32-bit id; reuse the disk id so the build is reproducible
    _run([
        "mkfs.fat", "-F", "32", "-n", label, "-i", volid, f"--offset={layout.boot_start // SECTOR}",
        str(img), str(layout.boot_size // 1024),
    ])
    spec = f"{img}@@{layout.boot_start}"
    entries = sorted(str(p) for p in files.iterdir())
    if entries:
        _run(["mcopy", "-s", "-p", "-m", "-i", spec, *entries, "::/"], env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def make_root(img: Path, layout: Layout, label: str, tree: Path) -> None:
    _run([
        "mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-E", f"offset={layout.root_start}",
        "-d", str(tree), str(img), f"{layout.root_size // 1024}k",
    ])


def build(img: Path, layout: Layout, boot_label: str, boot_files: Path, root_label: str, root_tree: Path) -> None:
    partition(img, layout)
    make_boot(img, layout, boot_label, boot_files)
    make_root(img, layout, root_label, root_tree)
