#!/usr/bin/env python3
"""Benchmark: bake every role of the example cluster from a cached multi-GiB sparse base, and
compare with `cp --sparse=always` of the same base once per role, measured in the same run.

Prints both times and their ratio (target: at most 1.5x). The base is synthetic: an image in the
Ubuntu flavor's layout with `--data-mib` of incompressible data in the root partition. Two shapes
are measured by default: one shaped like a preinstalled Ubuntu raspi image (about 3.5 GiB with
2.5 GiB of data; our assumption, not a measured image) and a hole-heavy one (4 GiB, 1.5 GiB of
data). The output's sha256 covers the whole file, holes included, so hole-heavy bases cost
relatively more: the hash runs in a second thread while the kernel copies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ceil.catalog import load_flavor  # noqa: E402
from tests.imagefactory import make_base_image  # noqa: E402

MiB = 1 << 20


def build_base(path: Path, total_mib: int, data_mib: int) -> None:
    flavor = load_flavor("ubuntu-24.04-raspi")
    make_base_image(path, flavor, boot_mib=512, total_mib=total_mib)  # Ubuntu: 512 MiB FAT32
    # Incompressible data well inside the root partition (the ext4 superblock stays intact).
    with open(path, "r+b") as f:
        f.seek(700 * MiB)
        block = os.urandom(4 * MiB)
        for _ in range(data_mib // 4):
            f.write(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total-mib", type=int, help="one shape only: image size")
    ap.add_argument("--data-mib", type=int, help="one shape only: data inside it")
    args = ap.parse_args()
    shapes = [(args.total_mib, args.data_mib)] if args.total_mib else [(3584, 2560), (4096, 1536)]
    for total, data in shapes:
        measure(total, data)


def measure(total_mib: int, data_mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ceil-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        d = Path(d)
        base = d / "base.img"
        build_base(base, total_mib, data_mib)
        key = d / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        cfg = (REPO / "cluster.example.yaml").read_text().replace(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly you@workstation",
            (d / "id.pub").read_text().strip(),
        )
        (d / "cluster.yaml").write_text(cfg)
        env = {**os.environ, "CEIL_CACHE": str(d / "cache"), "CEIL_WIFI_PSK": "benchmark-psk"}
        roles = ["router", "one", "two", "three", "four"]
        # Warm-up: hashes the base once into the digest cache, as any earlier bake would have.
        subprocess.run([sys.executable, str(REPO / "bake.py"), "--role", "router", "--base-image", str(base),
                        "--out", str(d / "warm")], cwd=d, env=env, check=True, capture_output=True)
        shutil.rmtree(d / "warm")

        t0 = time.monotonic()
        for i, _ in enumerate(roles):
            subprocess.run(["cp", "--sparse=always", str(base), str(d / f"cp-{i}.img")], check=True)
        cp_time = time.monotonic() - t0
        for i, _ in enumerate(roles):
            (d / f"cp-{i}.img").unlink()

        t0 = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "bake.py"), "--all", "--base-image", str(base), "--out", str(d / "out")],
                       cwd=d, env=env, check=True, capture_output=True)
        bake_time = time.monotonic() - t0

    print(f"base: {total_mib} MiB sparse image with {data_mib} MiB of data; {len(roles)} roles")
    print(f"cp --sparse=always x{len(roles)}: {cp_time:6.2f} s")
    print(f"bake.py --all          : {bake_time:6.2f} s  (includes the sha256 of every output image)")
    print(f"ratio bake / cp        : {bake_time / cp_time:6.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
