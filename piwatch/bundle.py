"""Build the PiWatch bundle that the router image carries: wheels + deploy files, for offline install.

Why wheels and a venv: the router's distro packages are too old (pydantic v1 on several
flavors), and the router may not have its uplink on first boot. So the workstation downloads
binary wheels for the router's CPU and Python with `pip download --platform ...`, caches them
under ~/.cache/ceil/wheels/<key>, and the router installs them with
deploy/unpack_wheels.py into /opt/ceil/piwatch/venv (see deploy/install-piwatch.sh).
PiWatch itself ships as a small pure-Python wheel built here with the standard library.

Every wheel is pinned by digest (issue 18 #10): piwatch/wheels.lock.json lists, per target (CPython
tag + platforms), each wheel's file name and sha256 as PyPI publishes them (`python -m
piwatch.bundle --lock` writes it, from `pip download`, which checks each file against PyPI's
digest). The bake downloads with `--require-hashes`, checks every cached wheel against the lock
each time it is used, and the router checks each wheel against requirements.txt's sha256
before it unpacks any (deploy/unpack_wheels.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import piwatch

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(piwatch.__file__).parent
DEPLOY_DIR = PACKAGE_DIR / "deploy"

# What the router needs at runtime; kept in step with pyproject's `piwatch` extra.
REQUIREMENTS = (
    "fastapi>=0.110,<1",
    "uvicorn>=0.29,<1",
    "gpiozero>=2.0,<3",
    "pydantic>=2.6,<3",
    "pydantic-settings>=2.2,<3",
    "pyyaml>=6.0,<7",
)
LOCK_FILE = PACKAGE_DIR / "wheels.lock.json"
# No GPIO library wheel: lgpio publishes no aarch64 binary wheel, and the only binary "lgpio" on
# PyPI (0.0.0.2) is an empty placeholder that would shadow the real module. The venv sees the
# distro's python3-lgpio / python3-rpi.gpio instead (install-piwatch.sh: --system-site-packages).
NEVER_BUNDLE = ("lgpio", "rpi-gpio", "rpi.gpio")

Runner = Callable[..., subprocess.CompletedProcess]


class BundleError(RuntimeError):
    pass


def python_version(python_tag: str) -> str:
    """"cp311" -> "3.11", the form `pip download --python-version` documents."""
    if not (python_tag.startswith("cp") and python_tag[2:].isdigit() and len(python_tag) >= 4):
        raise BundleError(f"python_tag must look like 'cp311' (CPython 3.11), got {python_tag!r}")
    digits = python_tag[2:]
    return f"{digits[0]}.{digits[1:]}"


def _platforms(platform: str | Sequence[str]) -> list[str]:
    return [platform] if isinstance(platform, str) else list(platform)


def cache_key(python_tag: str, platform: str | Sequence[str], requirements: Sequence[str]) -> str:
    """Same inputs -> same cache directory; any change of requirement or target -> a new one."""
    blob = json.dumps([python_tag, sorted(_platforms(platform)), sorted(requirements)])
    return f"{python_tag}-{'+'.join(_platforms(platform))}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


# ---- the lock ---------------------------------------------------------------------------


def target_name(python_tag: str, platform: str | Sequence[str]) -> str:
    return f"{python_tag} {'+'.join(_platforms(platform))}"


def load_lock(path: Path | None = None) -> dict[str, dict[str, str]]:
    """{target: {wheel file name: sha256}}; CEIL_PIWATCH_LOCK names another file (tests)."""
    path = path or Path(os.environ.get("CEIL_PIWATCH_LOCK") or LOCK_FILE)
    return json.loads(path.read_text())["targets"]


def locked_wheels(python_tag: str, platform: str | Sequence[str],
                  lock: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    lock = load_lock() if lock is None else lock
    target = target_name(python_tag, platform)
    if target not in lock:
        raise BundleError(
            f"no pinned wheels for {target} in piwatch/wheels.lock.json: run `python -m piwatch.bundle"
            f" --lock` where PyPI is reachable (it pins every flavor's target) and commit the file")
    return lock[target]


def requirement_lines(wheels: dict[str, str]) -> list[str]:
    """`name==version --hash=sha256:...` for each wheel (pip's hash-checking mode)."""
    lines = []
    for name, digest in sorted(wheels.items()):
        dist, version = name.split("-")[:2]
        lines.append(f"{dist.replace('_', '-')}=={version} --hash=sha256:{digest}")
    return lines


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheels(folder: Path, wheels: dict[str, str]) -> None:
    """Every locked wheel present in `folder` with its digest, and nothing else."""
    have = {p.name for p in folder.glob("*.whl")}
    if have != set(wheels):
        raise BundleError(f"{folder} holds {sorted(have ^ set(wheels))} against the lock: delete"
                          f" {folder} and bake again")
    for name, digest in wheels.items():
        if sha256_of(folder / name) != digest:
            raise BundleError(f"{folder / name} does not match its pinned sha256 {digest}: the cache was"
                              f" changed or damaged; delete {folder} and bake again")


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ceil" / "wheels"


def pip_download_command(
    dest: Path,
    requirements: Sequence[str],
    *,
    python_tag: str = "cp311",
    platform: str | Sequence[str] = "manylinux2014_aarch64",
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> list[str]:
    """The `pip download` call for another machine's Python: binary wheels only, since nothing
    can be compiled for the router here (pip refuses --platform without --only-binary)."""
    cmd = [*pip, "download", "--disable-pip-version-check", "--progress-bar", "off",
           "--only-binary=:all:", "--dest", str(dest),
           "--python-version", python_version(python_tag),
           "--implementation", "cp", "--abi", python_tag]
    for plat in _platforms(platform):
        cmd += ["--platform", plat]
    return cmd + list(requirements)


def fetch_wheels(
    *,
    python_tag: str = "cp311",
    platform: str | Sequence[str] = "manylinux2014_aarch64",
    lock: dict[str, dict[str, str]] | None = None,
    cache_root: Path | None = None,
    runner: Runner | None = None,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> Path:
    """Download (once) the target's pinned wheels into the cache and check them against the lock,
    then and on every later use; returns the cache directory."""
    cache_root = cache_root or default_cache_root()
    runner = runner or subprocess.run
    wheels = locked_wheels(python_tag, platform, lock)
    requirements = requirement_lines(wheels)
    key = cache_key(python_tag, platform, requirements)
    final = cache_root / key
    if (final / ".complete").is_file():
        verify_wheels(final, wheels)
        log.info("wheels for %s: cached in %s, digests checked", key, final)
        return final
    # Download into a scratch directory and rename at the end, so an interrupted download never
    # looks like a complete cache entry.
    scratch = cache_root / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        (scratch / "requirements.txt").write_text("\n".join(requirements) + "\n")
        cmd = pip_download_command(scratch, ["--require-hashes", "--no-deps", "-r", str(scratch / "requirements.txt")],
                                   python_tag=python_tag, platform=platform, pip=pip)
        done = runner(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BundleError(
                f"pip download failed for {python_tag}/{'+'.join(_platforms(platform))}"
                f" (exit {done.returncode}): {' '.join(cmd)}\n{(done.stderr or '').strip()[-2000:]}\n"
                "Check the python tag matches the router's python3 and that every requirement"
                " publishes a binary wheel for that platform."
            )
        (scratch / "requirements.txt").unlink()
        verify_wheels(scratch, wheels)
        (scratch / ".complete").write_text("\n".join(sorted(wheels)) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def make_lock(
    targets: Sequence[tuple[str, Sequence[str]]],
    *,
    requirements: Sequence[str] = REQUIREMENTS,
    runner: Runner | None = None,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
    work: Path | None = None,
) -> dict[str, dict[str, str]]:
    """Resolve `requirements` for each (python tag, platforms) target now and pin what PyPI
    serves: {target: {wheel file name: sha256}}. pip checks each download against the digest
    PyPI publishes for the file, so the pins are PyPI's."""
    import tempfile

    runner = runner or subprocess.run
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for python_tag, platform in targets:
            dest = Path(tmp) / target_name(python_tag, platform).replace(" ", "_")
            dest.mkdir()
            cmd = pip_download_command(dest, list(requirements), python_tag=python_tag, platform=platform, pip=pip)
            done = runner(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise BundleError(f"pip download failed for {target_name(python_tag, platform)}:"
                                  f" {(done.stderr or '').strip()[-2000:]}")
            names = sorted(p.name for p in dest.glob("*.whl"))
            shadowing = [w for w in names if w.split("-")[0].lower().replace("_", "-") in NEVER_BUNDLE]
            if shadowing:
                raise BundleError(f"refusing to pin {shadowing}: a GPIO library wheel would shadow"
                                  " the router's distro package (see NEVER_BUNDLE in piwatch/bundle.py)")
            out[target_name(python_tag, platform)] = {n: sha256_of(dest / n) for n in names}
    return out


def write_lock(lock: dict[str, dict[str, str]], path: Path = LOCK_FILE) -> None:
    doc = {
        "comment": "PiWatch's wheels, pinned by sha256 per target (CPython tag + pip platforms). Written by"
                   " `python -m piwatch.bundle --lock` from `pip download`, which checks every file against"
                   " the digest PyPI publishes for it (https://pypi.org/simple/<name>/, #sha256=...).",
        "requirements": list(REQUIREMENTS),
        "targets": {k: dict(sorted(v.items())) for k, v in sorted(lock.items())},
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def catalog_targets() -> list[tuple[str, list[str]]]:
    """Every (python tag, platforms) a flavor in images/ bundles PiWatch for."""
    from ceil.catalog import available, load_flavor

    seen: dict[str, tuple[str, list[str]]] = {}
    for name in available():
        flavor = load_flavor(name)
        if flavor.python_tag:
            seen[target_name(flavor.python_tag, flavor.wheel_platforms)] = (flavor.python_tag, flavor.wheel_platforms)
    return [seen[k] for k in sorted(seen)]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_piwatch_wheel(dest: Path, requirements: Sequence[str] = REQUIREMENTS) -> Path:
    """A py3-none-any wheel of the piwatch package, byte-for-byte reproducible.

    Built by hand because piwatch lives inside the ceil project: `pip wheel .` would package all
    of ceil and its workstation dependencies, which the router does not want."""
    version = piwatch.__version__
    dist_info = f"piwatch-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for path in sorted(PACKAGE_DIR.rglob("*")):
        rel = path.relative_to(PACKAGE_DIR)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((f"piwatch/{rel.as_posix()}", path.read_bytes()))
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: piwatch", f"Version: {version}",
        "Summary: Kubernetes events as traffic lights on the ceil router",
        "Requires-Python: >=3.10", *(f"Requires-Dist: {r}" for r in requirements), "",
    ])
    wheel_meta = "Wheel-Version: 1.0\nGenerator: ceil piwatch.bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files += [(f"{dist_info}/METADATA", metadata.encode()), (f"{dist_info}/WHEEL", wheel_meta.encode())]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode()))

    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"piwatch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out


def build_wheelhouse(
    dest: Path,
    python_tag: str = "cp311",
    platform: str | Sequence[str] = "manylinux2014_aarch64",
    *,
    lock: dict[str, dict[str, str]] | None = None,
    cache_root: Path | None = None,
    runner: Runner | None = None,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> list[Path]:
    """Fill `dest` with every wheel the router needs (dependencies, piwatch itself)."""
    cached = fetch_wheels(python_tag=python_tag, platform=platform, lock=lock, cache_root=cache_root,
                          runner=runner, pip=pip)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for wheel in sorted(cached.glob("*.whl")):
        shutil.copy2(wheel, dest / wheel.name)
        out.append(dest / wheel.name)
    out.append(build_piwatch_wheel(dest))
    return out


def render_env(
    host: str, port: int = 8080, reactions_file: str | None = "/etc/ceil/piwatch-reactions.yaml",
    names: Sequence[str] = (),
) -> str:
    """/etc/ceil/piwatch.env for the router: bound to its LAN address, never the uplink; answering
    to that address, the router's `names` and localhost (piwatch.guard)."""
    allowed = ",".join([host, *names, "127.0.0.1", "localhost", "::1"])
    lines = ["# Written by ceil from cluster.yaml; see docs/piwatch.md for every setting.",
             f"PIWATCH_HOST={host}", f"PIWATCH_PORT={port}", f"PIWATCH_ALLOWED_HOSTS={allowed}"]
    if reactions_file:
        lines.append(f"PIWATCH_REACTIONS_FILE={reactions_file}")
    return "\n".join(lines) + "\n"


def build_bundle(
    dest: Path,
    python_tag: str = "cp311",
    platform: str | Sequence[str] = "manylinux2014_aarch64",
    **kwargs,
) -> Path:
    """The directory the router role copies to /opt/ceil/piwatch/bundle on the image. Its
    requirements.txt pins every wheel the router installs by sha256 (in pip's hash-checking format)."""
    wheels = build_wheelhouse(dest / "wheels", python_tag, platform, **kwargs)
    piwatch_wheel = next(w for w in wheels if w.name.startswith("piwatch-"))
    pinned = {w.name: sha256_of(w) for w in wheels}
    (dest / "requirements.txt").write_text("\n".join(requirement_lines(pinned)) + "\n")
    for name in ("install-piwatch.sh", "unpack_wheels.py"):  # the unit travels with ceil's units
        shutil.copy2(DEPLOY_DIR / name, dest / name)
    (dest / "install-piwatch.sh").chmod(0o755)
    shutil.copy2(PACKAGE_DIR / "reactions.yaml", dest / "reactions.yaml")
    log.info("piwatch bundle in %s (%d wheels, %s)", dest, len(wheels), piwatch_wheel.name)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m piwatch.bundle DEST [--python-tag cp312] [--platform manylinux2014_aarch64]`,
    or `python -m piwatch.bundle --lock` to pin every flavor's wheels anew (needs PyPI)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m piwatch.bundle", description=main.__doc__)
    parser.add_argument("dest", type=Path, nargs="?", help="directory to fill (the router's bundle)")
    parser.add_argument("--lock", action="store_true",
                        help=f"resolve the requirements for every flavor's target and write {LOCK_FILE.name}")
    parser.add_argument("--python-tag", default="cp311",
                        help="the router's CPython, e.g. cp311 (bookworm), cp312 (Ubuntu 24.04), cp313 (trixie)")
    parser.add_argument("--platform", action="append",
                        help="pip platform tag; repeatable (default manylinux2014_aarch64)")
    parser.add_argument("--cache-root", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.lock:
        try:
            lock = make_lock(catalog_targets())
        except BundleError as exc:
            print(f"piwatch.bundle: {exc}", file=sys.stderr)
            return 1
        write_lock(lock)
        print(f"pinned {sum(map(len, lock.values()))} wheels for {len(lock)} targets in {LOCK_FILE}")
        return 0
    if args.dest is None:
        parser.error("give DEST (or --lock)")
    try:
        build_bundle(args.dest, args.python_tag, args.platform or "manylinux2014_aarch64",
                     cache_root=args.cache_root)
    except BundleError as exc:
        print(f"piwatch.bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
