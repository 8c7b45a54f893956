"""Sparse files: where the data is, and hole-preserving copies.

Disk images are mostly zeros. Copying only the allocated ranges (SEEK_DATA/SEEK_HOLE) is what
makes a per-role bake take seconds, and what lets `flash` write only the blocks that matter.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 8 * 1024 * 1024
# File systems without SEEK_DATA support report the whole file as data: still correct, just slower.


def data_ranges(fd: int, size: int | None = None, start: int = 0) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of every allocated range of an open file from `start` on, in order
    (the first may begin before `start`: the extent holding it)."""
    if size is None:
        size = os.fstat(fd).st_size
    pos = start
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size - pos
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, size)
        if end > start:
            yield start, end - start
        pos = end


def allocated_bytes(path: Path) -> int:
    """Bytes the file system has allocated for `path` (what `du` reports)."""
    return os.stat(path).st_blocks * 512


def _is_zero(buf: bytes | memoryview) -> bool:
    return not any(buf) if len(buf) < 64 else buf == bytes(len(buf))


def copy_sparse(src: Path, dst: Path, progress: Callable[[int], None] | None = None) -> None:
    """Copy `src` to `dst` preserving holes; `dst` is created (or truncated) with the same size.

    Tries a whole-file reflink first (instant on btrfs/XFS/APFS-like file systems), then copies
    each data range with copy_file_range (in-kernel, may itself reflink), then plain reads.
    """
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if reflink(fin.fileno(), fout.fileno()):
            if progress:
                progress(size)
            return
        fout.truncate(size)
        for offset, length in data_ranges(fin.fileno(), size):
            _copy_between(fin.fileno(), fout.fileno(), offset, offset, length, progress)
        fout.flush()
        os.fsync(fout.fileno())


def reflink(fin: int, fout: int) -> bool:
    """Make `fout` a clone of all of `fin` (FICLONE: btrfs, XFS with reflink; both files on one
    file system): instant, and no data block is shared until one side writes. False where the
    file system or platform cannot."""
    try:
        import fcntl

        FICLONE = 0x40049409  # linux/fs.h
        fcntl.ioctl(fout, FICLONE, fin)
        return True
    except (OSError, ImportError):
        return False


FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02


@functools.lru_cache(maxsize=1)
def _fallocate():
    """libc's fallocate(2), loaded once (a bake punches one hole per rewritten range)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc.fallocate


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate fd[offset:offset+length] (it then reads as zeros). False where unsupported."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    return _fallocate()(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0


def write_sparse(fout, chunk: bytes) -> None:
    """Append `chunk` to an open binary file, seeking over all-zero blocks to leave holes.

    The caller truncates the file to its final size at the end so a trailing hole is kept.
    """
    view = memoryview(chunk)
    block = 64 * 1024
    for i in range(0, len(view), block):
        part = view[i : i + block]
        if _is_zero(part):
            fout.seek(len(part), os.SEEK_CUR)
        else:
            fout.write(part)


def ranges_in(fd: int, start: int, length: int) -> Iterator[tuple[int, int]]:
    """Allocated ranges of `fd` clipped to [start, start+length)."""
    end = start + length
    size = os.fstat(fd).st_size
    # From `start`, not from the file's beginning: a window late in an image with many extents
    # (and a map checked range by range) would otherwise seek through every extent before it.
    for off, n in data_ranges(fd, min(size, end), start):
        lo, hi = max(off, start), min(off + n, end)
        if hi > lo:
            yield lo, hi - lo


def data_in(fd: int, start: int, length: int) -> int:
    """Bytes of data (not holes) in fd[start:start+length]: what copying that window writes."""
    return sum(n for _, n in ranges_in(fd, start, length))


def copy_window(fin: int, fout: int, src_off: int, dst_off: int, length: int,
                progress: Callable[[int], None] | None = None) -> None:
    """Copy the data of fin[src_off:src_off+length] to fout at dst_off; holes stay holes."""
    for off, n in ranges_in(fin, src_off, length):
        _copy_between(fin, fout, off, dst_off + (off - src_off), n, progress)


def _copy_between(fin: int, fout: int, src: int, dst: int, length: int,
                  progress: Callable[[int], None] | None = None) -> None:
    """fin[src:src+length] to fout at dst: in the kernel (copy_file_range, which may itself
    reflink) where it can; else (another file system, e.g. from tmpfs) by reads and writes that
    leave all-zero chunks as holes, since every caller writes into a fresh or punched range."""
    pos = 0
    use_cfr = hasattr(os, "copy_file_range")
    while pos < length:
        n = min(CHUNK, length - pos)
        if use_cfr:
            try:
                done = os.copy_file_range(fin, fout, n, src + pos, dst + pos)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                use_cfr = False
                continue
        else:
            buf = os.pread(fin, n, src + pos)
            done = len(buf)
            if not _is_zero(buf):
                view = memoryview(buf)
                while view:  # a short write (a disk filling up) raises on the next call
                    view = view[os.pwrite(fout, view, dst + pos + (done - len(view))):]
        if done == 0:
            raise OSError(errno.EIO, f"short copy at offset {src + pos}")
        pos += done
        if progress:
            progress(done)


_ZEROS = bytes(CHUNK)


def hash_window(h, fd: int, start: int, length: int, progress: Callable[[int], None] | None = None) -> None:
    """Feed fd[start:start+length] to hash object `h`, reading only data ranges (holes, and what
    lies past the end of the file, are zeros)."""
    pos, end = start, start + length
    for off, n in ranges_in(fd, start, length):
        _feed_zeros(h, off - pos, progress)
        for i in range(off, off + n, CHUNK):
            chunk = os.pread(fd, min(CHUNK, off + n - i), i)
            h.update(chunk)
            if progress:
                progress(len(chunk))
        pos = off + n
    _feed_zeros(h, end - pos, progress)


def _feed_zeros(h, n: int, progress: Callable[[int], None] | None = None) -> None:
    view = memoryview(_ZEROS)
    while n > 0:
        k = min(n, CHUNK)
        h.update(view[:k])
        if progress:
            progress(k)
        n -= k
