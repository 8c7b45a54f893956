"""Benchmark: flash a typical sparse image (block map) versus writing the whole image.

    python bench/flash.py                    # file target in a temporary directory
    sudo python bench/flash.py --loop        # a loop device over that file (real block I/O)
    python bench/flash.py --size-gib 4 --data-mib 300 --dir /var/tmp

Both runs use the same writer (8 MiB writes, O_DIRECT where possible, fsync at the end); only
the map differs, so the ratio is what the block map buys. `dd` (bs=4M, oflag=direct) is timed
too when available, as a sanity check that the full-copy baseline is not a straw man.
Each measurement is repeated (--repeat, default 2, interleaved) and the best is used for
the ratio; every run's time is printed too, since shared virtual disks are noisy.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ceil.flash.blockmap import BlockMap, build_blockmap  # noqa: E402
from ceil.flash.device import human_size  # noqa: E402
from ceil.flash.writer import Target, verify_ranges, write_ranges  # noqa: E402

MiB = 1024 * 1024


def build_image(path: Path, size: int, data: int, seed: int = 8) -> None:
    """A Pi-like image: MBR, a 512 MiB FAT with firmware and kernel up front, an ext4 root whose
    files cluster early (as in a freshly built root file system) with some spread later."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        mbr = bytearray(512)
        mbr[446 + 4], mbr[446 + 8:446 + 12], mbr[446 + 12:446 + 16] = 0x0C, (8192).to_bytes(4, "little"), (1048576).to_bytes(4, "little")
        mbr[462 + 4], mbr[462 + 8:462 + 12] = 0x83, (1056768).to_bytes(4, "little")
        mbr[462 + 12:462 + 16] = (size // 512 - 1056768).to_bytes(4, "little")
        mbr[510:512] = b"\x55\xaa"
        f.write(mbr)
        blob = rng.randbytes(4 * MiB)
        remaining, fat_left = data, min(data // 6, 80 * MiB)
        pos = 4 * MiB  # FAT: one contiguous run of firmware, kernels, overlays
        while fat_left > 0:
            n = min(fat_left, 4 * MiB)
            f.seek(pos)
            f.write(blob[:n])
            pos, fat_left, remaining = pos + n, fat_left - n, remaining - n
        root = 516 * MiB
        while remaining > 0:
            n = min(remaining, rng.choice([64 * 1024, 256 * 1024, MiB, 2 * MiB, 4 * MiB]))
            # 80% of root data in the first fifth of the partition, the rest anywhere.
            span = (size - root) // 5 if rng.random() < 0.8 else size - root - n
            off = root + rng.randrange(0, span // 4096) * 4096
            f.seek(off)
            f.write(blob[rng.randrange(0, 2 * MiB):][:n] or blob[:n])
            remaining -= n
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def target_device(backing: Path, size: int, loop: bool):
    # Every block written once up front, as on a used card: otherwise whichever run touches a
    # block first pays the file system's allocation (unwritten-extent conversion) for it.
    block = b"\xa5" * (8 * MiB)
    with open(backing, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.truncate(size)
        os.fsync(f.fileno())
    if not loop:
        yield str(backing)
        return
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def timed_write(image: Path, target: str, bmap: BlockMap, verify: bool) -> tuple[float, float]:
    with Target(target) as t:
        result = write_ranges(str(image), t, bmap)
        v = verify_ranges(t, result) if verify else None
    if v and v.bad:
        raise SystemExit(f"verification failed: {v.bad[:3]}")
    return result.seconds, (v.seconds if v else 0.0)


def timed_dd(image: Path, target: str) -> float | None:
    if not shutil.which("dd"):
        return None
    start = time.monotonic()
    subprocess.run(["dd", f"if={image}", f"of={target}", "bs=4M", "oflag=direct",
                    "conv=fsync,notrunc", "status=none"], check=True)
    return time.monotonic() - start


def line(label: str, nbytes: int, seconds: float) -> str:
    return (f"{label:<28} {human_size(nbytes):>10} in {seconds:7.2f} s "
            f"({human_size(nbytes / seconds if seconds else 0)}/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--data-mib", type=int, default=300)
    ap.add_argument("--dir", default=None, help="where to put the image and target")
    ap.add_argument("--loop", action="store_true", help="write through a loop device (root)")
    ap.add_argument("--no-dd", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    args = ap.parse_args()
    size = int(args.size_gib * 1024) * MiB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ceil-bench-") as tmp:
        image, backing = Path(tmp) / "typical.img", Path(tmp) / "card.bin"
        build_image(image, size, args.data_mib * MiB)
        with open(image, "rb") as f:
            bmap = build_blockmap(f.fileno(), size)
        print(f"image {human_size(size)}, {human_size(os.stat(image).st_blocks * 512)} allocated,"
              f" block map {human_size(bmap.mapped_bytes)} in {len(bmap.ranges)} ranges;"
              f" target: {'loop device' if args.loop else 'file'} on {tmp}")
        samples: dict[str, list[float]] = {"map": [], "verify": [], "full": [], "dd": []}
        with target_device(backing, size, args.loop) as target:
            # Interleaved and repeated: a shared virtual disk's background flushing otherwise
            # lands on whichever run happens to come first.
            for _ in range(args.repeat):
                full_w, _v = timed_write(image, target, BlockMap(size, ((0, size),)), False)
                samples["full"].append(full_w)
                mapped_w, mapped_v = timed_write(image, target, bmap, verify=True)
                samples["map"].append(mapped_w)
                samples["verify"].append(mapped_v)
                dd = None if args.no_dd else timed_dd(image, target)
                if dd is not None:
                    samples["dd"].append(dd)
        report(samples, bmap, size)


def report(samples: dict[str, list[float]], bmap: BlockMap, size: int) -> None:
    best = {k: min(v) for k, v in samples.items() if v}
    runs = {k: ", ".join(f"{x:.2f}" for x in v) for k, v in samples.items() if v}
    print(line("block map: write", bmap.mapped_bytes, best["map"]) + f"   runs: {runs['map']}")
    print(line("block map: verify", bmap.mapped_bytes, best["verify"])
          + f"   runs: {runs['verify']}")
    print(line("whole image: write", size, best["full"]) + f"   runs: {runs['full']}")
    if "dd" in best:
        print(line("dd bs=4M oflag=direct", size, best["dd"]) + f"   runs: {runs['dd']}")
    print(f"ratio (whole / block map, best of {len(samples['full'])}): "
          f"bytes {size / bmap.mapped_bytes:.1f}x, write time {best['full'] / best['map']:.1f}x, "
          f"block-map write+verify vs whole write {best['full'] / (best['map'] + best['verify']):.1f}x")
    if "dd" in best:
        print(f"ratio vs dd of the whole image: write time {best['dd'] / best['map']:.1f}x, "
              f"block-map write+verify {best['dd'] / (best['map'] + best['verify']):.1f}x")

if __name__ == "__main__":
    main()
