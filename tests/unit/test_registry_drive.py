"""The registry step on a real (loop) block device: formats once, never again, one fstab line.

systemctl, ss, chown and mount are stand-ins (this machine is not the router); blkid, wipefs,
mkfs.ext4 and lsblk are the real tools the step runs on first boot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_registry import BASE, render_router

REPO = Path(__file__).resolve().parents[2]

SHIMS = {
    "systemctl": 'echo "systemctl $*" >> "$CEIL_TEST_LOG"',
    "chown": "exit 0",
    "mount": 'echo "mount $*" >> "$CEIL_TEST_LOG"',
    # The three registries "listen" on the LAN address at once.
    "ss": 'printf "LISTEN 0 4096 10.42.0.1:5000 0.0.0.0:*\\nLISTEN 0 4096 10.42.0.1:5001 0.0.0.0:*\\n'
          'LISTEN 0 4096 10.42.0.1:5002 0.0.0.0:*\\n"',
    "wipefs": 'echo "wipefs $*" >> "$CEIL_TEST_LOG"; exec /usr/sbin/wipefs "$@"',
    "udevadm": 'echo "udevadm $*" >> "$CEIL_TEST_LOG"',
}


@pytest.fixture
def loop_drive(tmp_path):
    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root, losetup and mkfs.ext4 for a loop device")
    image = tmp_path / "usb.img"
    image.write_bytes(b"")
    os.truncate(image, 32 * 1024 * 1024)
    done = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no loop device here: {done.stderr.strip()}")
    dev = done.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def run_step(tmp_path: Path, dev: str | None) -> tuple[subprocess.CompletedProcess, str]:
    config = BASE if dev is None else BASE.replace(
        "router: {uplink: {type: ethernet}}", f"router: {{uplink: {{type: ethernet}}, usb_drive: \"{dev}\"}}")
    step = tmp_path / "registry.sh"
    shutil.copy(render_router(tmp_path / "render", config) / "lib/steps/registry.sh", step)
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name, body in SHIMS.items():
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    secrets = tmp_path / "secrets/registry"  # what ceil-secrets moved off the card
    secrets.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key", "htpasswd-pull", "htpasswd-push"):
        (secrets / name).write_text("x\n")
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}:/usr/sbin:/sbin", "CEIL_TEST_LOG": str(log),
           "CEIL_REGISTRY_ROOT": str(tmp_path / "root"), "CEIL_FSTAB": str(tmp_path / "fstab"),
           "CEIL_SECRETS": str(tmp_path / "secrets"), "CEIL_LIB": str(REPO / "firstboot/common/lib"),
           "CEIL_UDEV_RULE": str(tmp_path / "90-ceil-registry-drive.rules"), "CEIL_STEP_WHY": str(tmp_path / "why")}
    shutil.rmtree(tmp_path / "render")
    done = subprocess.run(["sh", str(step)], capture_output=True, text=True, env=env, timeout=120)
    return done, log.read_text()


def label_of(dev: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", dev],
                          capture_output=True, text=True).stdout.strip()


def test_drive_is_formatted_once_and_mounted_by_label(tmp_path, loop_drive):
    (tmp_path / "fstab").write_text("proc /proc proc defaults 0 0\n")
    first, calls = run_step(tmp_path, loop_drive)
    assert first.returncode == 0, first.stderr
    assert label_of(loop_drive) == "ceil-registry" and calls.count("wipefs") == 1
    uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", loop_drive],
                          capture_output=True, text=True).stdout.strip()
    assert "systemctl mask --no-reload docker-registry.service" in calls
    assert "systemctl enable --no-reload ceil-registry-mirror.service ceil-registry-private.service" in calls
    # A re-run (power cut before the done-marker) must not format again nor add a second line.
    second, calls = run_step(tmp_path, loop_drive)
    assert second.returncode == 0, second.stderr
    assert "wipefs" not in calls
    assert subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", loop_drive],
                          capture_output=True, text=True).stdout.strip() == uuid
    fstab = (tmp_path / "fstab").read_text().splitlines()
    assert fstab[0] == "proc /proc proc defaults 0 0"
    assert [line.split()[:3] for line in fstab[1:]] == [["LABEL=ceil-registry", str(tmp_path / "root"), "ext4"]]
    # systemd's device timeout, not a shorter one: a label udev announces late must still mount.
    assert "nofail" in fstab[1] and "device-timeout" not in fstab[1]
    assert (tmp_path / "root/mirror").is_dir() and (tmp_path / "root/private").is_dir()


def test_the_registries_start_whenever_the_drive_appears_once_the_step_is_through(tmp_path, loop_drive):
    """A drive that comes after systemd's device timeout is mounted by nothing at boot: udev
    starts the registries (whose RequiresMountsFor= mounts it) when the labelled drive appears.
    The booted proof is tests/e2e/test_lifecycle.py (the drive plugged in after systemd gave up)."""
    (tmp_path / "fstab").write_text("")
    done, calls = run_step(tmp_path, loop_drive)
    assert done.returncode == 0, done.stderr
    rule = [line for line in (tmp_path / "90-ceil-registry-drive.rules").read_text().splitlines()
            if line and not line.startswith("#")]
    assert rule == ['ACTION!="remove", SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="ceil-registry",'
                    ' ENV{SYSTEMD_WANTS}+="ceil-registry-mirror.service ceil-registry-private.service'
                    ' ceil-registry-push.service"']
    # Written after the registries were started and checked: formatting the drive (a udev change
    # event carrying the new label) must not start them before their storage and secrets are ready.
    assert calls.index("systemctl restart") < calls.index("udevadm control --reload")
    assert not list(tmp_path.glob("*.ceil-tmp"))


def test_without_a_drive_no_rule_and_no_mount(tmp_path):
    done, calls = run_step(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "90-ceil-registry-drive.rules").exists()
    assert "udevadm" not in calls and "mount" not in calls


def test_a_drive_with_another_filesystem_is_reformatted(tmp_path, loop_drive):
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "holiday-pics", loop_drive], check=True)
    (tmp_path / "fstab").write_text("")
    done, calls = run_step(tmp_path, loop_drive)
    assert done.returncode == 0, done.stderr
    assert label_of(loop_drive) == "ceil-registry" and "wipefs" in calls


def test_a_drive_named_by_its_stable_id_is_formatted_through_the_link(tmp_path, loop_drive):
    """With several USB drives, /dev/sdX depends on the order they are found in: the drive may be
    named by its /dev/disk/by-id/ link (':' and all), and the step formats what the link points to."""
    links = Path(f"/dev/ceil-test-{os.getpid()}")
    links.mkdir(exist_ok=True)
    link = links / "usb-CEIL_Twin_Drive_0001-0:0"
    try:
        link.symlink_to(loop_drive)
        (tmp_path / "fstab").write_text("")
        done, calls = run_step(tmp_path, str(link))
        assert done.returncode == 0, done.stderr
        assert label_of(loop_drive) == "ceil-registry" and f"wipefs -a {link}" in calls
    finally:
        shutil.rmtree(links, ignore_errors=True)


def test_a_drive_as_sold_is_formatted_whole_and_its_partition_goes(tmp_path):
    """The QEMU router's drive (tests/e2e/ceil_e2e/drives.py): an MBR table with one FAT32
    partition, which the kernel lists as a partition of its own. The step formats the whole drive
    and leaves no partition table behind."""
    from tests.e2e.ceil_e2e.drives import thumb_drive_as_sold

    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("mkfs.fat") is None:
        pytest.skip("needs root, losetup and mkfs.fat for a partitioned loop device")
    image = thumb_drive_as_sold(tmp_path / "usb.img", 64)
    done = subprocess.run(["losetup", "-f", "--show", "-P", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no loop device here: {done.stderr.strip()}")
    dev = done.stdout.strip()
    try:
        def table() -> str:
            return subprocess.run(["blkid", "-p", "-o", "value", "-s", "PTTYPE", dev],
                                  capture_output=True, text=True).stdout.strip()

        assert table() == "dos"
        (tmp_path / "fstab").write_text("")
        ran, calls = run_step(tmp_path, dev)
        assert ran.returncode == 0, ran.stderr
        assert label_of(dev) == "ceil-registry" and "wipefs" in calls
        assert table() == "", f"a partition table is left: {table()}"
        # Where the kernel lists the loop device's partitions (not in every container), none is
        # left; the QEMU router shows it on its USB drive (test_router_services.py).
        parts = subprocess.run(["lsblk", "-nro", "NAME", dev], capture_output=True, text=True).stdout.split()
        assert parts == [Path(dev).name], f"partitions left beside the formatted drive: {parts}"
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_missing_drive_is_a_transient_failure(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the step's tools)")
    (tmp_path / "fstab").write_text("")
    done, calls = run_step(tmp_path, "/dev/ceil-no-such-drive")
    assert done.returncode == 1 and "plug the drive in" in done.stderr and "wipefs" not in calls
    # what `bake.py status` and the status board show, as the README promises
    assert (tmp_path / "why").read_text() == "router.usb_drive /dev/ceil-no-such-drive is not present: plug the drive in\n"
