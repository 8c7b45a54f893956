"""Per-range digests and clones: the bake maps and hashes only data, remembers the base's
digests, clones the base where the file system can, and flash checks by the map."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from ceil import bakery, image_digests
from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.errors import CeilError
from ceil.flash.blockmap import map_window
from ceil.flash.cli import check_against_manifest
from ceil.partitions import Partition
from ceil.secrets import SecretStore
from tests.imagefactory import MiB, blockmap_problems, make_base_image

pytestmark = pytest.mark.image


def bake_router(tmp_path, base, ssh_pubkey, out="out", **kw):
    cfg = tmp_path / "cluster.yaml"
    if not cfg.exists():
        cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    ctx = bakery.BakeContext(load_cluster(cfg), cfg, "router", tmp_path / out, SecretStore(tmp_path / "secrets"),
                             base, any_base_image=True, **kw)
    img = bakery.bake(ctx)
    return img, json.loads(ctx.manifest.read_text())


def test_a_second_bake_hashes_only_the_partition_it_rewrote(tmp_path, ssh_pubkey, monkeypatch):
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    hashed = []
    real = image_digests.window_ranges
    monkeypatch.setattr(image_digests, "window_ranges", lambda w, z: hashed.append(w.dst) or real(w, z))

    img, first = bake_router(tmp_path, base, ssh_pubkey, out="a")
    boot = load_flavor("ubuntu-24.04-raspi").partitions.boot.index
    assert len(hashed) == 3  # base before the boot partition, the boot partition, base after it
    boot_start = hashed[1]
    hashed.clear()
    img2, second = bake_router(tmp_path, base, ssh_pubkey, out="b")
    assert hashed == [boot_start], f"only the rewritten partition (p{boot}) is hashed again"
    for image, manifest in ((img, first), (img2, second)):
        assert blockmap_problems(image, manifest["output"]) == []
    outside = [r for r in first["output"]["blockmap"]["ranges"] if r[0] < boot_start]
    assert outside and all(r in second["output"]["blockmap"]["ranges"] for r in outside)


def test_a_changed_base_is_hashed_again(tmp_path, ssh_pubkey):
    """The remembered digests belong to the base file as it was (size and mtime in the key)."""
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    bake_router(tmp_path, base, ssh_pubkey, out="a")
    with open(base, "r+b") as f:  # new data where the base had a hole, past the partitions' heads
        f.seek(80 * MiB)
        f.write(os.urandom(MiB))
    img, manifest = bake_router(tmp_path, base, ssh_pubkey, out="b")
    assert blockmap_problems(img, manifest["output"]) == []


def test_sha256_on_request_covers_the_whole_file(tmp_path, ssh_pubkey):
    import hashlib

    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    img, manifest = bake_router(tmp_path, base, ssh_pubkey, whole_sha256=True)
    assert manifest["output"]["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert blockmap_problems(img, manifest["output"]) == []


def test_flash_checks_the_image_by_its_ranges_and_old_manifests_still_flash(tmp_path, ssh_pubkey):
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    img, manifest = bake_router(tmp_path, base, ssh_pubkey)
    bmap = check_against_manifest(img)
    assert [list(r) for r in bmap.ranges] == [r[:2] for r in manifest["output"]["blockmap"]["ranges"]]
    assert bmap.mapped_bytes < img.stat().st_size / 2  # it reads the data, not the holes

    offset = manifest["output"]["blockmap"]["ranges"][1][0] + 10
    with open(img, "r+b") as f:
        old = os.pread(f.fileno(), 1, offset)
        os.pwrite(f.fileno(), bytes([old[0] ^ 0xFF]), offset)
    with pytest.raises(CeilError, match=f"at offset {manifest['output']['blockmap']['ranges'][1][0]:,} differ"):
        check_against_manifest(img)

    # A manifest written before per-range digests: the whole-file sha256 decides, as it did.
    import hashlib

    old_style = {**manifest, "output": {k: v for k, v in manifest["output"].items() if k != "blockmap"}}
    old_style["output"]["sha256"] = hashlib.sha256(img.read_bytes()).hexdigest()
    img.with_suffix(".json").write_text(json.dumps(old_style))
    assert check_against_manifest(img) is None  # accepted; flash maps the file itself
    old_style["output"]["sha256"] = "0" * 64
    img.with_suffix(".json").write_text(json.dumps(old_style))
    with pytest.raises(CeilError, match="does not match its manifest"):
        check_against_manifest(img)

    # A block map this version cannot read is refused, not skipped.
    future = {**manifest, "output": {**manifest["output"], "blockmap": {"format": 99, "ranges": []}}}
    img.with_suffix(".json").write_text(json.dumps(future))
    with pytest.raises(CeilError, match="format 99"):
        check_against_manifest(img)


def test_a_map_never_leaves_its_window(tmp_path):
    f = tmp_path / "src"
    with open(f, "wb") as out:
        out.truncate(8 * MiB)
        out.seek(3 * MiB + 100)
        out.write(b"x" * 5000)
    with open(f, "rb") as src:
        # Placed at an unaligned offset, with a zone that starts before the window.
        got = map_window(src.fileno(), 3 * MiB, 10 * MiB + 512, 64 * 1024, [(10 * MiB, MiB)])
    assert got == [(10 * MiB + 512, 64 * 1024)]


# ---- clones on a file system with reflinks ---------------------------------------------------


@pytest.fixture
def xfs_dir(tmp_path):
    """A small XFS with reflinks on a loop device (root and xfsprogs needed; skipped otherwise)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs (xfsprogs; make setup-host installs it)")
    backing, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(backing, "wb") as f:
        f.truncate(1024 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)], check=True)
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def used_bytes(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture
def progress(monkeypatch) -> dict:
    """What compose's progress bar is told: its label, its total and the sum of its advances."""
    seen = {}

    @contextlib.contextmanager
    def bar(description, total, stop=None):
        seen.update(description=description, total=total, done=0)
        yield lambda n: seen.__setitem__("done", seen["done"] + n)

    monkeypatch.setattr(bakery, "byte_progress", bar)
    return seen


def test_compose_shows_its_progress_to_the_end_of_the_data_it_writes(tmp_path, progress):
    """A real image writes gigabytes per role (seconds to minutes on a slow disk): a bar, whose
    total is the data to write, not the image's size."""
    base, staged, out = tmp_path / "base.img", tmp_path / "boot.img", tmp_path / "out.img"
    with open(base, "wb") as f:
        f.truncate(256 * MiB)
        f.write(os.urandom(MiB))
        f.seek(8 * MiB)
        f.write(os.urandom(16 * MiB))  # the old boot data: replaced, so not written
        f.seek(100 * MiB)
        f.write(os.urandom(20 * MiB))
    with open(staged, "wb") as f:
        f.truncate(32 * MiB)
        f.write(os.urandom(3 * MiB))
    bakery.compose(base, {Partition(1, 0x0C, 8 * MiB, 32 * MiB): staged}, out, label="ceil-one.img")
    assert progress["description"] == "writing ceil-one.img"
    assert progress["done"] == progress["total"] and 24 * MiB <= progress["total"] <= 26 * MiB


def test_compose_clones_the_base_and_rewrites_only_the_staged_partition(xfs_dir, tmp_path, progress):
    base, staged, out = xfs_dir / "base.img", tmp_path / "boot.img", xfs_dir / "out.img"
    with open(base, "wb") as f:
        f.truncate(256 * MiB)
        f.write(os.urandom(MiB))  # the partition table's MiB
        f.seek(8 * MiB)
        f.write(os.urandom(16 * MiB))  # old boot partition data, where the staged one has a hole
        f.seek(100 * MiB)
        f.write(os.urandom(100 * MiB))  # the root partition's data
    boot = Partition(1, 0x0C, 8 * MiB, 32 * MiB)
    with open(staged, "wb") as f:
        f.truncate(32 * MiB)
        f.write(b"new boot" * 1000)
    before = used_bytes(xfs_dir)
    composed = bakery.compose(base, {boot: staged}, out)
    assert composed.cloned and progress["done"] == progress["total"]  # the clone counts as written
    assert used_bytes(xfs_dir) - before < 8 * MiB  # shared extents, not a 100 MiB copy
    data = out.read_bytes()
    assert data[8 * MiB: 40 * MiB] == staged.read_bytes()  # the old boot data is gone, not left in holes
    whole = base.read_bytes()
    assert data[:8 * MiB] == whole[:8 * MiB] and data[40 * MiB:] == whole[40 * MiB:]
    assert blockmap_problems(out, {"size": len(data), "blockmap": {"ranges": composed.ranges}}) == []


def test_a_bake_on_xfs_clones(xfs_dir, ssh_pubkey, capsys):
    base = make_base_image(xfs_dir / "base.img", load_flavor("ubuntu-24.04-raspi"))
    img, manifest = bake_router(xfs_dir, base, ssh_pubkey)
    assert "cloned" in capsys.readouterr().err
    assert blockmap_problems(img, manifest["output"]) == []


def test_a_range_cache_that_cannot_be_saved_is_said_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Found in review: a full cache disk failed the bake with "free room in out/" (the wrong
    folder) and left its temp file in ~/.cache/ceil/ranges."""
    cache = image_digests.RangeCache(tmp_path / "ranges" / "digests.json")
    cache.put("base:0:4096", [(0, 4096, "ab" * 32)])
    real = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    cache.save()  # no exception: the bake goes on
    assert list((tmp_path / "ranges").iterdir()) == []
    said = " ".join(capsys.readouterr().err.split())
    assert f"not saved in {tmp_path / 'ranges'} (No space left on device)" in said
    monkeypatch.setattr(os, "replace", real)
    cache.save()
    assert image_digests.RangeCache(tmp_path / "ranges" / "digests.json").get("base:0:4096") == [(0, 4096, "ab" * 32)]
