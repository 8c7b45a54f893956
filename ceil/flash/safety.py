"""The refusals that stand between a typo and a wiped disk.

Checks run in order of severity and stop at the first failure, so the message names the most
important reason. Only the removable/transport check can be overridden (--force); the system
disk check cannot, because no flag typed in a hurry should be able to overwrite the running OS.
"""

from __future__ import annotations

from pathlib import Path

from ceil.errors import CeilError
from ceil.flash.device import Device, human_size

# Transports an SD card or USB stick arrives on. A card reader built into a laptop is often
# `mmc` (Linux) or `Secure Digital` (macOS) and not flagged removable, so transport alone passes.
FLASHABLE_TRANSPORTS = frozenset({"usb", "mmc", "sd"})


class FlashRefused(CeilError):
    """The target failed a safety check; nothing was written."""


def check_target(device: Device, image_size: int, *, force: bool = False,
                 unmount: bool = False) -> bool:
    """Raise FlashRefused if `device` must not be written; return True if it needs unmounting."""
    name = device.path
    if not device.is_block:
        if device.model == "missing":
            # `--device sdb` names ./sdb; the disk the user meant is likely /dev/sdb.
            short = Path(name).name
            meant = short and Path(name).parent != Path("/dev") and Path("/dev", short).exists()
            hint = f" (the disk is /dev/{short}: --device /dev/{short})" if meant else ""
            raise FlashRefused(f"{name} does not exist{hint}. List disks with `lsblk -d -o "
                               "NAME,SIZE,MODEL,TRAN` (Linux) or `diskutil list` (macOS).")
        raise FlashRefused(f"{name} is not a block device (a regular file or directory?). "
                           "flash writes whole disks such as /dev/sdb, /dev/mmcblk0 or /dev/disk4.")
    if not device.whole_disk:
        hint = f": use --device {device.parent}" if device.parent else ""
        raise FlashRefused(f"{name} is a partition, not a whole disk; the image holds its own "
                           f"partition table and must be written to the whole disk{hint}.")
    if device.system_reason:
        raise FlashRefused(f"{name} ({device.description}) is the running system's disk: "
                           f"{device.system_reason}. ceil never writes it, not even with --force.")
    if device.size == 0:
        raise FlashRefused(f"{name} reports size 0: no card in the reader? Insert it and retry.")
    if device.read_only:
        raise FlashRefused(f"{name} ({device.description}) is read-only. On an SD card or adapter, "
                           "slide the lock switch up (away from 'LOCK') and reinsert it.")
    if device.size < image_size:
        raise FlashRefused(f"{name} holds {human_size(device.size)} but the image is "
                           f"{human_size(image_size)}: use a card of at least that size.")
    flashable = device.removable or device.transport in FLASHABLE_TRANSPORTS
    if not flashable and not force:
        raise FlashRefused(
            f"{name} ({device.description}) is not a removable USB/SD/MMC disk "
            f"(transport {device.transport or 'unknown'}, removable: no), so it is probably an "
            "internal disk. If you are sure it is the card, pass --force.")
    mounted = device.mounted
    if mounted and not unmount:
        raise FlashRefused(f"{name} has mounted file systems ({', '.join(mounted)}). Pass "
                           "--unmount to unmount them first, or eject them in your file manager.")
    return bool(mounted)
