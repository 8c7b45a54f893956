"""Device discovery from recorded `lsblk --json -O -b` and `diskutil -plist` output."""

from __future__ import annotations

import pytest

from conftest import Replay

from ceil.flash.linux import LinuxPlatform
from ceil.flash.macos import MacPlatform, whole_disk_of


def linux(name: str, system=frozenset(), block=True) -> LinuxPlatform:
    run = Replay({("lsblk", "--json", "-O", "-b", "/dev/sdb"): name})
    return LinuxPlatform(run=run, is_block=lambda p: block, system_nums=lambda: set(system),
                         resolve=lambda p: "/dev/sdb")


def test_linux_usb_card_with_mounted_partitions():
    d = linux("lsblk-usb-card-mounted.json").discover("/dev/disk/by-id/usb-Generic_STORAGE")
    assert (d.path, d.raw_path, d.size) == ("/dev/sdb", "/dev/sdb", 31914983424)
    assert d.model == "Generic STORAGE DEVICE" and d.serial == "000000001404"
    assert d.transport == "usb" and d.removable and not d.read_only and d.whole_disk
    assert [p.path for p in d.partitions] == ["/dev/sdb1", "/dev/sdb2"]
    assert d.partitions[0].label == "bootfs" and d.partitions[0].fstype == "vfat"
    assert d.mounted == ("/media/alice/bootfs", "/media/alice/rootfs")
    assert d.system_reason is None and d.devnum == (8, 16)


def test_linux_mmc_slot_has_transport_from_subsystems():
    d = linux("lsblk-mmc.json").discover("/dev/mmcblk0")
    assert d.transport == "mmc" and not d.removable
    assert d.partitions[0].path == "/dev/mmcblk0p1"


def test_linux_root_behind_luks_and_lvm_is_the_system_disk():
    d = linux("lsblk-nvme-system.json").discover("/dev/nvme0n1")
    assert "/boot/efi" in d.system_reason  # the first system mount found in tree order
    assert "/" in d.mounted and "[SWAP]" in d.mounted


def test_linux_root_found_by_device_number_without_mountpoints():
    # In a container lsblk shows no mount points; st_dev of `/` still names the partition.
    d = linux("lsblk-usb-card.json", system={(8, 18)}).discover("/dev/sdb")
    assert d.system_reason == "/dev/sdb2 backs the running system's root"


def test_linux_partition_is_not_whole():
    d = linux("lsblk-usb-partition.json").discover("/dev/sdb1")
    assert not d.whole_disk and d.parent == "/dev/sdb"


def test_linux_old_lsblk_string_booleans():
    d = linux("lsblk-2.32-usb-card.json").discover("/dev/sdb")
    assert d.removable and not d.read_only and d.size == 31914983424
    assert d.path == "/dev/sdb" and d.mounted == ("/media/alice/bootfs",)
    assert d.model == "Generic STORAGE DEVICE"


def test_linux_not_a_block_device(tmp_path):
    f = tmp_path / "disk.img"
    f.write_bytes(b"x" * 1024)
    p = LinuxPlatform(run=Replay({}))
    d = p.discover(str(f))
    assert not d.is_block and d.size == 1024
    assert p.discover(str(tmp_path / "nope")).model == "missing"
    assert p.run.calls == []  # never asked lsblk about a file


def test_linux_unmount_deepest_first_and_eject_fallback():
    run = Replay({("lsblk", "--json", "-O", "-b", "/dev/sdb"): "lsblk-usb-card-mounted.json",
                  ("umount", "/media/alice/bootfs"): None, ("umount", "/media/alice/rootfs"): None,
                  ("udisksctl", "power-off", "-b", "/dev/sdb"): None})
    p = LinuxPlatform(run=run, is_block=lambda p: True, system_nums=set, resolve=str)
    d = p.discover("/dev/sdb")
    p.unmount(d)
    assert [c[0] for c in run.calls[1:]] == ["umount", "umount"]
    msg = p.eject(d)  # `eject` is not recorded, so it fails and udisksctl is tried
    assert "udisksctl power-off" in msg
    assert run.calls[-2][0] == "eject"


def mac(info: str, listing: str | None, ident: str = "disk4") -> MacPlatform:
    answers = {
        ("diskutil", "info", "-plist", f"/dev/{ident}"): info,
        ("diskutil", "info", "-plist", "/"): "diskutil-info-root.plist",
        ("diskutil", "info", "-plist", "disk3"): "diskutil-info-disk3.plist",
    }
    if listing:
        answers[("diskutil", "list", "-plist", f"/dev/{ident}")] = listing
    return MacPlatform(run=Replay(answers), is_block=lambda p: True)


@pytest.mark.parametrize("given", ["/dev/disk4", "/dev/rdisk4", "disk4"])
def test_macos_usb_card(given):
    d = mac("diskutil-info-disk4.plist", "diskutil-list-disk4-mounted.plist").discover(given)
    assert (d.path, d.raw_path) == ("/dev/disk4", "/dev/rdisk4")
    assert d.size == 31914983424 and d.transport == "usb" and d.removable
    assert d.model == "Generic STORAGE DEVICE Media" and d.serial is None
    assert [(p.path, p.label) for p in d.partitions] == [("/dev/disk4s1", "bootfs"),
                                                         ("/dev/disk4s2", None)]
    assert d.mounted == ("/Volumes/bootfs",) and d.system_reason is None


def test_macos_internal_sdxc_slot():
    d = mac("diskutil-info-disk5-sdxc.plist", "diskutil-list-disk5.plist", "disk5").discover("disk5")
    assert d.transport == "sd" and d.removable and d.size == 63864569856


def test_macos_system_disk_through_apfs_physical_store():
    d = mac("diskutil-info-disk0.plist", "diskutil-list-disk0.plist", "disk0").discover("disk0")
    assert d.system_reason == "disk0 holds the running system's root volume"
    assert d.transport == "apple fabric" and not d.removable


def test_macos_partition_and_readonly_and_dmg():
    d = mac("diskutil-info-disk4s1.plist", None, "disk4s1").discover("/dev/disk4s1")
    assert not d.whole_disk and d.parent == "/dev/disk4"
    d = mac("diskutil-info-disk6-locked.plist", "diskutil-list-disk6.plist", "disk6").discover("disk6")
    assert d.read_only
    d = mac("diskutil-info-disk7-dmg.plist", "diskutil-list-disk7.plist", "disk7").discover("disk7")
    assert d.transport == "disk-image" and not d.removable


def test_macos_unmount_and_eject_use_diskutil():
    p = mac("diskutil-info-disk4.plist", "diskutil-list-disk4.plist")
    p.run.answers[("diskutil", "unmountDisk", "/dev/disk4")] = None
    p.run.answers[("diskutil", "eject", "/dev/disk4")] = None
    d = p.discover("/dev/disk4")
    p.unmount(d)
    assert "diskutil eject" in p.eject(d)
    assert p.run.calls[-2:] == [("diskutil", "unmountDisk", "/dev/disk4"),
                                ("diskutil", "eject", "/dev/disk4")]


def test_whole_disk_of():
    assert whole_disk_of("disk3s1s1") == "disk3" and whole_disk_of("disk12") == "disk12"
