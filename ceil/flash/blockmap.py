"""Which byte ranges of an image must reach the card (a block map, like bmaptool's .bmap).

The map starts from the image's allocated ranges (`ceil.sparse.data_ranges`) and then:
- rounds every range out to ALIGN, so each write can go through O_DIRECT / the raw device;
- merges ranges separated by less than MERGE_GAP: SD cards erase in blocks of several MiB and are
  far slower at scattered small writes than at one longer sequential write of a few zeros;
- always includes the first MiB of the image and of every partition, even where the image has a
  hole. Those zones hold partition tables and file-system signatures; a stale signature left
  there by the card's previous life (an old GPT header, a btrfs superblock at 64 KiB) would make
  blkid report an ambiguous result, and then udev creates no /dev/disk/by-label link and
  cloud-init's NoCloud `fs_label` lookup finds no seed.
Elsewhere a hole is space no file system on the image uses, so the card's old bytes there are
never read: the same trade bmaptool makes.

The bake builds the same map for the image it writes, window by window (`map_window`: the base
image's ranges and each rewritten partition's), with a sha256 per range in the manifest; `flash`
then checks and writes by that map instead of reading the whole image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ceil.sparse import ranges_in

ALIGN = 4096
MERGE_GAP = 1024 * 1024
SIGNATURE_ZONE = 1024 * 1024
SECTOR = 512  # images are built with 512-byte logical sectors


@dataclass(frozen=True)
class BlockMap:
    image_size: int
    ranges: tuple[tuple[int, int], ...]  # (offset, length), sorted, non-overlapping
    digests: tuple[str, ...] = ()  # sha256 of each range, when known (from the bake's manifest)

    @property
    def mapped_bytes(self) -> int:
        return sum(length for _, length in self.ranges)


def build_blockmap(fd: int, size: int, *, align: int = ALIGN,
                   merge_gap: int = MERGE_GAP) -> BlockMap:
    """The map of a whole image file: one window over all of it."""
    return BlockMap(size, tuple(map_window(fd, 0, 0, size, signature_zones(fd), align, merge_gap)))


def signature_zones(fd: int) -> list[tuple[int, int]]:
    """The first MiB of the image and of each partition (see the module's docstring)."""
    head = _pread_all(fd, 34 * SECTOR)  # MBR + GPT header + the first GPT entries sector
    return [(0, SIGNATURE_ZONE)] + [(start, SIGNATURE_ZONE) for start in partition_starts(fd, head)]


def map_window(fd: int, src: int, dst: int, length: int, zones: Iterable[tuple[int, int]],
               align: int = ALIGN, merge_gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Ranges, in image offsets, to write for fd[src:src+length] placed at `dst`: its data and
    the parts of `zones` inside the window, aligned and merged but never beyond the window, so
    windows from different sources never share a range."""
    shift = dst - src
    ranges = [(off + shift, n) for off, n in ranges_in(fd, src, length)]
    end = dst + length
    for start, n in zones:
        lo, hi = max(start, dst), min(start + n, end)
        if hi > lo:
            ranges.append((lo, hi - lo))
    return normalise(ranges, end, align, merge_gap, lo=dst)


def normalise(ranges: Iterable[tuple[int, int]], size: int, align: int,
              merge_gap: int, lo: int = 0) -> list[tuple[int, int]]:
    """Align outwards, clamp to [lo, size), sort and merge ranges closer than `merge_gap`."""
    spans = []
    for offset, length in ranges:
        start = max(offset - offset % align, lo)
        end = min(-(-(offset + length) // align) * align, size)
        if end > start:
            spans.append((start, end))
    spans.sort()
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + merge_gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]


def partition_starts(fd: int, head: bytes) -> list[int]:
    """Byte offsets of the primary MBR partitions, or of the GPT partitions behind a protective
    MBR. Logical partitions in an extended one are not followed (Pi images have none)."""
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return []
    starts = []
    for i in range(4):
        entry = head[446 + 16 * i: 462 + 16 * i]
        ptype = entry[4]
        lba, sectors = struct.unpack_from("<II", entry, 8)
        if ptype == 0xEE:
            return _gpt_starts(fd, head)
        if ptype and sectors:
            starts.append(lba * SECTOR)
    return starts


def _gpt_starts(fd: int, head: bytes) -> list[int]:
    header = head[SECTOR: 2 * SECTOR]
    if header[:8] != b"EFI PART":
        return []
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not (128 <= entry_size <= 4096 and count <= 1024):
        return []  # not a header we trust: keep only the always-written first MiB
    table = _pread_all(fd, count * entry_size, entries_lba * SECTOR)
    starts = []
    for i in range(count):
        entry = table[i * entry_size: (i + 1) * entry_size]
        if len(entry) < 48 or entry[:16] == bytes(16):
            continue
        starts.append(struct.unpack_from("<Q", entry, 32)[0] * SECTOR)
    return starts


def _pread_all(fd: int, n: int, offset: int = 0) -> bytes:
    chunks = []
    while n > 0:
        buf = os.pread(fd, n, offset)
        if not buf:
            break
        chunks.append(buf)
        n -= len(buf)
        offset += len(buf)
    return b"".join(chunks)
