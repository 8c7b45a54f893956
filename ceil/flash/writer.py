"""Write the mapped ranges of an image to a disk (or file), then read them back and compare.

Writes bypass the page cache where the platform allows (Linux O_DIRECT, macOS F_NOCACHE on the
raw node): the progress bar then shows what reached the card, not what reached memory, and the
read-back compares the card's contents rather than cached copies of what we just wrote.
Buffers come from mmap, so they are page aligned as O_DIRECT requires.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ceil.errors import CeilError
from ceil.flash.blockmap import BlockMap

CHUNK = 8 * 1024 * 1024
IO_ALIGN = 4096  # covers 512- and 4096-byte logical sectors
Progress = Callable[[int], None]


class VerifyError(CeilError):
    """The card does not hold what was written."""


@dataclass
class WriteResult:
    ranges: list[tuple[int, int, str]]  # (offset, length, sha256 of the image bytes)
    written: int
    seconds: float
    direct: bool


@dataclass
class VerifyResult:
    checked: int
    seconds: float
    bad: list[tuple[int, int]] = field(default_factory=list)


def _open_error(path: str, e: OSError) -> CeilError:
    if e.errno in (errno.EACCES, errno.EPERM):
        return CeilError(f"cannot open {path} for writing: permission denied. Writing a disk "
                         "needs root: run the same command with sudo.")
    if e.errno == errno.EBUSY:
        return CeilError(f"{path} is busy: a partition is mounted or another program has it "
                         "open. Unmount it (--unmount) or close that program, then retry.")
    return CeilError(f"cannot open {path}: {e.strerror or e}")


class Target:
    """An open disk or file: `fd` bypasses the cache when possible, `_buffered` (opened lazily)
    takes the pieces that are not IO_ALIGN-aligned."""

    def __init__(self, path: str, raw_path: str | None = None,
                 devnum: tuple[int, int] | None = None, direct: bool = True) -> None:
        self.path = path
        self.raw_path = raw_path or path
        self._buffered: int | None = None
        self.fd, self.direct = self._open_direct(direct)
        self.is_block = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        if devnum is not None and self.is_block:
            self._check_devnum(devnum)

    def _open_direct(self, want: bool) -> tuple[int, bool]:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if sys.platform.startswith("linux") and _is_block_path(self.raw_path):
            flags |= os.O_EXCL  # Linux: fails with EBUSY while any partition is mounted
        if want and hasattr(os, "O_DIRECT"):
            try:
                return os.open(self.raw_path, flags | os.O_DIRECT), True
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: this file system has no O_DIRECT
                    raise _open_error(self.raw_path, e) from e
        try:
            fd = os.open(self.raw_path, flags)
        except OSError as e:
            raise _open_error(self.raw_path, e) from e
        return fd, want and _nocache(fd)

    def _check_devnum(self, devnum: tuple[int, int]) -> None:
        rdev = os.fstat(self.fd).st_rdev
        if (os.major(rdev), os.minor(rdev)) != tuple(devnum):
            self.close()
            raise CeilError(f"{self.path} changed since it was checked (device number "
                            f"{os.major(rdev)}:{os.minor(rdev)}, expected {devnum[0]}:{devnum[1]}):"
                            " was the card swapped? Run the command again.")

    def _buffered_fd(self) -> int:
        if self._buffered is None:
            self._buffered = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        return self._buffered

    def write(self, view: memoryview, offset: int) -> None:
        n = len(view)
        cut = n - n % IO_ALIGN if self.direct and offset % IO_ALIGN == 0 else 0
        if cut:
            try:
                _write_all(self.fd, view[:cut], offset)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False  # device refuses direct I/O of this shape: go buffered
                cut = 0
        if cut < n:
            _write_all(self._buffered_fd(), view[cut:], offset + cut)

    def read(self, view: memoryview, offset: int) -> None:
        n = len(view)
        cut = n - n % IO_ALIGN if self.direct and offset % IO_ALIGN == 0 else 0
        if cut:
            _read_all(self.fd, view[:cut], offset)
        if cut < n:
            _read_all(self._buffered_fd(), view[cut:], offset + cut)

    def sync(self) -> None:
        for fd in (self._buffered, self.fd):
            if fd is not None:
                os.fsync(fd)

    def drop_cache(self) -> None:
        """Make the read-back come from the medium: evict cached pages of what we wrote."""
        for fd in (self._buffered, self.fd):
            if fd is not None and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if self.is_block and sys.platform.startswith("linux"):
            try:
                import fcntl

                fcntl.ioctl(self.fd, 0x1261)  # BLKFLSBUF: flush the block device's buffers
            except OSError:
                pass  # best effort: O_DIRECT reads bypass the cache anyway

    def reread_partitions(self) -> bool:
        """Linux: have the kernel pick up the new partition table, so /dev/sdX1.. match the
        image when the card stays attached (--no-eject). Best effort."""
        if not (self.is_block and sys.platform.startswith("linux")):
            return False
        try:
            import fcntl

            fcntl.ioctl(self.fd, 0x125F)  # BLKRRPART
            return True
        except OSError:
            return False  # loop devices without partscan, or a partition still held open

    def close(self) -> None:
        for fd in (self._buffered, self.fd):
            if fd is not None:
                os.close(fd)
        self._buffered = None

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_block_path(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _nocache(fd: int) -> bool:
    """macOS: F_NOCACHE is the per-descriptor equivalent of O_DIRECT."""
    if sys.platform != "darwin":
        return False
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_NOCACHE", 48), 1)
        return True
    except OSError:
        return False


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        os.lseek(fd, offset, os.SEEK_SET)
        done = os.write(fd, view)
        if done <= 0:
            raise OSError(errno.EIO, f"short write at offset {offset}")
        view, offset = view[done:], offset + done


def _read_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        os.lseek(fd, offset, os.SEEK_SET)
        done = os.readv(fd, [view])
        if done <= 0:
            raise OSError(errno.EIO, f"unexpected end of data at offset {offset}")
        view, offset = view[done:], offset + done


def _chunks(offset: int, length: int):
    end = offset + length
    while offset < end:
        n = min(CHUNK, end - offset)
        yield offset, n
        offset += n


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def write_ranges(image_path: str, target: Target, bmap: BlockMap,
                 progress: Progress = lambda n: None,
                 identity: tuple[int, int, int, int] | None = None) -> WriteResult:
    """Copy every mapped range from the image to the target; hash what was written; fsync.
    With `identity` (file_identity when the image was checked and mapped), a file replaced or
    changed under that name since is refused before a byte is written: an image without per-range
    digests would otherwise be written by the old file's map and "verified" against itself.

    Each chunk is hashed on a second thread while it is being written (hashlib and os.write
    both release the GIL), so hashing costs no wall time on any card slower than sha256."""
    start = time.monotonic()
    buf = mmap.mmap(-1, CHUNK)
    results = []
    with open(image_path, "rb") as img, ThreadPoolExecutor(1) as hasher:
        if identity is not None and file_identity(os.fstat(img.fileno())) != identity:
            raise CeilError(f"{image_path} was replaced or changed since it was checked: nothing was"
                            " written; flash it again once nothing is writing it (a bake?)")
        for i, (offset, length) in enumerate(bmap.ranges):
            digest = hashlib.sha256()
            for pos, n in _chunks(offset, length):
                view = memoryview(buf)[:n]
                _read_all(img.fileno(), view, pos)
                hashed = hasher.submit(digest.update, view)
                try:
                    target.write(view, pos)
                except OSError as e:
                    raise CeilError(f"writing {target.path} failed at byte {pos}: "
                                    f"{e.strerror or e}. The card may be failing or was "
                                    "removed; nothing after this point was written.") from e
                finally:
                    hashed.result()
                progress(n)
                view.release()
            results.append((offset, length, digest.hexdigest()))
            if bmap.digests and bmap.digests[i] != results[-1][2]:
                raise CeilError(f"{image_path} changed while it was being written (the range at byte"
                                f" {offset:,} no longer matches its manifest): flash it again.")
    try:
        target.sync()
    except OSError as e:
        raise CeilError(f"writing {target.path} could not be finished (flushing it failed: {e.strerror or e}):"
                        " the card holds a partial image and will not boot; it may be failing or was"
                        " removed. Flash it again, or use another card.") from e
    return WriteResult(results, bmap.mapped_bytes, time.monotonic() - start, target.direct)


def verify_ranges(target: Target, written: WriteResult,
                  progress: Progress = lambda n: None) -> VerifyResult:
    """Read every written range back from the medium and compare its sha256 with the image's.

    Two buffers: the next chunk is read from the card while the previous one is hashed."""
    start = time.monotonic()
    target.drop_cache()
    bufs = (mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK))
    bad = []
    with ThreadPoolExecutor(1) as hasher:
        for offset, length, expected in written.ranges:
            digest, hashed = hashlib.sha256(), None
            for i, (pos, n) in enumerate(_chunks(offset, length)):
                view = memoryview(bufs[i % 2])[:n]
                target.read(view, pos)
                if hashed:
                    hashed.result()
                hashed = hasher.submit(digest.update, view)
                progress(n)
            if hashed:
                hashed.result()
            if digest.hexdigest() != expected:
                bad.append((offset, length))
    return VerifyResult(written.written, time.monotonic() - start, bad)


def first_difference(image_path: str, target: Target, offset: int, length: int) -> int | None:
    """The first differing byte in a range that failed verification (for the error message)."""
    a, b = mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK)
    with open(image_path, "rb") as img:
        for pos, n in _chunks(offset, length):
            va, vb = memoryview(a)[:n], memoryview(b)[:n]
            _read_all(img.fileno(), va, pos)
            target.read(vb, pos)
            if va != vb:
                return pos + _first_mismatch(bytes(va), bytes(vb))
    return None


def _first_mismatch(x: bytes, y: bytes) -> int:
    step = 4096  # narrow down by block first: a byte loop over 8 MiB is slow in Python
    block = next(i for i in range(0, len(x), step) if x[i:i + step] != y[i:i + step])
    return next(i for i in range(block, block + step) if x[i] != y[i])
