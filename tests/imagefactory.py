"""Synthetic base images in a flavor's real layout (MBR, FAT32 boot with its label, ext4 root
with its label), built rootless with sfdisk, mkfs.vfat --offset and mkfs.ext4 -E offset."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ceil.catalog import Flavor
# Raspberry Pi OS trixie's config.txt, as the Pi OS twin has it (one copy).
from testbed.rootfs import PI_OS_CONFIG_TXT as RASPIOS_CONFIG_TXT

MiB = 1024 * 1024


# What a real image's dpkg status says of cloud-init (the bake refuses an image without it).
CLOUD_INIT_STATUS = ("Package: cloud-init\nStatus: install ok installed\nVersion: 25.1.4-0ubuntu0~24.04.1\n\n"
                     "Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.6p1-3ubuntu13\n")


def make_base_image(path: Path, flavor: Flavor, boot_mib: int = 64, root_mib: int = 96, total_mib: int | None = None,
                    dpkg_status: str | None = CLOUD_INIT_STATUS, filler_mib: int = 0) -> Path:
    """An image in `flavor`'s layout; `filler_mib` of random data as a file in the root file
    system (benchmarks: a base with as much data as a real one, and a clean file system)."""
    boot_start = 4 * MiB
    root_start = boot_start + boot_mib * MiB
    size = total_mib * MiB if total_mib else root_start + root_mib * MiB
    with open(path, "wb") as f:
        f.truncate(size)
    layout = (
        "label: dos\n"
        f"start={boot_start // 512}, size={boot_mib * MiB // 512}, type=c\n"
        f"start={root_start // 512}, size={(size - root_start) // 512}, type=83\n"
    )
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)], input=layout.encode(), check=True)
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", flavor.partitions.boot.label, "--offset", str(boot_start // 512),
         str(path), str(boot_mib * 1024)],
        check=True, capture_output=True,
    )
    root_dir = path.parent / f"{path.stem}-rootfs"
    (root_dir / "etc").mkdir(parents=True, exist_ok=True)
    # The flavor's own release in os-release, and its python3 (the bake refuses another OS's image).
    fields = {"PRETTY_NAME": f"synthetic {flavor.name}", **flavor.os_release}
    (root_dir / "etc" / "os-release").write_text("".join(f'{k}="{v}"\n' for k, v in fields.items()))
    if dpkg_status is CLOUD_INIT_STATUS and flavor.python_tag:
        dpkg_status += (f"\nPackage: python3\nStatus: install ok installed\nArchitecture: {flavor.arch}\n"
                        f"Version: 3.{flavor.python_tag[3:]}.1-1\n")
    if dpkg_status is not None:
        (root_dir / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
        (root_dir / "var/lib/dpkg/status").write_text(dpkg_status)
    if filler_mib:
        import os

        block = os.urandom(4 * MiB)
        with open(root_dir / "filler.bin", "wb") as f:
            for _ in range(filler_mib // 4):
                f.write(block)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", flavor.partitions.root.label, "-E", f"offset={root_start},nodiscard",
         "-d", str(root_dir), str(path), f"{(size - root_start) // 1024}k"],
        check=True, capture_output=True,
    )
    if flavor.cmdline:
        cmdline = path.parent / "cmdline.txt"
        cmdline.write_text(f"console=serial0,115200 root=LABEL={flavor.partitions.root.label} rootfstype=ext4 rootwait\n")
        env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
        # In its slot directory where the flavor keeps it (Ubuntu 26.04: current/cmdline.txt), and
        # a pending new/ slot beside it where the flavor has slots (its old/ stays absent).
        for where in [flavor.cmdline, *flavor.other_cmdlines[:1]]:
            for parent in reversed(Path(where).parents[:-1]):
                subprocess.run(["mmd", "-i", f"{path}@@{boot_start}", f"::/{parent.as_posix()}"], check=True, env=env)
            subprocess.run(["mcopy", "-i", f"{path}@@{boot_start}", str(cmdline), f"::/{where}"], check=True, env=env)
    if flavor.pi5_4k_kernel:
        # Raspberry Pi OS's boot partition: its config.txt (ending in model sections and [all]),
        # the Pi 5's 16K-page kernel and the Pi 3/4's 4K-page one, each with its initramfs.
        env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
        files = {"config.txt": RASPIOS_CONFIG_TXT, "kernel_2712.img": "16K kernel", "initramfs_2712": "initramfs",
                 flavor.pi5_4k_kernel.kernel: "4K kernel", flavor.pi5_4k_kernel.initramfs: "initramfs"}
        for name, text in files.items():
            (path.parent / name).write_text(text)
            subprocess.run(["mcopy", "-o", "-i", f"{path}@@{boot_start}", str(path.parent / name), f"::/{name}"],
                           check=True, env=env)
    return path


def blockmap_problems(img: Path, output: dict) -> list[str]:
    """What is wrong with a manifest's block map of `img` (its "output" entry): a range whose bytes
    do not hash to its digest, or non-zero bytes outside every range, which `flash` would never
    write. Empty when writing only the map onto a zeroed card gives the image."""
    import hashlib
    import os

    from ceil.sparse import data_ranges

    problems = []
    ranges = [(o, n, d) for o, n, d in output["blockmap"]["ranges"]]
    with open(img, "rb") as f:
        fd = f.fileno()
        for o, n, d in ranges:
            if hashlib.sha256(os.pread(fd, n, o)).hexdigest() != d:
                problems.append(f"range at {o} ({n} bytes): digest differs")
        covered = sorted((o, o + n) for o, n, _ in ranges)
        for start, length in data_ranges(fd):
            pos, end = start, start + length
            for lo, hi in covered:
                if hi <= pos or lo >= end:
                    continue
                if lo > pos and any(os.pread(fd, lo - pos, pos)):
                    problems.append(f"data at {pos}..{lo} outside the map")
                pos = max(pos, hi)
            if pos < end and any(os.pread(fd, end - pos, pos)):
                problems.append(f"data at {pos}..{end} outside the map")
    if output.get("size") != img.stat().st_size:
        problems.append(f"size {output.get('size')} != {img.stat().st_size}")
    return problems
