"""`bake.py flash`: write a baked image to an SD card, verify it, eject it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ceil.errors import CeilError
from ceil.flash.blockmap import BlockMap
from ceil.flash.device import current_platform
from ceil.flash.flow import FlashJob, FlashOptions, flash
from ceil.flash.imagefile import check_image_file
from ceil.flash.ui import RichUI


def resolve_image(role: str | None, image: str | None, out: str) -> str:
    if role and image:
        raise CeilError("--role and --image both name what to flash: give --role NAME (uses"
                        " OUT/ceil-NAME.img) or --image PATH, not both")
    if not role and not image:
        raise CeilError("say what to flash: --role NAME (uses OUT/ceil-NAME.img) or --image PATH")
    return image or str(Path(out) / f"ceil-{role}.img")


def check_against_manifest(image: Path) -> BlockMap | None:
    """A baked image is checked against its manifest before it is written: the bake does not
    fsync its outputs (like cp), so a workstation crash could leave a damaged image under its
    final name; this turns that into a clear error instead of a bad card.

    The manifest's block map (a sha256 per data range) is checked by reading only those ranges,
    and is returned: it is what gets written. A manifest from before per-range digests holds
    only the whole file's sha256 (read all of it; the map is then made from the file)."""
    manifest = image.with_suffix(".json")
    if not image.is_file():
        return None
    if not manifest.is_file():
        check_not_orphaned(image, manifest)
        return None
    from ceil.fetch import sha256_file
    from ceil.image_digests import blockmap_from_manifest, first_mismatch
    from ceil.ui import byte_progress

    try:
        doc = json.loads(manifest.read_text())
        output = doc.get("output", {}) if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError):
        output = None
    if not isinstance(output, dict):
        # A crash right after a bake can leave it empty (the bake does not fsync its outputs).
        raise CeilError(f"{manifest} is damaged (not the manifest a bake writes): nothing vouches for {image.name};"
                        f" bake it again.")
    size = image.stat().st_size
    bmap = blockmap_from_manifest(output.get("blockmap"), size)
    if bmap is None and "blockmap" in output:
        # Not a reason to flash unchecked: a map this version cannot read is a manifest it did not write.
        raise CeilError(f"{manifest.name}: its block map is not one this version of ceil reads (format"
                        f" {output['blockmap'].get('format') if isinstance(output['blockmap'], dict) else '?'}):"
                        " bake the image again with this version, or flash with the version that baked it.")
    if bmap is not None:
        if size != output.get("size", size):
            raise CeilError(f"{image} is {size} bytes, but its manifest {manifest.name} says"
                            f" {output['size']}: the image was changed after baking; bake it again.")
        with byte_progress(f"checking {image.name}", bmap.mapped_bytes) as advance, open(image, "rb") as f:
            bad = first_mismatch(f.fileno(), bmap, advance)
        if bad:
            raise CeilError(f"{image} does not match its manifest {manifest.name}: the {bad[1]:,} bytes at"
                            f" offset {bad[0]:,} differ from what was baked (sha256): the image was damaged"
                            " after baking; bake it again.")
        return bmap
    expected = output.get("sha256")
    if expected:
        with byte_progress(f"checking {image.name}", size) as advance:
            got = sha256_file(image, advance)
        if got != expected:
            raise CeilError(f"{image} does not match its manifest {manifest.name} (sha256 {got}, manifest"
                            f" says {expected}): the image was damaged after baking; bake it again.")
    return None


def check_not_orphaned(image: Path, manifest: Path) -> None:
    """A file named as the bake names its images, without the manifest beside it, is refused: the
    bake puts the manifest in place last, so it is what an interrupted bake leaves behind (or an
    image whose manifest was moved away), and nothing vouches for it. An image ceil did not bake
    (`--image` any other name) has no manifest to miss, and is flashed as it is."""
    baked = re.fullmatch(r"ceil-(.+)\.img", image.name)
    if baked:
        raise CeilError(f"{image} has no manifest beside it ({manifest.name}): a bake puts the manifest in place last,"
                        f" so this image's bake was interrupted (or the manifest was moved away), and nothing"
                        f" vouches for the image; bake it again (python bake.py --role {baked.group(1)}).")


@click.command("flash")
@click.option("--role", metavar="NAME", help="Flash OUT/ceil-NAME.img (baked by --role NAME).")
@click.option("--image", metavar="PATH", help="Flash this image file instead.")
@click.option("--out", default="out", show_default=True, metavar="DIR",
              help="Directory holding baked images.")
@click.option("--device", required=True, metavar="DEV",
              help="Whole disk to overwrite: /dev/sdX, /dev/mmcblkN (Linux), /dev/diskN (macOS).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--force", is_flag=True,
              help="Allow a disk that is not removable USB/SD/MMC. Never allows the system disk.")
@click.option("--unmount", is_flag=True, help="Unmount the disk's mounted partitions first.")
@click.option("--no-verify", is_flag=True, help="Skip reading back and comparing (not advised).")
@click.option("--no-eject", is_flag=True, help="Leave the card attached afterwards.")
def flash_command(role, image, out, device, yes, force, unmount, no_verify, no_eject) -> None:
    """Write a baked image to an SD card: only the blocks that hold data, then read them back
    and compare, then eject. Refuses internal, system, mounted, read-only and too-small disks."""
    if not device.strip():
        raise click.BadParameter("empty: name the card's whole disk, e.g. /dev/sdb (see lsblk)", param_hint="--device")
    path = resolve_image(role, image, out)
    # First: a compressed file, or the manifest given as the image, is refused as what it is, not
    # checked against a manifest (the manifest's own name is the one it would look for).
    check_image_file(path)
    bmap = check_against_manifest(Path(path))
    options = FlashOptions(image=path, device=device, yes=yes,
                           force=force, unmount=unmount, verify=not no_verify, eject=not no_eject)
    flash(FlashJob(options=options, platform=current_platform(), ui=RichUI(), bmap=bmap))
