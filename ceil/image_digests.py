"""A sha256 per data range of a baked image (its block map, as `flash` writes it), computed from
the image's sources while the bake copies, instead of one sha256 over the whole file.

The whole-file digest cost followed the image's size, holes included (a 4 GiB image with 0.3 GiB
of data hashed 4 GiB of zeros); these cost only the data. The ranges that come unchanged from
the base image are the same in every bake of that base, so they are hashed once and remembered
(keyed by the base's identity and the window); a bake then hashes only the partitions it
rewrote: a few MiB of boot partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .flash.blockmap import ALIGN, MERGE_GAP, BlockMap, map_window
from .sparse import hash_window

Ranges = list[tuple[int, int, str]]  # (offset, length, sha256) in image offsets
FORMAT = 1  # of the manifest's "blockmap" and of the cache entries


@dataclass(frozen=True)
class Window:
    """fd[src:src+length] lands at image offset dst. `cache_key` names a window whose content
    never changes (a range of the cached base image); None: hash it every time."""
    fd: int
    src: int
    dst: int
    length: int
    cache_key: str | None = None


def digest_range(fd: int, offset: int, length: int, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of fd[offset:offset+length]; holes and bytes past the end of the file count as zeros
    (as the writer pads an image shorter than the card's range)."""
    h = hashlib.sha256()
    hash_window(h, fd, offset, length, progress)
    return h.hexdigest()


def window_ranges(w: Window, zones: Iterable[tuple[int, int]]) -> Ranges:
    shift = w.dst - w.src
    return [(off, n, digest_range(w.fd, off - shift, n))
            for off, n in map_window(w.fd, w.src, w.dst, w.length, zones, ALIGN, MERGE_GAP)]


class RangeCache:
    """Digests of base-image windows in one JSON file; a damaged or foreign file is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
            self.entries = data["windows"] if data.get("format") == FORMAT else {}
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}
        self.dirty = False
        # Roles baked side by side share one cache: the second to reach a window of the base
        # waits for the first's digests instead of hashing the same gigabytes beside it.
        self._lock = threading.Lock()
        self._window_locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> Ranges | None:
        got = self.entries.get(key)
        return [tuple(r) for r in got] if isinstance(got, list) else None

    def put(self, key: str, ranges: Ranges) -> None:
        with self._lock:  # not while save() serialises the entries in another thread
            self.entries[key] = [list(r) for r in ranges]
            self.dirty = True

    def get_or_compute(self, key: str, compute: Callable[[], Ranges]) -> Ranges:
        with self._lock:
            window_lock = self._window_locks.setdefault(key, threading.Lock())
        with window_lock:
            got = self.get(key)
            if got is None:
                got = compute()
                self.put(key, got)
            return got

    def save(self) -> None:
        """Best effort: the digests only save the next bake from hashing the base again, so a
        full or read-only cache folder is said and the bake goes on (it once failed the bake,
        telling the user to free room in out/, and left its temp file behind)."""
        with self._lock:
            if not self.dirty:
                return
            self.dirty = False
            text = json.dumps({"format": FORMAT, "windows": self.entries})
        tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.dirty = True  # the next save tries again
            from .ui import notice

            notice(f"the base image's range digests were not saved in {self.path.parent} ({e.strerror or e}):"
                   " the next bake hashes the base again")


def image_ranges(windows: list[Window], zones: list[tuple[int, int]], cache: RangeCache | None) -> Ranges:
    """The block map of the image the windows compose, each range with its sha256."""
    out: Ranges = []
    for w in windows:
        if cache and w.cache_key:
            key = f"{w.cache_key}:{w.src}:{w.length}:{ALIGN}:{MERGE_GAP}"
            out.extend(cache.get_or_compute(key, lambda w=w: window_ranges(w, zones)))
        else:
            out.extend(window_ranges(w, zones))
    return out


def manifest_entry(ranges: Ranges) -> dict:
    return {"format": FORMAT, "align": ALIGN, "ranges": [list(r) for r in ranges]}


def blockmap_from_manifest(entry: object, image_size: int) -> BlockMap | None:
    """The manifest's block map, or None when the manifest has none (made before per-range
    digests) or one this version cannot read."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    try:
        ranges = [(int(o), int(n), str(d)) for o, n, d in entry["ranges"]]
    except (KeyError, TypeError, ValueError):
        return None
    return BlockMap(image_size, tuple((o, n) for o, n, _ in ranges), tuple(d for *_, d in ranges))


def first_mismatch(fd: int, bmap: BlockMap, progress: Callable[[int], None] | None = None) -> tuple[int, int] | None:
    """The first range of `bmap` whose bytes in fd do not hash to the recorded digest, or None."""
    for (off, n), want in zip(bmap.ranges, bmap.digests):
        if digest_range(fd, off, n, progress) != want:
            return off, n
    return None
