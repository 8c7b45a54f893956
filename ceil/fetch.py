"""Base images: download, verify, decompress once into a content-addressed sparse cache.

Downloads go to a temporary name, resume with HTTP Range after an interruption, and are
renamed into the cache under their sha256 only after the digest matched. Decompressed images
are cached as sparse files keyed by that digest, so a second bake downloads and decompresses
nothing. The cached base is never modified: every bake works on a copy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .catalog import Flavor
from .errors import CeilError
from .sparse import write_sparse
from .ui import byte_progress

if TYPE_CHECKING:  # imported where a download happens: a bake from --base-image never loads it
    import requests

CHUNK = 4 * 1024 * 1024
TIMEOUT = 30


def cache_root() -> Path:
    return Path(os.environ.get("CEIL_CACHE", "~/.cache/ceil")).expanduser()


@dataclass(frozen=True)
class BaseImage:
    path: Path  # raw, sparse, read-only by convention
    sha256: str  # digest of the file as published or given (compressed, if it was)
    source: str  # URL or local path


# ---- digests ----------------------------------------------------------------------------


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of a local file, remembered by (path, size, mtime, inode) so big bases hash once."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo_file = cache_root() / "digests.json"
    memo = {}
    if memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except ValueError:
            memo = {}
    if key not in memo:
        with byte_progress(f"sha256 {path.name}", st.st_size) as advance:
            memo[key] = sha256_file(path, advance)
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, memo_file)
    return memo[key]


def expected_digest(flavor: Flavor, session: requests.Session) -> str:
    import requests

    if flavor.sha256:
        return flavor.sha256
    assert flavor.checksum_url and flavor.url
    try:
        r = session.get(flavor.checksum_url, timeout=TIMEOUT)
        r.raise_for_status()
    except requests.RequestException as e:
        raise CeilError(f"could not fetch the checksum file {flavor.checksum_url}: {e}") from None
    return parse_checksum_file(r.text, filename_of(flavor.url), flavor.checksum_url)


def parse_checksum_file(text: str, filename: str, source: str) -> str:
    """Find `filename`'s digest in a sha256sum-style file ("<hex>  [*]name" lines)."""
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$", line.strip())
        if m and (m.group(2) == filename or m.group(2).endswith("/" + filename)):
            return m.group(1).lower()
    single = re.fullmatch(r"\s*([0-9a-fA-F]{64})\s*", text)
    if single:
        return single.group(1).lower()
    raise CeilError(f"{source} lists no sha256 for {filename}: the flavor file's url or checksum_url is stale")


def filename_of(url: str) -> str:
    return Path(urlparse(url).path).name


# ---- download -----------------------------------------------------------------------------


def download(urls: str | list[str], digest: str, session: requests.Session | None = None) -> Path:
    """Download the file with sha256 `digest` into the cache as downloads/<digest>, from the first
    of `urls` that serves it whole with those bytes; resume a partial download. A place that
    fails or serves other bytes is passed over for the next (the digest decides, not the place)."""
    import requests

    urls = [urls] if isinstance(urls, str) else list(urls)
    session = session or requests.Session()
    dl_dir = cache_root() / "downloads"
    dl_dir.mkdir(parents=True, exist_ok=True)
    final = dl_dir / f"{digest}{''.join(Path(filename_of(urls[0])).suffixes[-2:])}"
    if final.is_file():
        return final
    part = dl_dir / f"{digest}.part"
    failures = []
    for url in urls:
        try:
            _fetch_resuming(url, part, session)
        except CeilError as e:
            failures.append(str(e))
            continue
        got = sha256_file(part)
        if got == digest:
            os.replace(part, final)
            return final
        part.unlink()
        failures.append(f"checksum mismatch for {url}: expected sha256 {digest}, got {got}; the download was"
                        " deleted")
    where = failures[0] if len(failures) == 1 else "every place failed:\n  " + "\n  ".join(failures)
    hint = (f" The partial file is kept in {part}; run the same command again to resume." if part.exists() else
            " Try again; if it repeats, the mirror or the flavor file is wrong.")
    raise CeilError(where + hint)


def _fetch_resuming(url: str, part: Path, session: requests.Session) -> None:
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
            if r.status_code == 416:  # already complete
                return
            r.raise_for_status()
            if have and r.status_code != 206:
                have = 0  # server ignored Range: start over
            total = int(r.headers.get("Content-Length", 0)) + have or None
            with open(part, "ab" if have else "wb") as f, byte_progress(
                f"download {filename_of(url)}", total
            ) as advance:
                advance(have)
                # Small reads: what arrived before a cut is on disk and the next run resumes from it.
                for chunk in r.iter_content(256 * 1024):
                    f.write(chunk)
                    advance(len(chunk))
    except requests.RequestException as e:
        raise CeilError(f"download of {url} failed: {e}.") from None


# ---- decompress -------------------------------------------------------------------------


def compression_of(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".xz", "xz"), (".zip", "zip"), (".gz", "gz")):
        if name.endswith(suffix):
            return kind
    return "none"


def decompress_to_cache(src: Path, digest: str, kind: str) -> Path:
    """Decompress `src` once into images/<digest>.img as a sparse file (zero blocks are holes)."""
    img_dir = cache_root() / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    final = img_dir / f"{digest}.img"
    if final.is_file():
        return final
    tmp = img_dir / f"{digest}.img.tmp"
    try:
        with _open_decompressed(src, kind) as fin, open(tmp, "wb") as fout, byte_progress(
            f"decompress {src.name}", src.stat().st_size
        ) as advance:
            last = 0
            while chunk := fin.read(CHUNK):
                write_sparse(fout, chunk)
                pos = _compressed_pos(fin)
                if pos is not None:
                    advance(pos - last)
                    last = pos
            fout.truncate(fout.tell())
            fout.flush()
            os.fsync(fout.fileno())
    except (lzma.LZMAError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise CeilError(f"{src} is not a valid {kind} file ({e}): re-download it or check the path") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return final


def _open_decompressed(src: Path, kind: str):
    if kind == "xz":
        return lzma.open(src, "rb")
    if kind == "gz":
        return gzip.open(src, "rb")
    if kind == "zip":
        zf = zipfile.ZipFile(src)
        members = [m for m in zf.namelist() if m.lower().endswith(".img")]
        if len(members) != 1:
            raise CeilError(f"{src}: expected exactly one .img inside the zip, found {members or 'none'}")
        return zf.open(members[0])
    raise ValueError(kind)


def _compressed_pos(fin) -> int | None:
    raw = getattr(fin, "_fp", None) or getattr(getattr(fin, "_buffer", None), "raw", None)
    try:
        return raw.tell() if raw is not None else None
    except (OSError, AttributeError, ValueError):
        return None


# ---- the one entry point ----------------------------------------------------------------


def resolve_base(flavor: Flavor, base_image: Path | None = None, any_base: bool = False) -> BaseImage:
    """The raw base image for a bake: a local file (--base-image) or the flavor's download. A local
    file must be the flavor's pinned download (its sha256) unless `any_base` says otherwise."""
    if base_image is not None:
        if not base_image.is_file():
            raise CeilError(f"--base-image {base_image}: no such file")
        digest = cached_sha256(base_image)
        if flavor.sha256 and digest != flavor.sha256 and not any_base:
            raise CeilError(
                f"--base-image {base_image}: its sha256 is {digest}, but flavor {flavor.name} pins"
                f" {flavor.sha256} ({filename_of(flavor.url) if flavor.url else 'its image'}, as downloaded,"
                " still compressed). Pass that file, or add --any-base-image to bake from this one anyway"
            )
        kind = compression_of(base_image)
        raw = base_image if kind == "none" else decompress_to_cache(base_image, digest, kind)
        return BaseImage(raw, digest, str(base_image))
    if not flavor.url:
        raise CeilError(
            f"flavor {flavor.name!r} has no download url (it is built locally, e.g. by `make testbed`):"
            " pass the image with --base-image PATH"
        )
    import requests

    session = requests.Session()
    digest = expected_digest(flavor, session)
    cached = cache_root() / "images" / f"{digest}.img"
    if cached.is_file():
        return BaseImage(cached, digest, flavor.url)
    src = download([flavor.url, *flavor.mirrors], digest, session)
    raw = src if flavor.compression == "none" else decompress_to_cache(src, digest, flavor.compression)
    return BaseImage(raw, digest, flavor.url)


def clear_downloads() -> None:
    shutil.rmtree(cache_root() / "downloads", ignore_errors=True)
