"""Every refusal, driven from recorded lsblk / diskutil output."""

from __future__ import annotations

import pytest

from conftest import Replay

from ceil.errors import CeilError
from ceil.flash.device import Device
from ceil.flash.linux import LinuxPlatform
from ceil.flash.macos import MacPlatform
from ceil.flash.safety import FlashRefused, check_target

GiB = 1024**3
IMAGE = 4 * GiB


def lsblk(name: str, system=frozenset()) -> Device:
    run = Replay({("lsblk", "--json", "-O", "-b", "/dev/x"): name})
    return LinuxPlatform(run=run, is_block=lambda p: True, system_nums=lambda: set(system),
                         resolve=lambda p: "/dev/x").discover("/dev/x")


def diskutil(info: str, listing: str | None) -> Device:
    answers = {("diskutil", "info", "-plist", "/dev/disk9"): info,
               ("diskutil", "info", "-plist", "/"): "diskutil-info-root.plist",
               ("diskutil", "info", "-plist", "disk3"): "diskutil-info-disk3.plist"}
    if listing:
        answers[("diskutil", "list", "-plist", "/dev/disk9")] = listing
    return MacPlatform(run=Replay(answers), is_block=lambda p: True).discover("/dev/disk9")


def refusal(device: Device, **kw) -> str:
    with pytest.raises(FlashRefused) as e:
        check_target(device, IMAGE, **kw)
    assert isinstance(e.value, CeilError)  # the CLI prints it as one paragraph, exits non-zero
    return str(e.value)


@pytest.mark.parametrize("make", [
    lambda: lsblk("lsblk-usb-card.json"),
    lambda: lsblk("lsblk-usb-blank.json"),
    lambda: lsblk("lsblk-mmc.json"),  # built-in slot: not removable, but mmc
    lambda: diskutil("diskutil-info-disk4.plist", "diskutil-list-disk4.plist"),
    lambda: diskutil("diskutil-info-disk5-sdxc.plist", "diskutil-list-disk5.plist"),
])
def test_cards_pass(make):
    assert check_target(make(), IMAGE) is False


def test_mounted_card_offers_unmount():
    msg = refusal(lsblk("lsblk-usb-card-mounted.json"))
    assert "/media/alice/bootfs" in msg and "--unmount" in msg
    assert check_target(lsblk("lsblk-usb-card-mounted.json"), IMAGE, unmount=True) is True
    msg = refusal(diskutil("diskutil-info-disk4.plist", "diskutil-list-disk4-mounted.plist"))
    assert "/Volumes/bootfs" in msg and "--unmount" in msg


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("make, why", [
    (lambda: lsblk("lsblk-nvme-system.json"), "/boot/efi"),
    (lambda: lsblk("lsblk-usb-system.json"), "/boot/firmware"),  # a USB disk can be the system
    (lambda: lsblk("lsblk-usb-card.json", system={(8, 18)}), "backs the running system"),
    (lambda: diskutil("diskutil-info-disk0.plist", "diskutil-list-disk0.plist"), "root volume"),
])
def test_system_disk_never_even_with_force(make, why, force):
    msg = refusal(make(), force=force, unmount=True)
    assert "running system's disk" in msg and why in msg and "not even with --force" in msg


def test_internal_disk_needs_force():
    msg = refusal(lsblk("lsblk-sata-data.json"))
    assert "/dev/sda" in msg and "not a removable USB/SD/MMC" in msg and "sata" in msg
    assert "WDC WD20EZRZ" in msg and "--force" in msg
    # --force passes this check; the mount check still applies.
    assert "--unmount" in refusal(lsblk("lsblk-sata-data.json"), force=True)
    dmg = diskutil("diskutil-info-disk7-dmg.plist", "diskutil-list-disk7.plist")
    assert "disk-image" in refusal(dmg)
    assert check_target(dmg, IMAGE, force=True) is False


def test_too_small():
    msg = refusal(lsblk("lsblk-usb-small.json"))
    assert "992.0 MiB" in msg and "4.0 GiB" in msg and "at least" in msg


def test_read_only():
    assert "lock switch" in refusal(lsblk("lsblk-usb-locked.json"), force=True)
    assert "read-only" in refusal(diskutil("diskutil-info-disk6-locked.plist",
                                           "diskutil-list-disk6.plist"))


def test_partition_is_refused_with_the_whole_disk_named():
    msg = refusal(lsblk("lsblk-usb-partition.json"), force=True)
    assert "partition" in msg and "--device /dev/sdb" in msg
    msg = refusal(diskutil("diskutil-info-disk4s1.plist", None))
    assert "--device /dev/disk4" in msg


def test_empty_reader():
    assert "no card in the reader" in refusal(lsblk("lsblk-usb-empty-reader.json"))


def test_not_a_block_device(tmp_path):
    f = tmp_path / "card.bin"
    f.write_bytes(bytes(4096))
    p = LinuxPlatform(run=Replay({}))
    assert "not a block device" in refusal(p.discover(str(f)), force=True)
    assert "does not exist" in refusal(p.discover(str(tmp_path / "sdz")), force=True)
    assert "does not exist" in refusal(MacPlatform(run=Replay({})).discover("/dev/disk99"))


def test_a_device_named_without_dev_is_pointed_at_dev(tmp_path, monkeypatch):
    """`--device sdb` looked for ./sdb and said only that it does not exist."""
    monkeypatch.chdir(tmp_path)
    p = LinuxPlatform(run=Replay({}))
    said = refusal(p.discover("null"), force=True)  # /dev/null exists on every machine
    assert "null does not exist (the disk is /dev/null: --device /dev/null)" in said
    assert "(the disk is" not in refusal(p.discover("no-such-disk-here"), force=True)
