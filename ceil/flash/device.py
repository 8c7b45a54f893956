"""What we know about a target disk, and the interface each platform implements to find it.

The platform layer (`linux.LinuxPlatform`, `macos.MacPlatform`) turns a user-given path into a
`Device`. Everything after that (safety checks, confirmation, writing) works on `Device` alone,
so tests drive the whole flow from recorded `lsblk` / `diskutil` output.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Mount points that belong to the running system. A disk with any of these (or anything below the
# prefixes) mounted is the system disk: flashing it is refused even with --force.
SYSTEM_MOUNTS = frozenset(
    {"/", "/boot", "/boot/efi", "/boot/firmware", "/usr", "/var", "/etc", "/opt", "/srv", "/home",
     "/nix", "/private/var", "/System/Volumes/Data", "/System/Volumes/VM",
     "/System/Volumes/Preboot", "/System/Volumes/Update", "[SWAP]"}
)
SYSTEM_PREFIXES = ("/boot/", "/usr/", "/var/", "/etc/", "/opt/", "/srv/", "/nix/", "/System/",
                   "/private/")


def is_system_mount(mountpoint: str) -> bool:
    return mountpoint in SYSTEM_MOUNTS or mountpoint.startswith(SYSTEM_PREFIXES)


@dataclass(frozen=True)
class Partition:
    path: str
    size: int
    fstype: str | None = None
    label: str | None = None
    mountpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Device:
    """A disk as the platform reports it. `path` is what the user named (resolved); `raw_path`
    is what we write to (macOS: the unbuffered /dev/rdiskN; Linux: the same node)."""

    path: str
    raw_path: str
    size: int
    model: str | None = None
    serial: str | None = None
    transport: str | None = None  # usb, mmc, sd, sata, nvme, virtio, loop, ...
    removable: bool = False
    read_only: bool = False
    whole_disk: bool = True
    is_block: bool = True
    partitions: tuple[Partition, ...] = ()
    # Mount points of this disk or anything stacked on it (LVM, dm-crypt, APFS volumes).
    mountpoints: tuple[str, ...] = ()
    # Why this is the running system's disk, or None. Set by the platform, which knows how to
    # trace `/` to its physical disk.
    system_reason: str | None = None
    parent: str | None = None  # the whole disk, when `path` is a partition
    devnum: tuple[int, int] | None = None  # (major, minor) to re-check after opening
    sector_size: int = 512

    @property
    def description(self) -> str:
        bits = [self.model or "unknown model", human_size(self.size)]
        if self.transport:
            bits.append(self.transport)
        return ", ".join(bits)

    @property
    def mounted(self) -> tuple[str, ...]:
        seen = list(self.mountpoints)
        for p in self.partitions:
            seen.extend(m for m in p.mountpoints if m not in seen)
        return tuple(seen)


class Platform(Protocol):
    """The per-OS operations flashing needs. Implementations take their command runner as an
    argument so tests can replay recorded output instead of touching real disks."""

    name: str

    def discover(self, path: str) -> Device: ...

    def unmount(self, device: Device) -> None: ...

    def eject(self, device: Device) -> str: ...


Runner = Callable[[Sequence[str]], str]


def run_command(args: Sequence[str]) -> str:
    """Run a host tool and return stdout; a failure becomes OSError with the tool's stderr."""
    import subprocess

    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise OSError(f"{args[0]} not found: {e}") from e
    if proc.returncode != 0:
        raise OSError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def current_platform(run: Runner = run_command) -> Platform:
    if sys.platform.startswith("linux"):
        from ceil.flash.linux import LinuxPlatform

        return LinuxPlatform(run=run)
    if sys.platform == "darwin":
        from ceil.flash.macos import MacPlatform

        return MacPlatform(run=run)
    from ceil.errors import CeilError

    raise CeilError(f"flash supports Linux and macOS; this is {sys.platform}. "
                    "Use Raspberry Pi Imager with the baked out/ceil-<role>.img instead.")


def human_size(n: int | float) -> str:
    """Binary units, as `lsblk` and Raspberry Pi Imager show them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
