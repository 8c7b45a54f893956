"""macOS: find a disk with `diskutil info -plist` / `diskutil list -plist`, unmount with
`diskutil unmountDisk`, eject with `diskutil eject`, write through the raw `/dev/rdiskN` node.

The raw node bypasses the buffer cache: it is several times faster than `/dev/diskN` for large
sequential writes and makes the read-back come from the card, not from memory.
"""

from __future__ import annotations

import os
import plistlib
import re
import stat
from collections.abc import Callable

from ceil.flash.device import Device, Partition, Runner, is_system_mount, run_command

_DISK = re.compile(r"^(?:/dev/)?r?(disk\d+(?:s\d+)*)$")
_TRANSPORTS = {"USB": "usb", "Secure Digital": "sd", "Disk Image": "disk-image"}


def whole_disk_of(identifier: str) -> str:
    """disk4s2 -> disk4 (APFS volumes have two levels: disk3s1s1 -> disk3)."""
    return re.sub(r"(s\d+)+$", "", identifier)


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class MacPlatform:
    name = "macos"

    def __init__(self, run: Runner = run_command, is_block: Callable[[str], bool] = _is_block):
        self.run = run
        self.is_block = is_block

    def _plist(self, *args: str) -> dict:
        return plistlib.loads(self.run(["diskutil", *args]).encode())

    def discover(self, path: str) -> Device:
        m = _DISK.match(path)
        node = f"/dev/{m.group(1)}" if m else os.path.realpath(path)
        if not m or not self.is_block(node):
            exists = os.path.exists(node)
            return Device(path=node, raw_path=node, size=os.path.getsize(node) if exists else 0,
                          is_block=False, model=None if exists else "missing")
        info = self._plist("info", "-plist", node)
        listing = self._plist("list", "-plist", node) if info.get("WholeDisk", True) else {}
        return parse_diskutil(info, listing, self.system_disks())

    def system_disks(self) -> set[str]:
        """Whole disks that hold `/`, following APFS containers to their physical stores."""
        disks = set()
        root = self._plist("info", "-plist", "/")
        container = root.get("ParentWholeDisk") or whole_disk_of(root.get("DeviceIdentifier", ""))
        if container:
            disks.add(container)
            info = self._plist("info", "-plist", container)
            for store in info.get("APFSPhysicalStores") or ():
                ident = store.get("APFSPhysicalStore") or store.get("DeviceIdentifier")
                if ident:
                    disks.add(whole_disk_of(ident))
        return disks

    def unmount(self, device: Device) -> None:
        self.run(["diskutil", "unmountDisk", device.path])

    def eject(self, device: Device) -> str:
        try:
            self.run(["diskutil", "eject", device.path])
            return "ejected with `diskutil eject`: the card can be removed"
        except OSError as e:
            return f"could not eject ({e}): the data is synced, remove the card"


def _partitions(listing: dict) -> tuple[Partition, ...]:
    disks = listing.get("AllDisksAndPartitions") or [{}]
    parts = []
    for p in disks[0].get("Partitions") or ():
        mounts = [p.get("MountPoint")]
        # An APFS partition's volumes live on a synthesized disk listed under it.
        mounts += [v.get("MountPoint") for v in p.get("APFSVolumes") or ()]
        parts.append(Partition(
            path=f"/dev/{p['DeviceIdentifier']}",
            size=int(p.get("Size") or 0),
            fstype=p.get("Content"),
            label=p.get("VolumeName"),
            mountpoints=tuple(m for m in mounts if m),
        ))
    return tuple(parts)


def parse_diskutil(info: dict, listing: dict, system_disks: set[str] = frozenset()) -> Device:
    ident = info["DeviceIdentifier"]
    whole = bool(info.get("WholeDisk", True))
    bus = info.get("BusProtocol")
    partitions = _partitions(listing)
    disk_mount = info.get("MountPoint")
    mounts = [m for m in [disk_mount, *(m for p in partitions for m in p.mountpoints)] if m]
    reason = None
    if whole_disk_of(ident) in system_disks:
        reason = f"{ident} holds the running system's root volume"
    else:
        bad = [m for m in mounts if is_system_mount(m)]
        if bad:
            reason = f"{ident} has {bad[0]} mounted"
    return Device(
        path=f"/dev/{ident}",
        raw_path=f"/dev/r{ident}",
        size=int(info.get("TotalSize") or info.get("Size") or 0),
        model=info.get("MediaName") or info.get("IORegistryEntryName"),
        serial=None,  # diskutil does not report it; the model and size identify the card
        transport=_TRANSPORTS.get(bus, bus.lower() if bus else None),
        # Not `Ejectable`: a mounted .dmg is ejectable too. USB disks pass on transport.
        removable=bool(info.get("RemovableMedia") or info.get("Removable")),
        read_only=not info.get("WritableMedia", info.get("Writable", True)),
        whole_disk=whole,
        partitions=partitions,
        mountpoints=tuple(mounts),
        system_reason=reason,
        parent=None if whole else f"/dev/{info.get('ParentWholeDisk') or whole_disk_of(ident)}",
        sector_size=int(info.get("DeviceBlockSize") or 512),
    )
