"""The flash, as a flat list of steps: discover, check, confirm, unmount, map, write, verify,
eject, summarise. Each step takes the same `FlashJob` and the platform and UI it was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ceil.errors import CeilError
from ceil.flash.blockmap import BlockMap, build_blockmap
from ceil.flash.device import Device, Platform, human_size
from ceil.flash.imagefile import check_image_file
from ceil.flash.safety import FlashRefused, check_target
from ceil.flash.ui import RichUI
from ceil.flash.writer import (Target, VerifyError, VerifyResult, WriteResult, file_identity, first_difference,
                               verify_ranges, write_ranges)


@dataclass
class FlashOptions:
    image: str
    device: str
    yes: bool = False
    force: bool = False
    unmount: bool = False
    verify: bool = True
    eject: bool = True


@dataclass
class FlashJob:
    options: FlashOptions
    platform: Platform
    ui: RichUI
    # Called between writing and verifying; tests use it to corrupt the card on purpose.
    after_write: Callable[[Target], None] | None = None
    image_size: int = 0
    device: Device | None = None
    needs_unmount: bool = False
    # (device, inode, size, mtime) of the image when it was checked: the write refuses a file
    # replaced under its name meanwhile (the prompt may wait any length of time).
    image_identity: tuple[int, int, int, int] | None = None
    bmap: BlockMap | None = None
    written: WriteResult | None = None
    verified: VerifyResult | None = None
    notes: list[str] = field(default_factory=list)


def flash(job: FlashJob) -> FlashJob:
    for step in (check_image, discover_target, check_safety, map_image, confirm, unmount,
                 recheck_target, write_and_verify, eject, summarise):
        step(job)
    return job


def check_image(job: FlashJob) -> None:
    job.image_size = check_image_file(job.options.image)
    job.image_identity = file_identity(os.stat(job.options.image))


def discover_target(job: FlashJob) -> None:
    try:
        job.device = job.platform.discover(job.options.device)
    except OSError as e:
        raise CeilError(f"cannot inspect {job.options.device}: {e}") from e


def check_safety(job: FlashJob) -> None:
    o = job.options
    job.needs_unmount = check_target(job.device, job.image_size, force=o.force, unmount=o.unmount)


def map_image(job: FlashJob) -> None:
    if job.bmap is not None:  # the bake's map, already checked against the image
        return
    with open(job.options.image, "rb") as img:
        job.bmap = build_blockmap(img.fileno(), job.image_size)


def confirm(job: FlashJob) -> None:
    job.ui.show_target(job.device, job.options.image, job.image_size, job.bmap.mapped_bytes)
    if not job.options.yes:
        job.ui.confirm(job.device)


def unmount(job: FlashJob) -> None:
    if not job.needs_unmount:
        return
    job.ui.info(f"Unmounting {', '.join(job.device.mounted)}")
    try:
        job.platform.unmount(job.device)
    except OSError as e:
        raise FlashRefused(f"could not unmount {job.device.path}: {e}") from e


def disk_identity(d: Device) -> tuple:
    """What makes a disk the one the user confirmed. A disk plugged in meanwhile may take the same
    name and, on Linux, the same device number; its model, serial or size tells it apart."""
    return d.path, d.size, d.model, d.serial, d.transport, d.devnum


def recheck_target(job: FlashJob) -> None:
    """Discover the disk again right before writing: the confirmation may have waited any length
    of time, and the name may now be another disk's (a card pulled, a backup drive plugged in), or
    a desktop automounter may have mounted it straight back after the unmount."""
    try:
        now = job.platform.discover(job.options.device)
    except OSError as e:
        raise FlashRefused(f"{job.options.device} is gone since you confirmed it ({e}): nothing was written") from e
    if job.device.is_block and not now.is_block:  # the platforms' shape of a card pulled meanwhile
        raise FlashRefused(f"{job.options.device} is gone since you confirmed it (no block device there now):"
                           " nothing was written")
    if disk_identity(now) != disk_identity(job.device):
        raise FlashRefused(f"{job.options.device} is no longer the disk you confirmed (was {job.device.description},"
                           f" serial {job.device.serial or '?'}; now {now.description}, serial {now.serial or '?'}):"
                           " nothing was written; check which disk is the card and run flash again")
    check_target(now, job.image_size, force=job.options.force, unmount=False)
    job.device = now


def write_and_verify(job: FlashJob) -> None:
    d = job.device
    with Target(d.path, d.raw_path, devnum=d.devnum) as target:
        try:
            with job.ui.progress(f"write  {d.path}", job.bmap.mapped_bytes) as advance:
                job.written = write_ranges(job.options.image, target, job.bmap, advance, job.image_identity)
        except KeyboardInterrupt:
            raise CeilError(f"interrupted: {d.path} holds a partial image and will not boot. "
                            "Flash it again.") from None
        if job.after_write:
            job.after_write(target)
        if job.options.verify:
            try:
                with job.ui.progress(f"verify {d.path}", job.bmap.mapped_bytes) as advance:
                    job.verified = verify_ranges(target, job.written, advance)
            except OSError as e:
                raise CeilError(f"reading {d.path} back failed: {e.strerror or e}. The image was written but"
                                " not verified: the card may be failing or was removed; flash it again,"
                                " or use another card.") from e
            except KeyboardInterrupt:
                raise CeilError(f"interrupted while verifying: {d.path} holds the whole image, but it was"
                                " not read back (and not ejected). Flash it again to verify it.") from None
            if job.verified.bad:
                raise _verify_error(job, target)
        if not job.options.eject:
            target.reread_partitions()


def _verify_error(job: FlashJob, target: Target) -> VerifyError:
    bad = job.verified.bad
    offset, length = bad[0]
    try:
        first = first_difference(job.options.image, target, offset, length)
        where = f"first difference at byte {first:,}" if first is not None else "sha256 differs"
    except OSError as e:  # the card failing further: the verdict stands, only the detail is lost
        where = f"sha256 differs; reading it again failed: {e.strerror or e}"
    return VerifyError(
        f"verification FAILED on {job.device.path}: {len(bad)} of {len(job.written.ranges)} "
        f"written ranges differ from the image ({where}, in the range at byte {offset:,}, "
        f"{human_size(length)}). The card is failing or counterfeit (fake-capacity cards "
        "silently drop writes): do not use it; try another card.")


def eject(job: FlashJob) -> None:
    if job.options.eject:
        job.notes.append(job.platform.eject(job.device))
    else:
        job.notes.append("not ejected (--no-eject)")


def summarise(job: FlashJob) -> None:
    w = job.written
    rate = w.written / w.seconds if w.seconds else 0
    share = 100 * w.written / job.image_size if job.image_size else 100
    lines = [
        f"Wrote {human_size(w.written)} of the {human_size(job.image_size)} image ({share:.1f}%, "
        f"{len(w.ranges)} ranges) to {job.device.path} in {w.seconds:.1f} s "
        f"({human_size(rate)}/s{', direct I/O' if w.direct else ''}).",
    ]
    if job.verified:
        v = job.verified
        lines.append(f"Verified: all {len(w.ranges)} ranges ({human_size(v.checked)}) read back "
                     f"from the card match the image (sha256), in {v.seconds:.1f} s.")
    else:
        lines.append("Not verified (--no-verify).")
    lines.extend(job.notes)
    job.ui.info("\n".join(lines))
