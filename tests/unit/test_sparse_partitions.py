"""Sparse copies keep holes; the MBR parser and label checks say what they found."""

import hashlib
import os
import subprocess

import pytest

from ceil.catalog import load_flavor
from ceil.errors import CeilError
from ceil.partitions import check_layout, read_mbr
from ceil.sparse import allocated_bytes, copy_sparse, data_ranges, hash_window
from tests.imagefactory import make_base_image

MiB = 1 << 20


def sparse_file(path, size, chunks):
    with open(path, "wb") as f:
        f.truncate(size)
        for off in chunks:
            f.seek(off)
            f.write(os.urandom(MiB))
    return path


def test_copy_preserves_holes_and_bytes(tmp_path):
    src = sparse_file(tmp_path / "src", 256 * MiB, [0, 64 * MiB, 200 * MiB])
    dst = tmp_path / "dst"
    copy_sparse(src, dst)
    assert src.read_bytes() == dst.read_bytes()
    # allocated blocks of the copy within a few % of the source
    assert allocated_bytes(dst) <= allocated_bytes(src) * 1.05 + 64 * 1024


def test_data_ranges_find_the_data(tmp_path):
    src = sparse_file(tmp_path / "src", 64 * MiB, [8 * MiB])
    with open(src, "rb") as f:
        ranges = list(data_ranges(f.fileno()))
    assert ranges and all(off <= 8 * MiB < off + n or off >= 8 * MiB for off, n in ranges)
    assert sum(n for _, n in ranges) < 4 * MiB


def test_hash_window_equals_sha256_of_bytes(tmp_path):
    src = sparse_file(tmp_path / "src", 32 * MiB, [MiB, 20 * MiB])
    h = hashlib.sha256()
    with open(src, "rb") as f:
        hash_window(h, f.fileno(), 0, 32 * MiB)
    assert h.hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()


def test_mbr_and_labels_of_each_flavor(tmp_path):
    for name in ("ubuntu-24.04-raspi", "raspios-trixie", "hypriot-1.12.3"):
        flavor = load_flavor(name)
        img = make_base_image(tmp_path / f"{name}.img", flavor)
        parts = read_mbr(img)
        assert [p.index for p in parts] == [1, 2]
        p = flavor.partitions
        boot, root = check_layout(img, p.boot.index, p.boot.label, p.root.index, p.root.label)
        assert boot.start == 4 * MiB and root.start == boot.end


def test_wrong_label_is_named(tmp_path):
    img = make_base_image(tmp_path / "u.img", load_flavor("ubuntu-24.04-raspi"))
    with pytest.raises(CeilError) as e:
        check_layout(img, 1, "bootfs", 2, "rootfs")
    assert "'SYSTEM-BOOT'" in str(e.value).upper() and "bootfs" in str(e.value)


def test_gpt_is_rejected(tmp_path):
    img = tmp_path / "gpt.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["sfdisk", "--quiet", str(img)], input=b"label: gpt\n,,L\n", check=True)
    with pytest.raises(CeilError, match="GPT"):
        read_mbr(img)


def test_not_a_disk_image(tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(b"hello" * 200)
    with pytest.raises(CeilError, match="no MBR"):
        read_mbr(img)
