"""Install the bundle's wheels into the running interpreter's site-packages, offline, without pip.

Usage (with the venv's python): python unpack_wheels.py BUNDLE_DIR

Why not pip: on the router's first boot pip's own start-up and resolver cost more than half of
PiWatch's install (natively 11.4 s with pip against 1.2 s unpacking and 3.7 s compiling).
A wheel is a zip file laid out for site-packages (PEP 427), so installing pinned wheels with
no dependencies to resolve is unpacking them; then the byte code is compiled, one worker per
core (pip compiled one file at a time).

Every wheel must match a sha256 in BUNDLE_DIR/requirements.txt (`name==version
--hash=sha256:...`, as pip's hash-checking mode reads it) and every pinned digest must be
present: a wheel changed on the card, missing or added is refused before anything is unpacked.
Only the standard library: this runs before anything else is installed.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import re
import sys
import sysconfig
import zipfile
from pathlib import Path, PurePosixPath

HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# setuptools comes only as a declared dependency of colorzero, which never imports it.
NEVER_IMPORTED = re.compile(r"/(setuptools|pkg_resources|_distutils_hack)/")


class WheelError(Exception):
    pass


def pinned_digests(requirements: Path) -> set[str]:
    digests = set()
    for line in requirements.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = HASH.search(line)
        if not m:
            raise WheelError(f"{requirements}: no --hash=sha256: on line {line!r}")
        digests.add(m.group(1))
    return digests


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checked_wheels(bundle: Path) -> list[Path]:
    """The bundle's wheels, each matching a pinned digest, every pin matched."""
    want = pinned_digests(bundle / "requirements.txt")
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    seen = set()
    for wheel in wheels:
        digest = sha256_of(wheel)
        if digest not in want:
            raise WheelError(f"{wheel.name}: sha256 {digest} matches no hash in requirements.txt"
                             " (changed on the card or in transit): bake the router again")
        seen.add(digest)
    if want - seen:
        raise WheelError(f"requirements.txt pins {len(want - seen)} wheel(s) missing from {bundle / 'wheels'}"
                         f" (sha256 {', '.join(sorted(want - seen))})")
    return wheels


def target_of(name: str, site: Path) -> Path | None:
    """Where a wheel member goes: site-packages, or None for what PiWatch never needs (scripts,
    headers, data). Refuses names that would leave site-packages."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or "\\" in name:
        raise WheelError(f"unsafe path in wheel: {name!r}")
    if parts[0].endswith(".data"):
        if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            return site.joinpath(*parts[2:])
        return None
    return site.joinpath(*parts)


def unpack(wheel: Path, site: Path) -> int:
    files = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            dest = target_of(info.filename, site)
            if dest is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            # Keep the executable bit a wheel records (shared libraries, helper scripts).
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 else 0o644)
            files += 1
        for name in {PurePosixPath(n).parts[0] for n in zf.namelist()}:
            if name.endswith(".dist-info"):
                (site / name / "INSTALLER").write_text("ceil\n")
    return files


def compile_site(site: Path) -> None:
    """Byte code now, as root: the service (not root) cannot write it, and without it every start
    compiles what it imports (run e2e29: compiling only what an import check loaded left
    uvicorn's lazily imported modules to each start, and the service took minutes to answer
    under TCG). A file that does not compile is not fatal (pip ignored it too); install-piwatch.sh's
    import check is the gate."""
    compileall.compile_dir(str(site), quiet=2, workers=0, rx=NEVER_IMPORTED)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    bundle = Path(argv[0])
    site = Path(sysconfig.get_path("purelib"))
    try:
        wheels = checked_wheels(bundle)
        total = sum(unpack(w, site) for w in wheels)
        compile_site(site)
    except (WheelError, zipfile.BadZipFile, OSError) as e:
        print(f"unpack_wheels: {e}", file=sys.stderr)
        return 1
    print(f"unpack_wheels: {len(wheels)} wheels, {total} files into {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
