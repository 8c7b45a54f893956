"""The bake: one flat list of verb-named steps turning a base image into ceil-<role>.img.

Each step takes the BakeContext (which owns every path), logs its name and duration, and
returns early when it does not apply. The output is written to a temporary name and renamed
only when complete, so a failure (a full disk included) never leaves a half-written image; the
cached base image is only ever read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from . import __version__
from .catalog import Flavor, load_flavor
from .config import Cluster, config_hash
from .errors import CeilError
from .ext4fs import read_file_at, write_files
from .fatfs import append_cmdline, missing_files, put_tree, read_file, write_file
from .features import RoleContext
from .fetch import BaseImage, cache_root, resolve_base
from .partitions import Partition, check_layout
from .payload import Payload, build_payload
from .privatefile import git_ignored_folder
from .secrets import SecretStore
from .flash.blockmap import signature_zones
from .image_digests import RangeCache, Ranges, Window, image_ranges, manifest_entry
from .sparse import allocated_bytes, copy_window, data_in, hash_window, punch_hole, reflink
from .ui import byte_progress, print_transcript, say, shared_progress, step, stop_if_asked, transcript

# The memory cgroup, which Raspberry Pi kernels leave off by default (their firmware's command
# line starts with cgroup_disable=memory; docs/testing.md, hostile twins): k3s needs it on a node,
# and on the router it is what makes the memory bounds of its LAN-facing services (the status
# board's MemoryMax=) hold; without it systemd ignores them and a flood can push a 1 GB router
# into the OOM killer. About 1% of the RAM (the kernel's page accounting).
MEMCG_CMDLINE_FLAGS = ["cgroup_memory=1", "cgroup_enable=memory"]


@dataclass
class BakeContext:
    cluster: Cluster
    config_path: Path
    role: str
    out_dir: Path
    store: SecretStore
    base_image_arg: Path | None = None
    airgap: Path | None = None
    any_base_image: bool = False  # --any-base-image: no check against the flavor's pin
    whole_sha256: bool = False  # --sha256: also the whole file's digest (for publishing)
    flavor: Flavor = field(init=False)
    work: Path = field(init=False)
    base: BaseImage | None = None
    boot: Partition | None = None
    root: Partition | None = None
    payload: Payload | None = None
    composed: Composed | None = None
    range_cache: RangeCache | None = None  # shared by roles baked side by side from one base
    stop: threading.Event | None = None  # set (Ctrl-C in the main thread): stop at the next step or 8 MiB
    took: float = 0.0  # seconds its steps took
    side_by_side: int = 1  # images written at once by this bake (each needs its room while written)

    def __post_init__(self) -> None:
        self.cluster.node(self.role) if self.role != "router" else None  # unknown role: clear error
        self.flavor = load_flavor(self.cluster.flavor)

    @property
    def output(self) -> Path:
        return self.out_dir / f"ceil-{self.role}.img"

    @property
    def manifest(self) -> Path:
        return self.out_dir / f"ceil-{self.role}.json"

    def partial(self, what: str) -> Path:
        """Every file the bake writes in the output folder before its final name is named here,
        in one scheme (PARTIAL_PATTERN), so that bake()'s cleanup and clean_stale (after a bake
        killed too hard for its cleanup to run) both find every one of them."""
        return self.out_dir / f".ceil-{self.role}.{what}.partial"

    # The staged partitions live beside the output, not in the work folder: the root one holds
    # as much as the root file system does, and the work folder may be RAM, too small for it;
    # and between two file systems the kernel refuses to copy (copy_file_range: EXDEV), so the
    # boot partition's 100-200 MiB would pass through user space twice per role.
    @property
    def staged_boot(self) -> Path:
        return self.partial("boot")

    @property
    def staged_root(self) -> Path:
        return self.partial("root")

    @property
    def partial_output(self) -> Path:
        return self.partial("img")

    @property
    def partial_manifest(self) -> Path:
        return self.partial("json")

    @property
    def partials(self) -> tuple[Path, ...]:
        return (self.partial_output, self.partial_manifest, self.staged_boot, self.staged_root)


def fetch_base(ctx: BakeContext) -> None:
    with step("fetch_base", ctx.base_image_arg.name if ctx.base_image_arg else ctx.flavor.name):
        ctx.base = resolve_base(ctx.flavor, ctx.base_image_arg, ctx.any_base_image)


def verify_base(ctx: BakeContext) -> None:
    p = ctx.flavor.partitions
    with step("verify_base", f"{p.boot.label} + {p.root.label}, cloud-init, {ctx.flavor.name}'s OS"):
        ctx.boot, ctx.root = inspect_base(ctx.flavor, ctx.base)


def check_base_image(flavor: Flavor, base_image_arg: Path | None, any_base_image: bool,
                     cluster: Cluster, roles: list[str]) -> None:
    """The base every role is baked from, fetched and inspected once before any image is written:
    with --all, a base that is not the flavor's OS failed at the first node, after the router's
    image was written."""
    base = resolve_base(flavor, base_image_arg, any_base_image)
    boot, _ = inspect_base(flavor, base)
    check_pi5_kernel(cluster, roles, flavor, base, boot)


def inspect_base(flavor: Flavor, base: BaseImage) -> tuple[Partition, Partition]:
    """The boot and root partitions of `base`, once it is shown to be the OS release `flavor` is
    written for: its partition labels, cloud-init, the release its os-release names, the Python
    PiWatch's wheels are bundled for, and the kernel command line where the flavor edits it. A
    wrong one is refused with what the image is and the flavor to use: Ubuntu 24.04 and 26.04
    images carry the same labels, and the wrong one baked without a word."""
    st = base.path.stat()
    return _inspected(flavor.name, base.path.resolve(), base.source, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _inspected(flavor_name: str, path: Path, source: str, ino: int, size: int, mtime_ns: int) -> tuple[Partition, Partition]:
    # Remembered for this process, keyed like the release files' digests (k3s/release.py): the
    # bake inspects the base before any role, and each role's verify_base asks again (reading
    # dpkg's status, a few MB on a real image, through debugfs). A refusal is not remembered.
    flavor, base = load_flavor(flavor_name), BaseImage(path, "", source)
    p = flavor.partitions
    boot, root = check_layout(base.path, p.boot.index, p.boot.label, p.root.index, p.root.label)
    where = f"{base.source} (root partition p{p.root.index})"
    fix = (f"use the image flavor {flavor.name} names (images/{flavor.name}.yaml), or a newer"
           f" release of the same OS; `python bake.py flavors` lists the flavors")
    status = read_file_at(base.path, root.start, "/var/lib/dpkg/status")
    if status is None:
        raise CeilError(f"{where} has no /var/lib/dpkg/status: it is not a Debian-based image with cloud-init; {fix}")
    packages = installed_packages(status.decode(errors="replace"))
    if "cloud-init" not in packages:
        raise CeilError(f"{where} has no cloud-init installed ({len(packages)} packages, none of them cloud-init):"
                        f" the card would never read the settings ceil writes for it; {fix}")
    release = os_release(base.path, root.start)
    python = python_tag(packages.get("python3", ""))
    differs = [f"{key}={release.get(key, '(none)')} where {flavor.name} expects {want}"
               for key, want in flavor.os_release.items() if release.get(key) != want]
    if flavor.python_tag and python != flavor.python_tag:
        differs.append(f"python3 {packages.get('python3', '(not installed)')} where {flavor.name} bundles PiWatch"
                       f" for {flavor.python_tag}")
    if differs:
        is_ = release.get("PRETTY_NAME", "an OS without /etc/os-release")
        others = [f.name for f in flavors_for(release, python, flavor.partitions, packages_arch(status))
                  if f.name != flavor.name]
        instead = (f"set `flavor: {others[0]}` in cluster.yaml (made for this image)" if len(others) == 1 else
                   f"set `flavor:` in cluster.yaml to one made for this image ({', '.join(others)})" if others else
                   "no flavor here is made for this image")
        raise CeilError(f"{base.source} is {is_}, not the OS flavor {flavor.name} is written for"
                        f" ({'; '.join(differs)}): {instead}, or pass {flavor.name}'s image"
                        f" (`python bake.py flavors` lists them)")
    if flavor.cmdline and read_file(base.path, flavor.cmdline, offset=boot.start) is None:
        raise CeilError(f"{base.source}: its boot partition has no {flavor.cmdline}, where flavor {flavor.name} keeps"
                        f" the kernel command line (k3s needs the memory cgroup set there); {fix}")
    return boot, root


def check_pi5_kernel(cluster: Cluster, roles: list[str], flavor: Flavor, base: BaseImage, boot: Partition) -> None:
    """Where a node's config.txt will name the image's 4K-page kernel for a Pi 5, the base must
    have it, its initramfs and config.txt: a Pi 5 node would otherwise have nothing to boot."""
    if not any(config_txt_section(cluster, role, flavor) for role in roles):
        return
    pi5 = flavor.pi5_4k_kernel
    missing = missing_files(base.path, ["config.txt", pi5.kernel, pi5.initramfs], offset=boot.start)
    if missing:
        raise CeilError(f"{base.source}: its boot partition has no {', '.join(missing)}, where flavor {flavor.name}"
                        f" has a Pi 5 node boot its 4K-page kernel ({pi5.kernel}, kubernetes.pi5_page_size: 4k):"
                        f" set kubernetes.pi5_page_size: 16k in cluster.yaml to keep the image's own kernel, or use"
                        f" the image images/{flavor.name}.yaml names")


def installed_packages(dpkg_status: str) -> dict[str, str]:
    """{package: version} of what dpkg's status file says is installed."""
    out: dict[str, str] = {}
    for stanza in dpkg_status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status") == "install ok installed" and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out


def os_release(image: Path, root_start: int) -> dict[str, str]:
    """The root file system's os-release fields (os-release(5)): /etc/os-release, which is
    usually a link to /usr/lib/os-release, read there."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = (read_file_at(image, root_start, path) or b"").decode(errors="replace")
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        if fields:
            return {k.strip(): v.strip().strip("\"'") for k, v in fields.items()}
    return {}


def python_tag(version: str) -> str | None:
    """cp312 for Debian's python3 package version 3.12.3-0ubuntu2 (an epoch, if any, first)."""
    m = re.match(r"^(?:\d+:)?3\.(\d+)", version)
    return f"cp3{m.group(1)}" if m else None


def flavors_for(release: dict[str, str], python: str | None, partitions=None, arch: str | None = None) -> list[Flavor]:
    """The flavors an image with these os-release fields, Python, partition labels and Debian
    architecture passes (each left out when None), offered ones first."""
    from .catalog import available

    def labels(p):
        return (p.boot.label, p.root.label)

    fits = [f for f in map(load_flavor, available())
            if f.os_release and all(release.get(k) == v for k, v in f.os_release.items())
            and f.python_tag in (None, python) and (partitions is None or labels(f.partitions) == labels(partitions))
            and arch in (None, f.arch)]
    return sorted(fits, key=lambda f: (f.test_only, f.name))


def packages_arch(dpkg_status: bytes) -> str | None:
    """The image's Debian architecture: that of its python3 package (most others say "all")."""
    for stanza in dpkg_status.decode(errors="replace").split("\n\n"):
        if "\nPackage: python3\n" in f"\n{stanza}\n":
            for line in stanza.splitlines():
                if line.startswith("Architecture: "):
                    return line.split(": ", 1)[1].strip()
    return None


def create_private(path: Path):
    """A new (or emptied) file, 0600 from its first byte: the staged boot partition and the image
    carry the role's secrets until its first boot moves them off the card."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def stage_boot(ctx: BakeContext) -> None:
    """Copy the boot partition out of the base into its own sparse file for mtools."""
    with step("stage_boot", f"{ctx.boot.size // 2**20} MiB FAT"):
        with open(ctx.base.path, "rb") as fin, create_private(ctx.staged_boot) as fout:
            fout.truncate(ctx.boot.size)
            copy_window(fin.fileno(), fout.fileno(), ctx.boot.start, 0, ctx.boot.size)


def render_payload(ctx: BakeContext) -> None:
    """The role's first-boot files, into the work folder; the cluster's secrets it needs are made
    here (once, shared by the roles), so this runs one role after another (bake_side_by_side)."""
    ctx.payload = build_payload(
        RoleContext(ctx.cluster, ctx.role, ctx.flavor, ctx.store, ctx.airgap), ctx.work / "payload"
    )


def write_seed(ctx: BakeContext) -> None:
    with step("write_seed", "user-data, meta-data, network-config"):
        for name, text in ctx.payload.seed.items():
            write_file(ctx.staged_boot, name, text.encode(), ctx.work)


def payload_summary(payload: Payload) -> str:
    """What write_payload says: the features by name, and the first-boot steps (units) they make
    (not one each: status-board or k3s-cache only add files, common makes two)."""
    return f"{len(payload.steps)} first-boot steps from {len(payload.features)} features: {', '.join(payload.features)}"


def write_payload(ctx: BakeContext) -> None:
    with step("write_payload", payload_summary(ctx.payload)):
        put_tree(ctx.staged_boot, ctx.payload.root, "ceil")


REGDOM_PARAM = "cfg80211.ieee80211_regdom"


def cmdline_flags(cluster: Cluster, role: str) -> list[str]:
    """Kernel arguments the role needs on top of the image's own."""
    if role != "router":
        return MEMCG_CMDLINE_FLAGS
    uplink = cluster.router.uplink
    # The WiFi regulatory domain from the first moment the driver loads: Raspberry Pi OS keeps
    # WiFi soft-blocked (rfkill) until a country is set, and Raspberry Pi Imager writes it here for
    # the same reason; netplan's regulatory-domain comes later, from userspace.
    return MEMCG_CMDLINE_FLAGS + ([f"{REGDOM_PARAM}={uplink.wifi.country}"] if uplink.is_wifi else [])


def edit_cmdline(ctx: BakeContext) -> None:
    flags = cmdline_flags(ctx.cluster, ctx.role)
    if not flags or not ctx.flavor.cmdline:
        return
    with step("edit_cmdline", " ".join(flags)):
        for path in (ctx.flavor.cmdline, *ctx.flavor.other_cmdlines):
            current = read_file(ctx.staged_boot, path)
            if current is None and path == ctx.flavor.cmdline:
                raise CeilError(f"{path} not found on the boot partition of {ctx.base.source}")
            if current is not None:
                write_file(ctx.staged_boot, path, append_cmdline(current, flags, replace=(REGDOM_PARAM,)), ctx.work)


def config_txt_section(cluster: Cluster, role: str, flavor: Flavor) -> str:
    """What the role's config.txt gets at its end: a Pi 5 node boots the image's 4K-page kernel
    (kubernetes.pi5_page_size, docs/hardware.md). The firmware reads `[pi5]` lines on a Pi 5
    only, and `[all]` hands the rest of the file back to every model. Empty: nothing to add."""
    boot = flavor.pi5_4k_kernel
    if role == "router" or boot is None or cluster.kubernetes.pi5_page_size != "4k":
        return ""
    # [all] first: a filter of another kind left open at the file's end (a [tryboot], a [gpioN=]) would
    # otherwise combine with [pi5]. The initramfs is named, and auto_initramfs off for it: with
    # auto_initramfs=1 and kernel=kernel8.img a Pi 5 was seen loading the wrong initramfs
    # (raspberrypi/firmware#1965, whose working fix is exactly these two lines).
    return (f"\n# ceil: a Pi 5 node boots the 4K-page kernel (kubernetes.pi5_page_size: 4k)\n"
            f"[all]\n[pi5]\nkernel={boot.kernel}\nauto_initramfs=0\ninitramfs {boot.initramfs} followkernel\n[all]\n")


def edit_config_txt(ctx: BakeContext) -> None:
    section = config_txt_section(ctx.cluster, ctx.role, ctx.flavor)
    if not section:
        return
    with step("edit_config_txt", f"[pi5] kernel={ctx.flavor.pi5_4k_kernel.kernel}"):
        current = read_file(ctx.staged_boot, "config.txt") or b""  # inspect_base saw it there
        if section.strip() not in current.decode(errors="replace"):
            text = current.rstrip(b"\n") + b"\n" + section.encode()
            write_file(ctx.staged_boot, "config.txt", text, ctx.work)


def write_rootfs(ctx: BakeContext) -> None:
    """Large files (k3s binaries) into the ext4 root: staged like the boot partition."""
    if not ctx.payload.rootfs:
        return
    total = sum(p.stat().st_size for p in ctx.payload.rootfs.values())
    with step("write_rootfs", f"{len(ctx.payload.rootfs)} files, {total / 2**20:.0f} MiB"):
        with open(ctx.base.path, "rb") as fin, create_private(ctx.staged_root) as fout:
            fout.truncate(ctx.root.size)
            data = data_in(fin.fileno(), ctx.root.start, ctx.root.size)
            with byte_progress(f"staging {ctx.role}'s root partition", data, ctx.stop) as advance:
                copy_window(fin.fileno(), fout.fileno(), ctx.root.start, 0, ctx.root.size, advance)
        write_files(ctx.staged_root, ctx.payload.rootfs)


def compose_image(ctx: BakeContext) -> None:
    """Write base + staged partitions into the partial output, with a sha256 per data range."""
    staged = {ctx.boot: ctx.staged_boot}
    if ctx.payload.rootfs:  # what write_rootfs staged (not a file a killed bake left behind)
        staged[ctx.root] = ctx.staged_root
    st = ctx.base.path.stat()
    cache = ctx.range_cache or range_cache(ctx.base)
    size = f"{st.st_size / 2**30:.1f} GiB sparse"
    with step("compose_image", size) as detail:
        ctx.composed = compose(ctx.base.path, staged, ctx.partial_output, cache,
                               base_key=f"{ctx.base.sha256}:{st.st_size}:{st.st_mtime_ns}",
                               whole_sha256=ctx.whole_sha256, label=ctx.output.name, stop=ctx.stop)
        detail(f"{size}, {'cloned' if ctx.composed.cloned else 'copied'}")
    cache.save()


def range_cache(base: BaseImage) -> RangeCache:
    """The remembered digests of the base's ranges (image_digests), in ceil's cache."""
    return RangeCache(cache_root() / "ranges" / f"{base.sha256}.json")


@dataclass
class Composed:
    ranges: Ranges  # the image's block map, a sha256 per range
    sha256: str | None  # of the whole file, only when asked for (--sha256)
    cloned: bool  # the base was reflinked, not copied


def _segments(base_fd: int, size: int, staged: dict[Partition, int]) -> list[tuple[int, int, int, int]]:
    """(fd, src offset, dst offset, length) in image order: staged partitions replace base ranges."""
    out, pos = [], 0
    for part in sorted(staged, key=lambda p: p.start):
        out.append((base_fd, pos, pos, part.start - pos))
        out.append((staged[part], 0, part.start, part.size))
        pos = part.end
    out.append((base_fd, pos, pos, size - pos))
    return out


def compose(base: Path, staged: dict[Partition, Path], out: Path, cache: RangeCache | None = None,
            base_key: str | None = None, whole_sha256: bool = False, label: str = "",
            stop: threading.Event | None = None) -> Composed:
    size = base.stat().st_size
    files = {part: open(path, "rb") for part, path in staged.items()}
    with open(base, "rb") as fb, create_private(out) as fo, ThreadPoolExecutor(1) as pool:
        segments = _segments(fb.fileno(), size, {p: f.fileno() for p, f in files.items()})
        windows = [Window(f, src, dst, n, base_key if f == fb.fileno() else None) for f, src, dst, n in segments]
        # Digests from the sources in a second thread while the kernel copies: they cost
        # (almost) no extra wall time on two cores, and the base's are remembered.
        digests = pool.submit(_digests, windows, signature_zones(fb.fileno()), cache, whole_sha256)
        data = [data_in(f, src, length) for f, src, _, length in segments]
        try:
            with byte_progress(f"writing {label or out.name}", sum(data), stop) as advance:
                cloned = _clone_base(fb.fileno(), fo.fileno(), segments)
                if not cloned:
                    fo.truncate(size)
                for (f, src, dst, n), has in zip(segments, data):
                    if cloned and f == fb.fileno():
                        advance(has)  # the clone holds it already
                    else:
                        copy_window(f, fo.fileno(), src, dst, n, advance)
            # No fsync (as cp): forcing gigabytes to disk per role would double a bake's time.
            # A process failure never leaves a partial image under the final name (rename at
            # the end), and `flash` checks the image against the manifest's digests first.
            ranges, sha256 = digests.result()
        finally:
            for f in files.values():
                f.close()
    return Composed(ranges, sha256, cloned)


def _clone_base(base_fd: int, out_fd: int, segments) -> bool:
    """On a file system with reflinks, the output starts as a clone of the base and only the
    staged partitions' ranges are emptied, to be rewritten; elsewhere False (copy everything)."""
    if not reflink(base_fd, out_fd):
        return False
    if all(punch_hole(out_fd, dst, n) for f, _, dst, n in segments if f != base_fd):
        return True
    os.ftruncate(out_fd, 0)  # a clone we cannot punch holes into: copy instead
    return False


def _digests(windows: list[Window], zones, cache: RangeCache | None, whole: bool) -> tuple[Ranges, str | None]:
    ranges = image_ranges(windows, zones, cache)
    if not whole:
        return ranges, None
    digest = hashlib.sha256()
    for w in windows:
        hash_window(digest, w.fd, w.src, w.length)
    return ranges, digest.hexdigest()


def finish_image(ctx: BakeContext) -> None:
    with step("finish_image", str(ctx.output)):
        manifest = manifest_of(ctx)
        stop_if_asked(ctx.stop)  # stopped while the manifest was made: not published
        publish(ctx.partial_output, ctx.output, manifest, ctx.manifest, ctx.partial_manifest)


def manifest_of(ctx: BakeContext) -> dict:
    """What ceil-<role>.json says of the image composed in ctx.partial_output."""
    return {
        "role": ctx.role,
        "hostname": ctx.cluster.hostname(ctx.role),
        "flavor": ctx.flavor.name,
        "base_image": {"source": ctx.base.source, "sha256": ctx.base.sha256},
        "output": {
            "path": ctx.output.name,
            "size": ctx.partial_output.stat().st_size,
            "allocated": allocated_bytes(ctx.partial_output),
            "blockmap": manifest_entry(ctx.composed.ranges),
            **({"sha256": ctx.composed.sha256} if ctx.composed.sha256 else {}),
        },
        "config_sha256": config_hash(ctx.config_path),
        "instance_id": ctx.payload.instance_id,
        "features": ctx.payload.features,
        "packages": ctx.payload.packages,
        "ceil_version": __version__,
        "baked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def publish(partial_image: Path, image: Path, manifest: dict, manifest_path: Path, partial_manifest: Path) -> None:
    """Move a new image and its manifest into place, in an order where an interrupt at any point
    leaves either the previous image with its manifest, or an image with no manifest (which flash
    refuses: bake it again), never the new image beside the old manifest, which flash would call
    damaged. (Against a power cut nothing here helps: the bake does not fsync, see compose.)"""
    partial_manifest.write_text(json.dumps(manifest, indent=2) + "\n")  # the part that can fail, first
    manifest_path.unlink(missing_ok=True)  # from here the old image stands alone: refused
    os.replace(partial_image, image)
    os.replace(partial_manifest, manifest_path)


# Reading the base and rendering the payload, which makes the cluster's shared secrets: one role
# after another, in the caller's thread. Writing the role's image: side by side (bake_side_by_side).
PREPARE = [fetch_base, verify_base, render_payload]
WRITE = [stage_boot, write_seed, write_payload, edit_cmdline, edit_config_txt, write_rootfs, compose_image,
         finish_image]
# render_payload renders the payload into the work folder; fetch_base writes into the image
# cache, the others beside the output.
IN_WORK_FOLDER = (render_payload,)
# The work folder holds the payload: about a hundred small files and PiWatch's wheels (5 MiB).
RAM_WORK_NEEDS = 256 << 20


def work_root(shm: Path = Path("/dev/shm")) -> str | None:
    """Where the work folder (the payload) goes: TMPDIR when the user set it; else RAM (/dev/shm)
    when it has room, because on a disk file system creating and removing its files waits for
    the journal, which waits for the writeback of the images just written (10 ms per file on
    ext4, a second per bake of five roles); else the system's temporary folder (None)."""
    if os.environ.get("TMPDIR") or not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return None
    return str(shm) if shutil.disk_usage(shm).free >= RAM_WORK_NEEDS else None


@contextlib.contextmanager
def role_folders(ctx: BakeContext) -> Iterator[None]:
    """The role's work folder while it lasts; on the way out, whatever it left half-written
    beside the output is removed (a published image is no longer a partial)."""
    git_ignored_folder(ctx.out_dir, "baked images, each holding its machine's keys")
    with tempfile.TemporaryDirectory(prefix=f"ceil-{ctx.role}-", dir=work_root()) as work:
        ctx.work = Path(work)
        try:
            yield
        finally:
            for partial in ctx.partials:
                partial.unlink(missing_ok=True)


def run_steps(ctx: BakeContext, steps: list[Callable[[BakeContext], None]]) -> None:
    for s in steps:
        stop_if_asked(ctx.stop)  # as the Ctrl-C that set it would have, had this run in the main thread
        start = time.monotonic()
        try:
            s(ctx)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise no_space(ctx, s) from None
            raise
        finally:
            ctx.took += time.monotonic() - start


def bake(ctx: BakeContext) -> Path:
    """One role's image, start to end, in this thread."""
    with role_folders(ctx):
        run_steps(ctx, PREPARE + WRITE)
    return ctx.output


def bake_jobs() -> int:
    """How many images bake_side_by_side writes at once by default: one per core this process
    may use, at most two. Beyond two the copies wait on the disk, not the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(2, cores))


def failed_with(error: BaseException):
    """A finished future holding `error`: a role whose PREPARE failed, collected in its turn."""
    future = Future()
    future.set_exception(error)
    return future


def bake_side_by_side(contexts: list[BakeContext], jobs: int,
                      announce: Callable[[BakeContext], None] = lambda ctx: None) -> Iterator[BakeContext]:
    """Bake the roles, writing up to `jobs` images at once; yield each context once its image is
    published, in the roles' order. `announce` says a role's first lines.

    Each role's PREPARE runs here, one role after another: its payload makes and reads the
    cluster's shared secrets (the token, the CA), which two threads would each make anew. Its
    WRITE (the boot partition's files, the image's copy and digests, publishing) runs in a worker
    thread: the copy waits on the kernel, and on a base with little data each role's Python work
    weighed as much as its copy (issue 21). Each role's lines are kept and printed whole, in
    order; the progress bars share one display. A failure stops new roles; those already being
    written finish, are published and yielded, then the first failure is raised. Ctrl-C stops
    every worker at its next step or 8 MiB, each removing what it had half-written."""
    if jobs <= 1 or len(contexts) <= 1:
        for ctx in contexts:
            announce(ctx)
            bake(ctx)
            yield ctx
        return
    stop = threading.Event()  # Ctrl-C: every role stops where it is
    failed = threading.Event()  # a role failed: no other begins (those under way finish)
    caches: dict[str, RangeCache] = {}  # one per base: a second role waits for the first's digests
    pending: deque = deque()  # (ctx, its lines, its future): roles handed to the workers, oldest first
    failure: BaseException | None = None

    def write(ctx: BakeContext, folders: contextlib.ExitStack, lines: list[str]) -> bool:
        with folders, transcript(lines):
            if failed.is_set():
                say(f"  {ctx.role}: not written (another role failed)")
                return False
            try:
                run_steps(ctx, WRITE)
            except BaseException:
                failed.set()
                raise
            return True

    def collect() -> BakeContext | None:
        """Wait for the oldest role; print its lines; the context if its image was published."""
        nonlocal failure
        ctx, lines, future = pending.popleft()
        while True:
            try:
                error = future.exception()  # waits for the worker
                break
            except KeyboardInterrupt:  # Ctrl-C while waiting: stop them all, then wait on
                failure = failure or KeyboardInterrupt()
                failed.set()
                stop.set()
        if error is not None and not isinstance(error, KeyboardInterrupt) and not stop.is_set():
            # Other roles' lines may follow this one's before the error is shown; a second
            # failure is told here, in full (only the first is raised).
            lines.append(f"[red]  {ctx.role} failed[/red]" + (" (the error is the last line)" if failure is None
                                                              else f": {escape(str(error))}"))
        print_transcript(lines)
        failure = failure or error
        return ctx if error is None and future.result() else None

    with shared_progress(), ThreadPoolExecutor(jobs, thread_name_prefix="ceil-bake") as pool:
        try:
            for ctx in contexts:
                if failed.is_set():
                    break
                ctx.stop, ctx.side_by_side, lines, folders = stop, jobs, [], contextlib.ExitStack()
                try:
                    with transcript(lines):
                        announce(ctx)
                        folders.enter_context(role_folders(ctx))
                        run_steps(ctx, PREPARE)
                except BaseException as e:  # noqa: B036 (Ctrl-C included: the roles under way stop too)
                    failed.set()
                    if isinstance(e, KeyboardInterrupt):
                        stop.set()
                    folders.close()
                    pending.append((ctx, lines, failed_with(e)))  # its lines after the older roles'
                    break
                if ctx.base.sha256 not in caches:
                    caches[ctx.base.sha256] = range_cache(ctx.base)
                ctx.range_cache = caches[ctx.base.sha256]
                pending.append((ctx, lines, pool.submit(write, ctx, folders, lines)))
                # One role more than there are workers is prepared ahead (its payload, a few
                # MiB in the work folder): a worker that finishes starts the next at once.
                while len(pending) > jobs:
                    if done := collect():
                        yield done
            while pending:
                if done := collect():
                    yield done
        except BaseException:  # Ctrl-C while printing, or the caller stopped iterating
            failed.set()
            stop.set()
            raise
    if failure:
        raise failure


def no_space(ctx: BakeContext, failed) -> CeilError:
    """Which folder filled up, and how much the bake needs there."""
    def data_mib(part: Partition) -> int:
        with open(ctx.base.path, "rb") as f:
            return data_in(f.fileno(), part.start, part.size) // 2**20

    if failed is fetch_base:
        return CeilError(f"no space left on the device while fetching the base image into {cache_root()}:"
                         " free space there, or set CEIL_CACHE to a folder with room")
    if failed in IN_WORK_FOLDER:
        return CeilError(f"no space left on the device while writing the first-boot payload in the temporary folder"
                         f" {ctx.work.parent}: free space there, or set TMPDIR to a folder with room")
    # The image, and while it is made the staged partitions with their data.
    staged = data_mib(ctx.boot) + (data_mib(ctx.root) if ctx.payload and ctx.payload.rootfs else 0)
    need = allocated_bytes(ctx.base.path) // 2**20 + staged
    if ctx.side_by_side > 1:  # each image being written needs its room at the same time
        return CeilError(f"no space left on the device while writing {ctx.output}: free at least"
                         f" {need * ctx.side_by_side} MiB in {ctx.out_dir} for {ctx.side_by_side} images written at"
                         f" once, or {need} MiB with --jobs 1 (or use --out)")
    return CeilError(f"no space left on the device while writing {ctx.output}: free at least {need} MiB"
                     f" in {ctx.out_dir} (or use --out)")


PARTIAL_PATTERN = ".ceil-*.partial"  # what BakeContext.partial names


def clean_stale(out_dir: Path) -> None:
    """Remove partial outputs a killed bake may have left behind."""
    for p in out_dir.glob(PARTIAL_PATTERN):
        p.unlink(missing_ok=True)



