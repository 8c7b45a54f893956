"""Is the file given to `flash` a disk image at all? flash writes it byte for byte, so a
downloaded `.img.xz`, the bake's manifest or cluster.yaml would otherwise be written to the card
(and verified!) as if it were one, and the card would not boot. Each is refused as what it is,
by its first bytes, before any device is looked at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ceil.errors import CeilError
from ceil.flash.device import human_size

HEAD = 8192  # the MBR, and a GPT header after it on 512- or 4096-byte sectors
MBR_SIGNATURE = (510, b"\x55\xaa")
GPT_SIGNATURE = b"EFI PART"
GPT_HEADER_OFFSETS = (512, 4096)
MANIFEST_MAX = 64 << 20  # a manifest is a few hundred KiB at most: larger JSON is not one

# (format, magic bytes, how to decompress; whether `bake.py --base-image` takes it, see ceil/fetch.py)
COMPRESSED = (
    ("xz", (b"\xfd7zXZ\x00",), "xz -dk {path}", True),
    ("gzip", (b"\x1f\x8b",), "gunzip -k {path}", True),
    ("zip", (b"PK\x03\x04", b"PK\x05\x06"), "unzip {path}", True),
    ("zstd", (b"\x28\xb5\x2f\xfd",), "zstd -d {path}", False),
    ("bzip2", tuple(b"BZh%d" % level for level in range(1, 10)), "bunzip2 -k {path}", False),
)


def check_image_file(path: str) -> int:
    """Refuse anything but an existing disk image file; its size in bytes."""
    if not os.path.isfile(path):
        raise CeilError(f"image {path} not found: bake it first (python bake.py --role NAME) "
                        "or pass --image PATH.")
    with open(path, "rb") as f:
        head = f.read(HEAD)
    check_not_compressed(path, head)
    check_not_manifest(path, head)
    check_partition_table(path, head)
    return os.path.getsize(path)


def check_not_compressed(path: str, head: bytes) -> None:
    for name, magics, decompress, bakeable in COMPRESSED:
        if head.startswith(magics):
            bake_hint = (" If it is a base image to bake from, `bake.py --base-image` takes it as it is;"
                         " flash the baked out/ceil-ROLE.img then." if bakeable else "")
            raise CeilError(f"{path} is {name}-compressed, not a disk image: flash writes the file to the card"
                            f" byte for byte, and the card would not boot. Decompress it first"
                            f" (`{decompress.format(path=path)}`) and flash the .img it gives.{bake_hint}")


def check_not_manifest(path: str, head: bytes) -> None:
    """The manifest the bake writes beside the image (ceil-ROLE.json) is an easy file to pick by
    mistake: name the image beside it."""
    if not head.lstrip().startswith(b"{") or os.path.getsize(path) > MANIFEST_MAX:
        return
    try:
        manifest = json.loads(Path(path).read_bytes())
    except ValueError:
        return  # not JSON: check_partition_table says what it is
    output = manifest.get("output") if isinstance(manifest, dict) else None
    if not isinstance(output, dict) or not isinstance(output.get("path"), str):
        return
    image = Path(path).parent / output["path"]
    raise CeilError(f"{path} is the manifest a bake writes beside its image, not the image: flash the image"
                    f" it describes, {image} (--image {image}"
                    f"{', or --role ' + manifest['role'] if isinstance(manifest.get('role'), str) else ''}).")


def check_partition_table(path: str, head: bytes) -> None:
    offset, signature = MBR_SIGNATURE
    if head[offset:offset + len(signature)] == signature:
        return
    if any(head[o:o + len(GPT_SIGNATURE)] == GPT_SIGNATURE for o in GPT_HEADER_OFFSETS):
        return
    raise CeilError(f"{path} has no partition table (no MBR boot signature 0x55AA at byte 510, no GPT header):"
                    f" it is {describe(head, os.path.getsize(path))}, not a disk image. flash writes whole-disk"
                    " images, such as the out/ceil-ROLE.img a bake makes: pass --role ROLE, or --image with"
                    " that image.")


def describe(head: bytes, size: int) -> str:
    """What a file that is not a disk image looks like, to name it in the refusal."""
    if size == 0:
        return "empty"
    if is_text(head):
        first = next((line.strip() for line in head.decode(errors="replace").splitlines() if line.strip()), "")
        shown = first if len(first) <= 40 else first[:40] + "..."
        return f"a text file of {human_size(size)} (its first line: {shown!r})"
    return f"a file of {human_size(size)} that starts with bytes {head[:8].hex(' ')}"


def is_text(head: bytes) -> bool:
    controls = set(range(32)) - {9, 10, 13}
    return not any(b in controls for b in head)
