"""Sparse copies keep holes; the MBR parser and label checks say what they found."""

import errno
import hashlib
import os
import subprocess

import pytest

from ceil.catalog import available, load_flavor
from ceil.errors import CeilError
from ceil.partitions import check_layout, read_mbr
from ceil.sparse import allocated_bytes, copy_sparse, copy_window, data_ranges, hash_window, ranges_in
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


@pytest.mark.parametrize("kernel_copy", ["copy_file_range", "across file systems (EXDEV)"])
def test_a_window_lands_at_its_offset_with_its_holes_and_reports_what_it_copied(tmp_path, monkeypatch, kernel_copy):
    """The bake's staged boot partition lives in RAM (tmpfs) and the image on disk: there the
    kernel refuses copy_file_range (EXDEV) and the copy goes by reads and writes, which must keep
    the bytes, the holes, and the progress count the same."""
    if kernel_copy != "copy_file_range":
        def refuse(*a):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    src = sparse_file(tmp_path / "src", 96 * MiB, [4 * MiB, 40 * MiB, 90 * MiB])
    with open(src, "r+b") as f:  # a zero run inside a data extent: the read-write copy leaves a hole
        f.seek(41 * MiB)
        f.write(bytes(16 * MiB))
    dst = tmp_path / "dst"
    seen = []
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(128 * MiB)
        copy_window(fin.fileno(), fout.fileno(), 32 * MiB, 8 * MiB, 64 * MiB, seen.append)
        with_data = sum(n for _, n in ranges_in(fin.fileno(), 32 * MiB, 64 * MiB))
    data = dst.read_bytes()
    assert data[8 * MiB:72 * MiB] == src.read_bytes()[32 * MiB:96 * MiB]
    assert data[:8 * MiB] == bytes(8 * MiB) and data[72 * MiB:] == bytes(56 * MiB)
    assert sum(seen) == with_data  # what a progress bar shows ends at its total
    if kernel_copy != "copy_file_range":
        assert allocated_bytes(dst) < with_data - 8 * MiB  # the zero run's all-zero chunks stayed holes


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
    for name in [n for n in available() if not n.startswith("testbed-")]:
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
