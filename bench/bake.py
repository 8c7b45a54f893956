#!/usr/bin/env python3
"""Benchmark: bake every role of the example cluster from a cached multi-GiB sparse base, and
compare with `cp --sparse=always` of the same base once per role, measured in the same run.

Prints both times and their ratio (target: at most 1.2x), and the bake's time with `--jobs 1` (one
image after another) split into its parts. The base is synthetic: an image in the Ubuntu flavor's
layout with `--data-mib` of incompressible data in the root partition, its zero blocks holes as
in the bake's image cache. Three
shapes are measured by default: one shaped like a preinstalled Ubuntu raspi image (about 3.5 GiB
with 2.5 GiB of data; our assumption, not a measured image), a hole-heavy one (4 GiB, 1.5 GiB of
data) and a very hole-heavy one (2.5 GiB, 0.3 GiB). The manifest holds a sha256 per data range,
so the bake's digests cost follows the data, not the size; the base's digests are remembered
from the warm-up bake, as from any earlier bake of that base. Each shape is timed in rounds
(five by default), each run after a sync and the order turning, and the medians compared:
without the sync the second of two paid the first's writeback.

Then, where this machine can loop-mount an XFS with reflinks (root and xfsprogs), the first shape
again with the base and the output on it: the bake clones the base (target: at most 1 s per
role).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ceil.catalog import load_flavor  # noqa: E402
from ceil.sparse import write_sparse  # noqa: E402
from tests.imagefactory import make_base_image  # noqa: E402

MiB = 1 << 20


def build_base(path: Path, total_mib: int, data_mib: int) -> None:
    # Ubuntu: 512 MiB FAT32; the data is a file in the ext4 root, so the file system stays valid.
    built = path.with_suffix(".built.img")
    make_base_image(built, load_flavor("ubuntu-24.04-raspi"), boot_mib=512, total_mib=total_mib, filler_mib=data_mib)
    shutil.rmtree(path.parent / f"{built.stem}-rootfs", ignore_errors=True)
    cache_like_fetch(built, path)
    built.unlink()


def cache_like_fetch(src: Path, dst: Path) -> None:
    """dst as the bake's image cache holds a downloaded base (fetch.decompress_to_cache): its
    all-zero blocks are holes. mkfs and sfdisk leave some 30 MiB of written zeros in the synthetic
    image, which `cp --sparse=always` turns into holes and the bake, copying allocated ranges as
    they are, wrote: the floor then copied 10 % less than the bake had to, which a fetched base
    never asks of it."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(8 * MiB):
            write_sparse(fout, chunk)
        fout.truncate(src.stat().st_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total-mib", type=int, help="one shape only: image size")
    ap.add_argument("--data-mib", type=int, help="one shape only: data inside it")
    ap.add_argument("--no-reflinks", action="store_true", help="skip the measurement on XFS with reflinks")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each (the medians are compared; with 3, one slow round of cp on the hole-heavy shape moved the median by 2x)")
    args = ap.parse_args()
    shapes = [(args.total_mib, args.data_mib)] if args.total_mib else [(3584, 2560), (4096, 1536), (2560, 300)]
    for total, data in shapes:
        measure(total, data, rounds=args.rounds)
    if not args.no_reflinks:
        measure_on_reflinks(*shapes[0], rounds=args.rounds)


def measure_on_reflinks(total_mib: int, data_mib: int, rounds: int) -> None:
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        print("reflinks: skipped (needs root and mkfs.xfs to loop-mount an XFS)")
        return
    with tempfile.TemporaryDirectory(prefix="ceil-bench-xfs-", dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        backing, mnt = Path(d) / "xfs.img", Path(d) / "mnt"
        with open(backing, "wb") as f:
            f.truncate((total_mib * 3 + 2048) * MiB)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)], check=True)
        mnt.mkdir()
        if subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)]).returncode != 0:
            print("reflinks: skipped (loop mount refused)")
            return
        try:
            print("on XFS with reflinks:")
            measure(total_mib, data_mib, where=mnt, cp_flags=["--reflink=always"], rounds=rounds)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


def measure(total_mib: int, data_mib: int, where: str | None = None, cp_flags: list[str] | None = None,
            rounds: int = 5) -> None:
    cp_flags = cp_flags or ["--sparse=always"]
    with tempfile.TemporaryDirectory(prefix="ceil-bench-", dir=where or os.environ.get("TMPDIR", "/var/tmp")) as d:
        d = Path(d)
        base = d / "base.img"
        build_base(base, total_mib, data_mib)
        key = d / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        # The example's placeholder key, whatever it is today, becomes this run's key.
        cfg = re.sub(r"ssh-ed25519 \S+ \S+", (d / "id.pub").read_text().strip(),
                     (REPO / "cluster.example.yaml").read_text(), count=1)
        (d / "cluster.yaml").write_text(cfg)
        env = {**os.environ, "CEIL_CACHE": str(d / "cache"), "CEIL_WIFI_PSK": "benchmark-psk"}
        # As a user runs it: Python keeps compiled bytecode between runs (some CI machines turn
        # that off, which made every bake compile 80 modules again: 0.06 s of each run).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        roles = ["router", "one", "two", "three", "four"]
        # Warm-up: hashes the base once into the digest cache, as any earlier bake would have.
        subprocess.run([sys.executable, str(REPO / "bake.py"), "--role", "router", "--base-image", str(base), "--any-base-image",
                        "--out", str(d / "warm")], cwd=d, env=env, check=True, capture_output=True)
        shutil.rmtree(d / "warm")

        def copy_floor() -> float:
            t0 = time.monotonic()
            for i, _ in enumerate(roles):
                subprocess.run(["cp", *cp_flags, str(base), str(d / f"cp-{i}.img")], check=True)
            took = time.monotonic() - t0
            for i, _ in enumerate(roles):
                (d / f"cp-{i}.img").unlink()
            return took

        writing: list[float] = []  # per round of --jobs 1: the bake's compose_image steps, summed

        def bake_all(*jobs: str) -> float:
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, str(REPO / "bake.py"), "--all", *jobs, "--base-image", str(base),
                                   "--any-base-image", "--out", str(d / "out")],
                                  cwd=d, env={**env, "COLUMNS": "300"}, check=True, capture_output=True, text=True)
            took = time.monotonic() - t0
            shutil.rmtree(d / "out")
            if jobs:  # one image after another: the compose steps' times add up to the writing
                writing.append(sum(map(float, re.findall(r"compose_image .*\(([\d.]+)s\)", done.stdout + done.stderr))))
            return took

        def process_start() -> float:  # the interpreter and the bake's imports, nothing baked
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", "import ceil.cli, ceil.bakery"], cwd=REPO, env=env, check=True)
            return time.monotonic() - t0

        # Each timed run starts with nothing dirty in the page cache (sync, untimed): otherwise the
        # second of two pays the writeback of the first's gigabytes, and the ratio swung from 0.5x
        # to 1.8x between runs of the same code. The order turns between rounds. The bake runs as
        # a user runs it (images written side by side) and with --jobs 1, whose steps, one after
        # another, split its time.
        runs = [(copy_floor, []), (bake_all, []), (lambda: bake_all("--jobs", "1"), [])]
        for r in range(rounds):
            for run, times in runs[r % 3:] + runs[:r % 3]:
                os.sync()
                times.append(run())
        (_, cp_times), (_, bake_times), (_, serial_times) = runs
        cp_time, bake_time, serial_time = map(statistics.median, (cp_times, bake_times, serial_times))
        write_time, start_time = statistics.median(writing), statistics.median(process_start() for _ in range(rounds))

    print(f"base: {total_mib} MiB sparse image with {data_mib} MiB of data; {len(roles)} roles")
    print(f"rounds: {rounds} (each after a sync, order turning); cp / bake / bake --jobs 1 per round: "
          + ", ".join(f"{c:.2f} / {b:.2f} / {j:.2f} s" for c, b, j in zip(cp_times, bake_times, serial_times)))
    print(f"cp {' '.join(cp_flags)} x{len(roles)}: {cp_time:6.2f} s  (median)")
    print(f"bake.py --all          : {bake_time:6.2f} s  (median; {bake_time / len(roles):.2f} s per role,"
          " with a sha256 per data range of every output; images written side by side)")
    print(f"bake.py --all --jobs 1 : {serial_time:6.2f} s  (median; one image after another)")
    # Where the time of the bake with --jobs 1 goes: writing the images is the part the copy
    # floor measures; the rest is a fixed cost per run and per role (Python and the imports,
    # cluster.yaml, the payload, the boot partition's files), which the copy floor of an image
    # with little data does not cover. Side by side, the roles' own work and their copies overlap.
    rest = serial_time - write_time - start_time
    print(f"  writing the images   : {write_time:6.2f} s  (median of --jobs 1's compose_image steps:"
          f" {write_time / cp_time:.2f}x the copy floor)")
    print(f"  process start        : {start_time:6.2f} s  (Python and the bake's imports, once per run)")
    print(f"  the rest             : {rest:6.2f} s  ({rest / len(roles):.2f} s per role: cluster.yaml,"
          " secrets, payload, boot partition)")
    if "--reflink=always" in cp_flags:  # a clone costs nothing: the target is absolute
        print(f"per role               : {bake_time / len(roles):6.2f} s  (target <= 1 s)")
    else:
        print(f"ratio bake / cp        : {bake_time / cp_time:6.2f}x  (target <= 1.2x; --jobs 1:"
              f" {serial_time / cp_time:.2f}x)")


if __name__ == "__main__":
    main()
