"""Writing and verifying for real, to a file target: no root needed."""

from __future__ import annotations

import errno
import io
import os
from dataclasses import replace

import pytest
from rich.console import Console

from conftest import MiB, make_image

from ceil.errors import CeilError
from ceil.flash.blockmap import build_blockmap
from ceil.flash.device import Device
from ceil.flash.flow import FlashJob, FlashOptions, flash
from ceil.flash.safety import FlashRefused
from ceil.flash.ui import RichUI
from ceil.flash.writer import Target, VerifyError, first_difference, verify_ranges, write_ranges


def mapped(image):
    with open(image, "rb") as f:
        return build_blockmap(f.fileno(), image.stat().st_size)


def assert_ranges_equal(image, target, bmap):
    with open(image, "rb") as a, open(target, "rb") as b:
        for offset, length in bmap.ranges:
            assert os.pread(a.fileno(), length, offset) == os.pread(b.fileno(), length, offset)


@pytest.mark.parametrize("direct", [True, False])
def test_write_then_verify_file_target(image, stale_target, direct):
    bmap = mapped(image)
    with Target(str(stale_target), direct=direct) as t:
        seen = []
        result = write_ranges(str(image), t, bmap, seen.append)
        assert sum(seen) == result.written == bmap.mapped_bytes
        checked = verify_ranges(t, result)
    assert checked.bad == [] and checked.checked == bmap.mapped_bytes
    assert_ranges_equal(image, stale_target, bmap)
    with open(stale_target, "rb") as f:  # a hole of the image: the card's old bytes stay
        assert os.pread(f.fileno(), 16, 50 * MiB) == b"\xa5" * 16
        assert os.pread(f.fileno(), 16, 1024) == bytes(16)  # but the MBR zone was cleared


def test_corrupted_read_back_is_detected(image, stale_target):
    bmap = mapped(image)
    with Target(str(stale_target)) as t:
        result = write_ranges(str(image), t, bmap)
        # The card silently loses one byte between write and read-back.
        with open(stale_target, "r+b") as f:
            old = os.pread(f.fileno(), 1, 100 * MiB + 5)
            os.pwrite(f.fileno(), bytes([old[0] ^ 0xFF]), 100 * MiB + 5)
            os.fsync(f.fileno())
        checked = verify_ranges(t, result)
        assert [o for o, _ in checked.bad] == [100 * MiB]
        assert first_difference(str(image), t, *checked.bad[0]) == 100 * MiB + 5


def test_unaligned_tail_goes_through_the_buffered_path(tmp_path):
    img = make_image(tmp_path / "odd.img", 10 * MiB + 512, [(10 * MiB, os.urandom(512))])
    target = tmp_path / "t.bin"
    target.write_bytes(b"\xff" * (11 * MiB))
    with Target(str(target)) as t:
        result = write_ranges(str(img), t, mapped(img))
        assert verify_ranges(t, result).bad == []
    assert target.read_bytes()[10 * MiB:10 * MiB + 512] == img.read_bytes()[10 * MiB:]


class FilePlatform:
    """A platform whose 'card' is a regular file, so the whole flow runs without root."""

    name = "test"

    def __init__(self, path, mounted=(), remount=False):
        self.device = Device(path=str(path), raw_path=str(path), size=os.path.getsize(path),
                             model="Test Card", serial="T1", transport="usb", removable=True,
                             mountpoints=tuple(mounted))
        self.remount = remount
        self.calls = []

    def discover(self, path):
        self.calls.append("discover")
        return self.device

    def unmount(self, device):
        self.calls.append("unmount")
        if not self.remount:
            self.device = replace(self.device, mountpoints=())

    def eject(self, device):
        self.calls.append("eject")
        return "ejected (test)"


def run_flow(image, platform, after_write=None, interactive=False, **opts):
    out = io.StringIO()
    ui = RichUI(Console(file=out, width=200), interactive=interactive)
    options = FlashOptions(image=str(image), device="/dev/test", **({"yes": True} | opts))
    job = FlashJob(options=options, platform=platform, ui=ui, after_write=after_write)
    try:
        flash(job)
    finally:
        job.output = out.getvalue()
    return job


def test_flow_writes_verifies_ejects_and_summarises(image, stale_target):
    p = FilePlatform(stale_target)
    job = run_flow(image, p)
    assert p.calls == ["discover", "discover", "eject"]  # found, then checked again right before the write
    assert_ranges_equal(image, stale_target, job.bmap)
    out = job.output
    assert "Test Card" in out and "T1" in out and "256.0 MiB" in out
    assert "Wrote 14.5 MiB of the 256.0 MiB image (5.7%, 5 ranges)" in out
    assert f"Verified: all {len(job.bmap.ranges)} ranges" in out and "ejected (test)" in out


def test_flow_reports_corruption_injected_between_write_and_verify(image, stale_target):
    def corrupt(target):
        # Every byte flipped, so the first corrupted byte always differs (zeros did not when the
        # random image byte there happened to be zero: one run in 256 failed).
        with open(target.path, "r+b") as card:
            written = os.pread(card.fileno(), 4096, 200 * MiB)
            os.pwrite(card.fileno(), bytes(b ^ 0xFF for b in written), 200 * MiB)
    p = FilePlatform(stale_target)
    with pytest.raises(VerifyError) as e:
        run_flow(image, p, after_write=corrupt)
    msg = str(e.value)
    assert "verification FAILED" in msg and "1 of 5 written ranges" in msg
    assert f"first difference at byte {200 * MiB:,}" in msg and "another card" in msg
    assert "eject" not in p.calls  # a bad card is not ejected as if all were well


def test_flow_no_verify_no_eject(image, stale_target):
    p = FilePlatform(stale_target)
    job = run_flow(image, p, verify=False, eject=False)
    assert job.verified is None and "Not verified" in job.output and "not ejected" in job.output
    assert p.calls == ["discover", "discover"]


def test_flow_needs_confirmation(image, stale_target, monkeypatch):
    before = stale_target.read_bytes()[:4096]
    with pytest.raises(CeilError, match="Pass --yes"):
        run_flow(image, FilePlatform(stale_target), yes=False)
    monkeypatch.setattr("ceil.flash.ui.Confirm.ask", lambda *a, **k: False)
    with pytest.raises(CeilError, match="left untouched"):
        run_flow(image, FilePlatform(stale_target), yes=False, interactive=True)
    assert stale_target.read_bytes()[:4096] == before
    monkeypatch.setattr("ceil.flash.ui.Confirm.ask", lambda *a, **k: True)
    assert run_flow(image, FilePlatform(stale_target), yes=False, interactive=True).verified


def test_flow_unmounts_then_rechecks(image, stale_target):
    p = FilePlatform(stale_target, mounted=["/media/alice/bootfs"])
    with pytest.raises(FlashRefused, match="--unmount"):
        run_flow(image, p)
    run_flow(image, p, unmount=True)
    assert p.calls[-3:] == ["unmount", "discover", "eject"]
    # An automounter that mounts it straight back: refused after the unmount.
    p = FilePlatform(stale_target, mounted=["/media/alice/bootfs"], remount=True)
    with pytest.raises(FlashRefused, match="mounted"):
        run_flow(image, p, unmount=True)


class SwappingPlatform(FilePlatform):
    """A platform whose name answers for another disk once the user has confirmed the first
    (a card pulled while the prompt waited, a backup drive plugged in under the same name)."""

    def __init__(self, path, other: Device):
        super().__init__(path)
        self.other = other

    def discover(self, path):
        self.calls.append("discover")
        return self.device if len(self.calls) == 1 else self.other


@pytest.mark.parametrize("unmount", [False, True])
def test_a_disk_that_is_not_the_one_confirmed_is_never_written(image, stale_target, unmount):
    """Found in review: only the device number was checked again (a disk plugged in later may
    reuse it; macOS has none), and the re-discovery after --unmount compared nothing."""
    before = stale_target.read_bytes()
    p = FilePlatform(stale_target, mounted=["/media/u/bootfs"] if unmount else ())
    backup = replace(p.device, model="WD Elements", serial="WX-BACKUP", mountpoints=())
    swapping = SwappingPlatform(stale_target, backup)
    swapping.device = p.device
    swapping.unmount = lambda device: swapping.calls.append("unmount")
    with pytest.raises(FlashRefused, match="is no longer the disk you confirmed .*WD Elements.*nothing was written"):
        run_flow(image, swapping, unmount=unmount)
    assert stale_target.read_bytes() == before


def test_a_disk_gone_since_it_was_confirmed_is_not_written(image, stale_target):
    p = FilePlatform(stale_target)
    seen = []

    def gone(path):  # as the platforms answer for a path that is no block device now (linux.py, macos.py)
        seen.append(path)
        return p.device if len(seen) == 1 else Device(path=path, raw_path=path, size=0, is_block=False, model="missing")

    p.discover = gone
    with pytest.raises(FlashRefused, match="is gone since you confirmed it .*nothing was written"):
        run_flow(image, p)


def test_an_image_replaced_after_it_was_checked_is_not_written(image, stale_target, tmp_path):
    """Found in review: an image without per-range digests, replaced by rename while the prompt
    waited, was written by the old file's map and then "verified" against what was just read."""
    before = stale_target.read_bytes()
    p = FilePlatform(stale_target)
    real = p.discover

    def swap_then_discover(path):
        if p.calls == ["discover"]:  # the second look, after the confirmation
            other = tmp_path / "other.img"
            other.write_bytes(image.read_bytes()[::-1])
            os.replace(other, image)
        return real(path)

    p.discover = swap_then_discover
    with pytest.raises(CeilError, match="was replaced or changed since it was checked: nothing was written"):
        run_flow(image, p)
    assert stale_target.read_bytes() == before


def test_a_card_failing_after_the_write_says_what_it_holds(image, stale_target, monkeypatch):
    """Found in review: an error flushing or reading back the card, or Ctrl-C while verifying,
    ended in a traceback or a bare "aborted", never saying what the card now holds."""
    def eio(*a):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(Target, "sync", eio)
        with pytest.raises(CeilError, match="could not be finished .*Input/output error.*partial image"):
            run_flow(image, FilePlatform(stale_target))
    with monkeypatch.context() as m:
        m.setattr(Target, "read", eio)
        with pytest.raises(CeilError, match="reading .* back failed: Input/output error. The image was written but not verified"):
            run_flow(image, FilePlatform(stale_target))

    def interrupted(*a):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Target, "read", interrupted)
        with pytest.raises(CeilError, match="interrupted while verifying: .* holds the whole image, but it was not read back"):
            run_flow(image, FilePlatform(stale_target))


def test_a_failing_reread_keeps_the_verdict(image, stale_target, monkeypatch):
    def corrupt(target):
        with open(target.path, "r+b") as card:
            os.pwrite(card.fileno(), bytes(b ^ 0xFF for b in os.pread(card.fileno(), 4096, 200 * MiB)), 200 * MiB)
        monkeypatch.setattr("ceil.flash.flow.first_difference", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "gone")))
    with pytest.raises(VerifyError, match="verification FAILED .*sha256 differs; reading it again failed: gone"):
        run_flow(image, FilePlatform(stale_target), after_write=corrupt)


def test_write_error_names_the_offset(image, stale_target, monkeypatch):
    def fail(self, view, offset):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(Target, "write", fail)
    with pytest.raises(CeilError, match="failed at byte 0: Input/output error"):
        run_flow(image, FilePlatform(stale_target))


def test_missing_image(tmp_path, stale_target):
    with pytest.raises(CeilError, match="bake it first"):
        run_flow(tmp_path / "ceil-nope.img", FilePlatform(stale_target))


def test_an_image_changed_after_its_check_stops_the_write(image, stale_target):
    """The manifest's digests are checked again as each range is written: an image changed
    between the check and the write is not silently written."""
    import hashlib

    bmap = mapped(image)
    with open(image, "rb") as f:
        digests = tuple(hashlib.sha256(os.pread(f.fileno(), n, o)).hexdigest() for o, n in bmap.ranges)
    wrong = digests[:1] + ("0" * 64,) + digests[2:]
    with Target(str(stale_target), direct=False) as t:
        write_ranges(str(image), t, replace(bmap, digests=digests))  # matches: written
        with pytest.raises(CeilError, match=f"changed while it was being written .* byte {bmap.ranges[1][0]:,}"):
            write_ranges(str(image), t, replace(bmap, digests=wrong))
