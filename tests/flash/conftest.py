"""Shared helpers for the flash tests: recorded-output runners and small sparse images."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MiB = 1024 * 1024


class Replay:
    """A command runner that answers from recorded files and remembers what it was asked."""

    def __init__(self, answers: dict[tuple[str, ...], str | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, args) -> str:
        args = tuple(args)
        self.calls.append(args)
        if args not in self.answers:
            raise OSError(f"{' '.join(args)} failed (1): not recorded")
        name = self.answers[args]
        return "" if name is None else (FIXTURES / name).read_text()


def mbr(partitions: list[tuple[int, int, int]]) -> bytes:
    """A DOS partition table: (type, first LBA, sectors) per primary partition."""
    sector = bytearray(512)
    for i, (ptype, lba, sectors) in enumerate(partitions):
        struct.pack_into("<B3xB3xII", sector, 446 + 16 * i, 0, ptype, lba, sectors)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def make_image(path: Path, size: int, chunks: list[tuple[int, bytes]]) -> Path:
    """A sparse image shaped like a Pi image: MBR with FAT at 4 MiB and Linux at 68 MiB, plus
    `chunks` of data; everything else is a hole."""
    with open(path, "wb") as f:
        f.truncate(size)
        if size > 69 * MiB:
            f.write(mbr([(0x0C, 8192, 131072), (0x83, 139264, size // 512 - 139264)]))
        for offset, data in chunks:
            f.seek(offset)
            f.write(data)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image ceil did not bake: no manifest, and a name flash does not expect one for."""
    rnd = os.urandom
    return make_image(tmp_path / "pi.img", 256 * MiB, [
        (4 * MiB, rnd(3 * MiB)),       # FAT start
        (68 * MiB + 1024, rnd(4096)),  # ext4 superblock area
        (100 * MiB, rnd(9 * MiB + 123)),  # unaligned end inside a range
        (200 * MiB, rnd(512 * 1024)),
    ])


@pytest.fixture
def stale_target(tmp_path: Path) -> Path:
    """A file standing in for a used card: 0xA5 around every place the image touches (and at
    50 MiB, a hole of the image), so what was and was not written stands out."""
    path = tmp_path / "card.bin"
    with open(path, "wb") as f:
        f.truncate(320 * MiB)
        for start, end in ((0, 8), (48, 52), (67, 70), (99, 111), (199, 202)):
            f.seek(start * MiB)
            f.write(b"\xa5" * ((end - start) * MiB))
    return path
