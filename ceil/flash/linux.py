"""Linux: find a disk with `lsblk --json -O -b`, unmount with `umount`, eject with `eject` /
`udisksctl power-off`.

lsblk nests partitions and anything stacked on them (LVM, dm-crypt, md) as `children`, so one
walk of the tree finds every mount point that depends on the disk, including `/` behind LVM.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable

from ceil.errors import CeilError
from ceil.flash.device import Device, Partition, Runner, is_system_mount, run_command

# Mount points whose backing device numbers identify the running system's disks, even when lsblk
# does not show a mount point (containers, bind mounts, or an overlay root).
_SYSTEM_PATHS = ("/", "/usr", "/boot", "/boot/firmware", "/var", "/home")


def system_devnums(paths: Iterable[str] = _SYSTEM_PATHS) -> set[tuple[int, int]]:
    nums = set()
    for p in paths:
        try:
            dev = os.stat(p).st_dev
        except OSError:
            continue
        nums.add((os.major(dev), os.minor(dev)))
    return nums


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class LinuxPlatform:
    name = "linux"

    def __init__(
        self,
        run: Runner = run_command,
        is_block: Callable[[str], bool] = is_block_device,
        system_nums: Callable[[], set[tuple[int, int]]] = system_devnums,
        resolve: Callable[[str], str] = os.path.realpath,
    ) -> None:
        self.run = run
        self.is_block = is_block
        self.system_nums = system_nums
        self.resolve = resolve

    def discover(self, path: str) -> Device:
        real = self.resolve(path)
        if not self.is_block(real):
            return _not_a_block_device(real)
        out = self.run(["lsblk", "--json", "-O", "-b", real])
        return parse_lsblk(json.loads(out), self.system_nums())

    def unmount(self, device: Device) -> None:
        # Deepest mount points first, so nested mounts do not keep their parents busy.
        for mp in sorted(device.mounted, key=len, reverse=True):
            self.run(["umount", mp])

    def eject(self, device: Device) -> str:
        if device.transport == "loop":
            return "loop device left attached (nothing to eject)"
        errors = []
        for cmd in (["eject", device.path], ["udisksctl", "power-off", "-b", device.path]):
            try:
                self.run(cmd)
                return f"ejected with `{' '.join(cmd)}`: the card can be removed"
            except OSError as e:
                errors.append(str(e))
        return "could not eject (" + "; ".join(errors) + "): the data is synced, remove the card"


def _not_a_block_device(path: str) -> Device:
    exists = os.path.exists(path)
    size = os.path.getsize(path) if exists else 0
    return Device(path=path, raw_path=path, size=size, is_block=False,
                  model="missing" if not exists else None)


def _bool(value) -> bool:
    # util-linux before 2.33 printed booleans as "0"/"1" strings in JSON.
    return value in (True, 1, "1", "true")


def _int(value) -> int:
    return int(value or 0)


def _devnum(node: dict) -> tuple[int, int] | None:
    majmin = node.get("maj:min") or node.get("maj_min")
    if not majmin:
        return None
    major, minor = majmin.split(":")
    return int(major), int(minor)


def _mountpoints(node: dict) -> list[str]:
    points = node.get("mountpoints")
    if points is None:  # older lsblk: one `mountpoint`
        points = [node.get("mountpoint")]
    return [p for p in points if p]


def _walk(node: dict):
    yield node
    for child in node.get("children") or ():
        yield from _walk(child)


def _transport(node: dict) -> str | None:
    if node.get("tran"):
        return node["tran"]
    subsystems = (node.get("subsystems") or "").split(":")
    for name in ("usb", "mmc", "nvme", "virtio"):
        if name in subsystems:
            return name
    if node.get("type") == "loop" or (node.get("name") or "").startswith("loop"):
        return "loop"
    return None


def _system_reason(root: dict, system_nums: set[tuple[int, int]]) -> str | None:
    for node in _walk(root):
        for mp in _mountpoints(node):
            if is_system_mount(mp):
                return f"{node.get('path') or node['name']} is mounted at {mp}"
        if _devnum(node) in system_nums:
            return f"{node.get('path') or node['name']} backs the running system's root"
    return None


def parse_lsblk(data: dict, system_nums: set[tuple[int, int]] = frozenset()) -> Device:
    """The first device of `lsblk --json -O -b DEV` output, with everything stacked on it."""
    devices = data.get("blockdevices") or []
    if not devices:
        raise CeilError("lsblk reported no device; is the path a block device?")
    root = devices[0]
    path = root.get("path") or f"/dev/{root['name']}"
    mounts: list[str] = []
    for node in _walk(root):
        mounts.extend(m for m in _mountpoints(node) if m not in mounts)
    partitions = tuple(
        Partition(
            path=child.get("path") or f"/dev/{child['name']}",
            size=_int(child.get("size")),
            fstype=child.get("fstype"),
            label=child.get("label") or child.get("partlabel"),
            mountpoints=tuple(m for n in _walk(child) for m in _mountpoints(n)),
        )
        for child in root.get("children") or ()
        if child.get("type") == "part"
    )
    model = " ".join(x.strip() for x in (root.get("vendor"), root.get("model")) if x and x.strip())
    return Device(
        path=path,
        raw_path=path,
        size=_int(root.get("size")),
        model=model or None,
        serial=(root.get("serial") or "").strip() or None,
        transport=_transport(root),
        removable=_bool(root.get("rm")) or _bool(root.get("hotplug")),
        read_only=_bool(root.get("ro")),
        whole_disk=root.get("type") in ("disk", "loop") and not root.get("pkname"),
        partitions=partitions,
        mountpoints=tuple(mounts),
        system_reason=_system_reason(root, set(system_nums)),
        parent=f"/dev/{root['pkname']}" if root.get("pkname") else None,
        devnum=_devnum(root),
        sector_size=_int(root.get("log-sec")) or 512,
    )
