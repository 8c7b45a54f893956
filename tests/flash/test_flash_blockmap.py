"""The block map: data ranges, aligned, merged, plus the signature zones."""

from __future__ import annotations

import struct

from conftest import MiB, make_image, mbr

from ceil.flash.blockmap import build_blockmap, normalise, partition_starts


def test_normalise_aligns_clamps_and_merges():
    ranges = [(5000, 10), (0, 1), (2 * MiB, 100), (2 * MiB + 200 * 1024, 1), (9 * MiB, 10)]
    got = normalise(ranges, size=9 * MiB + 100, align=4096, merge_gap=1024 * 1024 // 4)
    assert got == [(0, 8192), (2 * MiB, 200 * 1024 + 4096), (9 * MiB, 100)]


def test_map_of_a_pi_like_image(image):
    with open(image, "rb") as f:
        bmap = build_blockmap(f.fileno(), image.stat().st_size)
    starts = [o for o, _ in bmap.ranges]
    # MBR zone, FAT data, ext4 head zone, the data at 100 and 200 MiB.
    assert starts == [0, 4 * MiB, 68 * MiB, 100 * MiB, 200 * MiB]
    assert bmap.ranges[0] == (0, MiB)
    assert bmap.ranges[1] == (4 * MiB, 3 * MiB)
    assert bmap.ranges[2] == (68 * MiB, MiB)  # zone around the 4 KiB of data at +1024
    assert bmap.ranges[3] == (100 * MiB, 9 * MiB + 4096)  # 123 bytes rounded up to a block
    assert bmap.mapped_bytes < bmap.image_size // 10
    assert all(o % 4096 == 0 and n % 4096 == 0 for o, n in bmap.ranges)


def test_unaligned_image_end_is_clamped(tmp_path):
    img = make_image(tmp_path / "odd.img", 10 * MiB + 512, [(10 * MiB, b"\x01" * 512)])
    with open(img, "rb") as f:
        bmap = build_blockmap(f.fileno(), 10 * MiB + 512)
    assert bmap.ranges[-1] == (10 * MiB, 512)


def test_partition_starts_mbr_and_gpt(tmp_path):
    head = mbr([(0x0C, 8192, 1000), (0x83, 532480, 1000)])
    assert partition_starts(-1, head) == [8192 * 512, 532480 * 512]
    assert partition_starts(-1, bytes(512)) == []
    # GPT: protective MBR, header at LBA 1, entries at LBA 2.
    path = tmp_path / "gpt.img"
    disk = bytearray(64 * 1024)
    disk[:512] = mbr([(0xEE, 1, 100000)])
    disk[512:520] = b"EFI PART"
    struct.pack_into("<QII", disk, 512 + 72, 2, 128, 128)
    entry = 1024 + 128  # second entry in use, first empty
    disk[entry:entry + 16] = b"\x01" * 16
    struct.pack_into("<Q", disk, entry + 32, 2048)
    path.write_bytes(bytes(disk))
    with open(path, "rb") as f:
        assert partition_starts(f.fileno(), bytes(disk[:34 * 512])) == [2048 * 512]
