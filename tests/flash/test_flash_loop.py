"""The real thing on a loop device: real lsblk, real O_DIRECT/O_EXCL, real read-back.

Needs root and loop support; skipped with the reason otherwise. The loop device is created here
over a file in tmp_path and always detached, so no disk of the machine is ever written.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import MiB

from ceil.errors import CeilError
from ceil.flash.cli import flash_command
from ceil.flash.flow import FlashJob, FlashOptions, flash
from ceil.flash.linux import LinuxPlatform
from ceil.flash.safety import FlashRefused, check_target
from ceil.flash.ui import RichUI
from ceil.flash.writer import VerifyError


def _why_no_loop() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to attach a loop device"
    if not shutil.which("losetup") or not shutil.which("lsblk"):
        return "needs losetup and lsblk (util-linux)"
    return None


@pytest.fixture
def loop_device(tmp_path):
    why = _why_no_loop()
    if why:
        pytest.skip(why)
    backing = tmp_path / "loop-backing.bin"
    with open(backing, "wb") as f:
        f.write(b"\xa5" * (320 * MiB))
    proc = subprocess.run(["losetup", "--find", "--show", str(backing)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no loop device support here: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    assert dev.startswith("/dev/loop"), dev
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def read_ranges(path, ranges):
    with open(path, "rb") as f:
        return [os.pread(f.fileno(), n, o) for o, n in ranges]


def test_cli_flashes_and_verifies_a_loop_device(image, loop_device):
    args = ["--image", str(image), "--device", loop_device, "--yes", "--no-eject"]
    refused = CliRunner().invoke(flash_command, args)
    assert isinstance(refused.exception, FlashRefused)  # a loop device is not removable
    assert "not a removable USB/SD/MMC disk" in str(refused.exception)

    result = CliRunner().invoke(flash_command, args + ["--force"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    ranges = [(0, MiB), (4 * MiB, 3 * MiB), (68 * MiB, MiB), (100 * MiB, 9 * MiB + 123)]
    assert read_ranges(loop_device, ranges) == read_ranges(image, ranges)
    assert read_ranges(loop_device, [(50 * MiB, 4)]) == [b"\xa5" * 4]  # a hole: not written


def test_corruption_on_a_loop_device_is_detected(image, loop_device):
    def corrupt(target):
        # Another writer (a failing card, in real life) changes 4 KiB after our fsync.
        # Every byte flipped: zeros matched a random image byte one run in 256.
        fd = os.open(loop_device, os.O_RDWR)
        try:
            written = os.pread(fd, 4096, 4 * MiB + 8192)
            os.pwrite(fd, bytes(b ^ 0xFF for b in written), 4 * MiB + 8192)
            os.fsync(fd)
        finally:
            os.close(fd)

    options = FlashOptions(image=str(image), device=loop_device, yes=True, force=True,
                           eject=False)
    ui = RichUI(Console(file=io.StringIO()), interactive=False)
    with pytest.raises(VerifyError) as e:
        flash(FlashJob(options=options, platform=LinuxPlatform(), ui=ui, after_write=corrupt))
    assert f"first difference at byte {4 * MiB + 8192:,}" in str(e.value)
    assert loop_device in str(e.value)


def _whole_disk_of_root() -> str | None:
    st = os.stat("/")
    out = subprocess.run(["lsblk", "-lnpo", "MAJ:MIN,PATH,PKNAME"], capture_output=True,
                         text=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        rows[parts[0]] = parts[1:]
    by_path = {v[0]: k for k, v in rows.items()}
    row = rows.get(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    while row and len(row) == 2:  # climb partition -> disk (and dm -> partition -> disk)
        row = rows.get(by_path.get(row[1], ""))
    return row[0] if row else None


def test_system_disk_of_this_machine_is_refused():
    """Discovery against the real host: the disk holding `/` is refused even with --force.
    Nothing is opened for writing."""
    if not shutil.which("lsblk"):
        pytest.skip("needs lsblk")
    disk = _whole_disk_of_root()
    if not disk:
        pytest.skip("/ is not on a block device lsblk lists (overlay or container root)")
    device = LinuxPlatform().discover(disk)
    with pytest.raises(CeilError, match="not even with --force"):
        check_target(device, 1, force=True, unmount=True)


def test_a_baked_image_is_written_by_its_manifests_map(loop_device, tmp_path, ssh_pubkey):
    """bake -> flash: the card receives exactly the ranges the bake mapped and hashed."""
    import json

    from ceil import bakery
    from ceil.catalog import load_flavor
    from ceil.config import load_cluster
    from ceil.secrets import SecretStore
    from tests.imagefactory import make_base_image

    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    ctx = bakery.BakeContext(load_cluster(cfg), cfg, "router", tmp_path / "out", SecretStore(tmp_path / "s"), base,
                             any_base_image=True)
    image = bakery.bake(ctx)
    ranges = [(o, n) for o, n, _ in json.loads(ctx.manifest.read_text())["output"]["blockmap"]["ranges"]]
    result = CliRunner().invoke(flash_command, ["--role", "router", "--out", str(tmp_path / "out"), "--device",
                                                loop_device, "--yes", "--no-eject", "--force"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert read_ranges(loop_device, ranges) == read_ranges(image, ranges)
    gap = next(o + n for (o, n), (o2, _) in zip(ranges, ranges[1:]) if o2 > o + n)
    assert read_ranges(loop_device, [(gap, 4)]) == [b"\xa5" * 4]  # outside the map: not written
