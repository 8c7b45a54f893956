"""Thumb drives for the QEMU guests (router.usb_drive), made the way they come from the shop."""

from __future__ import annotations

import subprocess
from pathlib import Path

SECTOR = 512
# Where a factory format and the usual partitioning tools begin the first partition (1 MiB).
FIRST_SECTOR = 2048


def thumb_drive_as_sold(path: Path, size_mib: int) -> Path:
    """A sparse image of a drive as sold: an MBR partition table with one FAT32 partition (type
    0x0c) over the whole drive. The registry step then meets what a user plugs in (a partition
    the kernel lists, signatures to clear), not the blank disk only QEMU would offer."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["sfdisk", "--quiet", str(path)], input=f"label: dos\nstart={FIRST_SECTOR}, type=c\n",
                   text=True, check=True, capture_output=True)
    kib = ((size_mib << 20) - FIRST_SECTOR * SECTOR) >> 10  # mkfs.fat counts 1 KiB blocks
    subprocess.run(["mkfs.fat", "-F", "32", "-n", "THUMBDRIVE", f"--offset={FIRST_SECTOR}", str(path), str(kib)],
                   check=True, capture_output=True)
    return path
