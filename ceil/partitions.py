"""Partition tables and file-system labels, read in Python (no loop devices, no root).

Raspberry Pi images use MBR. A GPT image (protective 0xEE entry) or one without the flavor's
partitions is rejected with a message that says what was found.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CeilError

SECTOR = 512
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
LINUX_TYPE = 0x83


@dataclass(frozen=True)
class Partition:
    index: int  # 1-based, as in /dev/mmcblk0p1
    type: int
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


def read_mbr(image: Path) -> list[Partition]:
    with open(image, "rb") as f:
        sector = f.read(SECTOR)
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise CeilError(f"{image} has no MBR partition table (no 0x55AA signature): is it a disk image?")
    parts = []
    for i in range(4):
        entry = sector[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0xEE:
            raise CeilError(
                f"{image} uses a GPT partition table: Raspberry Pi flavors use MBR."
                " Check that --base-image is the flavor's image."
            )
        if ptype and count:
            parts.append(Partition(i + 1, ptype, lba * SECTOR, count * SECTOR))
    return parts


def partition(image: Path, index: int, parts: list[Partition] | None = None) -> Partition:
    parts = parts if parts is not None else read_mbr(image)
    for p in parts:
        if p.index == index:
            return p
    found = ", ".join(f"p{p.index} type 0x{p.type:02x}" for p in parts) or "none"
    raise CeilError(f"{image} has no partition {index} (found: {found}): is --base-image the right flavor?")


def fat_label(image: Path, part: Partition) -> str:
    """Volume label from the FAT boot sector (FAT32 at 0x47, FAT12/16 at 0x2B)."""
    with open(image, "rb") as f:
        f.seek(part.start)
        bs = f.read(SECTOR)
    if bs[510:512] != b"\x55\xaa":
        raise CeilError(f"{image}: partition {part.index} holds no FAT file system (no boot sector signature)")
    fat32 = struct.unpack_from("<H", bs, 0x16)[0] == 0  # sectors-per-FAT16 is 0 on FAT32
    raw = bs[0x47:0x52] if fat32 else bs[0x2B:0x36]
    return raw.decode("ascii", "replace").strip()


def ext4_label(image: Path, part: Partition) -> str | None:
    """Volume name from the ext2/3/4 superblock, or None if the partition is not ext*."""
    with open(image, "rb") as f:
        f.seek(part.start + 1024)
        sb = f.read(1024)
    if len(sb) < 136 or struct.unpack_from("<H", sb, 56)[0] != 0xEF53:
        return None
    return sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")


def check_layout(image: Path, boot_index: int, boot_label: str, root_index: int, root_label: str) -> tuple[Partition, Partition]:
    """The boot and root partitions, after checking they carry the flavor's labels."""
    parts = read_mbr(image)
    boot, root = partition(image, boot_index, parts), partition(image, root_index, parts)
    got = fat_label(image, boot)
    # FAT labels are case-insensitive, and some tools upper-case them.
    if got.upper() != boot_label.upper():
        raise CeilError(
            f"{image}: boot partition p{boot_index} is labelled {got!r}, the flavor expects"
            f" {boot_label!r}: is --base-image an image of this flavor?"
        )
    label = ext4_label(image, root)
    if label is None:
        raise CeilError(f"{image}: root partition p{root_index} is not an ext4 file system")
    if label != root_label:
        raise CeilError(
            f"{image}: root partition p{root_index} is labelled {label!r}, the flavor expects {root_label!r}"
        )
    return boot, root
