"""Build (or reuse) a ceil test-bed image: `python -m testbed.build --flavor testbed-ubuntu --arch arm64`.

The steps, in order: check_tools, make_repo_key, bootstrap (mmdebstrap), shape_rootfs,
layout_disk (the image, atomic rename into the cache), then build_repo (the role packages, its
own atomic rename). The result lives in ${CEIL_CACHE:-~/.cache/ceil}/testbed/<flavor>-<arch>-<key>/:

    image.img        sparse MBR disk image laid out like the mimicked flavor
    vmlinuz, initrd.img, cmdline.txt   copies of the boot partition's files (the Pi OS twin: cmdline.txt only)
    manifest.json    key, flavor, arch, suite, kernel, timings, sizes
    packages.txt     every package installed in the image, with versions
    dpkg-status      the image's dpkg status (the repository is resolved against it)
    gnupg/           the throwaway key the image's apt trusts (signs the repository)
    build.log        mmdebstrap's output
    repo-<key>/      debian/{dists,pool}: signed apt repository with the role packages and their
                     dependencies (served to the guests by the harness), for the current
                     role-packages.txt; a new package list makes a new one in seconds

A directory with a manifest is complete (it is renamed into place only at the end); it is reused
until the recipe changes. Needs root (mmdebstrap --mode=root, ownership in the image).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import disk, repo, rootfs
from .cache import atomic_dir, lock, remove_tree
from .recipe import ARCHES, Recipe, RecipeError, cache_root, load

log = logging.getLogger("testbed")

TOOLS = {
    "mmdebstrap": "builds the Debian root file system (apt install mmdebstrap)",
    "mke2fs": "creates the ext4 root partition from a directory (apt install e2fsprogs)",
    "mkfs.fat": "creates the FAT32 boot partition (apt install dosfstools)",
    "mcopy": "writes files into the boot partition without mounting (apt install mtools)",
    "sfdisk": "writes the MBR partition table (apt install fdisk)",
    "apt-ftparchive": "indexes the local apt repository (apt install apt-utils)",
    "gpg": "signs the local apt repository (apt install gpg)",
    "systemctl": "enables units inside the image (systemd)",
    "setcap": "gives ping its capability in the image (apt install libcap2-bin)",
}


@dataclass(frozen=True)
class Testbed:
    """A complete test bed in the cache: the image and the repository for the current packages."""

    dir: Path
    repo_key: str

    @property
    def image(self) -> Path:
        return self.dir / "image.img"

    @property
    def repo(self) -> Path:
        """Serve this directory: it holds debian/dists/... and debian/pool/..."""
        return self.dir / f"repo-{self.repo_key}"

    @property
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())


class BuildError(Exception):
    pass


def check_tools(arch: str) -> None:
    missing = [f"{t} not found: it {why}" for t, why in TOOLS.items() if shutil.which(t) is None]
    if missing:
        raise BuildError("missing host tools (scripts/setup-host.sh --test installs them):\n  " + "\n  ".join(missing))
    if os.geteuid() != 0:
        raise BuildError("the test-bed build needs root (mmdebstrap --mode=root, file ownership in the image); run it with sudo")
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if arch != host:
        enable_binfmt(arch)


QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}


def enable_binfmt(arch: str) -> None:
    """Foreign-arch chroots run through qemu-user, which needs binfmt_misc registered."""
    name = QEMU_BINFMT[arch]
    mnt = Path("/proc/sys/fs/binfmt_misc")
    if not (mnt / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mnt)], check=True)
    if not (mnt / name).exists() or "enabled" not in (mnt / name).read_text():
        if shutil.which("update-binfmts") is None:
            raise BuildError(f"{arch} chroot needs qemu-user: apt install qemu-user-static binfmt-support")
        subprocess.run(["update-binfmts", "--enable", name], check=True)
    if not (mnt / name).exists():
        raise BuildError(f"binfmt handler {name} is not registered: apt install qemu-user-static binfmt-support")
    if shutil.which("arch-test") is None:
        raise BuildError("arch-test not found: mmdebstrap needs it for a foreign-arch chroot (apt install arch-test)")


@contextmanager
def _step(name: str, timings: dict):
    log.info("step %s ...", name)
    t0 = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - t0, 1)
    log.info("step %s done in %.1f s", name, timings[name])


def final_dir(recipe: Recipe) -> Path:
    return cache_root() / f"{recipe.slug}-{recipe.key}"


def lookup(flavor: str, arch: str | None = None) -> Testbed | None:
    """The cached test bed (image and repository) for the current recipe, or None."""
    recipe = load(flavor, arch)
    tb = Testbed(final_dir(recipe), recipe.repo_key)
    return tb if (tb.dir / "manifest.json").is_file() and (tb.repo / "manifest.json").is_file() else None


def ensure(flavor: str, arch: str | None = None, force: bool = False) -> Testbed:
    """Return the cached test bed for the current recipe, building what is missing first."""
    recipe = load(flavor, arch)
    final = final_dir(recipe)
    tb = Testbed(final, recipe.repo_key)
    with lock(cache_root() / f".lock-{recipe.slug}"):
        if force or not (final / "manifest.json").is_file():
            check_tools(recipe.arch)
            atomic_dir(final, lambda tmp: _build_image(recipe, tmp))
            link = cache_root() / recipe.slug
            link.unlink(missing_ok=True)
            link.symlink_to(final.name)
        else:
            log.info("test-bed image %s is cached: %s", recipe.slug, final)
        if force or not (tb.repo / "manifest.json").is_file():
            missing = [t for t in ("apt-get", "apt-ftparchive", "gpg") if shutil.which(t) is None]
            if missing:
                raise BuildError(f"{', '.join(missing)} not found: the local repository needs them (apt install apt-utils gpg)")
            atomic_dir(tb.repo, lambda tmp: _build_repo(recipe, final, tmp))
            for old in final.glob("repo-*"):
                if old != tb.repo:
                    remove_tree(old)
        else:
            log.info("local repository %s is cached", tb.repo.name)
    return tb


def _build_image(recipe: Recipe, tmp: Path) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    root, bootfs, gnupg = tmp / "root", tmp / "bootfs", tmp / "gnupg"
    layout = disk.Layout(
        size=recipe.data["image"]["size_mib"] * disk.MIB,
        boot_start=recipe.data["image"]["boot_start_mib"] * disk.MIB,
        boot_size=recipe.data["image"]["boot_mib"] * disk.MIB,
        disk_id=recipe.key[:8],
    )
    with _step("make_repo_key", timings):
        key_asc = repo.make_key(gnupg)
    with _step("bootstrap", timings):
        rootfs.mmdebstrap(recipe, root, tmp / "build.log")
    with _step("shape_rootfs", timings):
        facts = rootfs.shape(recipe, root, bootfs, key_asc)
        rootfs.write_boot_files(recipe, bootfs, layout.disk_id)
        packages = subprocess.run(
            ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} ${Version} ${Architecture}\n"],
            capture_output=True, text=True, check=True,
        ).stdout
        (tmp / "packages.txt").write_text(packages)
        # The repository step resolves the role packages against exactly this installed set.
        shutil.copyfile(root / "var/lib/dpkg/status", tmp / "dpkg-status")
    with _step("layout_disk", timings):
        disk.build(tmp / "image.img", layout, recipe.flavor.boot_label, bootfs, recipe.flavor.root_label, root)
        slot = Path(recipe.flavor.cmdline_file).parent
        pi_os_names = recipe.twin.get("board") == "pi5"
        for name in rootfs.BOOT_ASSETS:
            if pi_os_names and name != "cmdline.txt":
                continue  # kernel8.img, kernel_2712.img and their initramfs instead (rootfs.stage_kernels)
            shutil.copyfile(bootfs / slot / name, tmp / name)
    remove_tree(root)
    remove_tree(bootfs)
    st = (tmp / "image.img").stat()
    manifest = {
        "key": recipe.key,
        "flavor": recipe.flavor.name,
        "arch": recipe.arch,
        "suite": recipe.suite,
        "kernel": facts["kernel"],
        **({"pi5_kernel": facts["pi5_kernel"]} if "pi5_kernel" in facts else {}),  # kernel_2712.img's
        "cmdline": rootfs.cmdline(recipe, layout.disk_id),
        # Hostile facts the harness must reproduce outside the image (e.g. the uplink NIC type).
        "twin": {k: v for k, v in recipe.twin.items()
                 if k in ("uplink_nic", "board")},
        "disk_id": layout.disk_id,
        "image_bytes": st.st_size,
        "image_allocated_bytes": st.st_blocks * 512,
        "installed_packages": len(packages.splitlines()),
        "timings_s": timings,
        "build_s": round(time.monotonic() - t0, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("built image %s in %.0f s", recipe.slug, manifest["build_s"])


def _build_repo(recipe: Recipe, image_dir: Path, tmp: Path) -> None:
    t0 = time.monotonic()
    log.info("step build_repo: %d role packages + dependencies for %s", len(recipe.role_packages), recipe.arch)
    debs = tmp / "debs"
    repo.download(tmp / "work", debs, status=image_dir / "dpkg-status", arch=recipe.arch, mirror=recipe.mirror,
                  suite=recipe.suite, components=recipe.data["components"], packages=list(recipe.role_packages),
                  log=tmp / "download.log")
    n = repo.build(tmp, debs, recipe.suite, recipe.arch, recipe.data["components"], image_dir / "gnupg")
    remove_tree(tmp / "work")
    remove_tree(debs)
    manifest = {"key": recipe.repo_key, "image_key": recipe.key, "debs": n, "role_packages": list(recipe.role_packages),
                "build_s": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("step build_repo done in %.1f s (%d debs)", manifest["build_s"], n)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (make/CI timeouts) must run the same cleanup as Ctrl-C: stop mmdebstrap, drop tmp.
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="python -m testbed.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--flavor", default="testbed-ubuntu", help="images/<flavor>.yaml (default: testbed-ubuntu)")
    ap.add_argument("--arch", default=os.environ.get("CEIL_TESTBED_ARCH") or None, choices=ARCHES,
                    help="build the flavor's twin for this arch (testbed-ubuntu + amd64 -> testbed-ubuntu-amd64)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has this recipe")
    ap.add_argument("--print", dest="what", choices=["dir", "image", "key"],
                    help="only print the cached path/key (build first if missing unless --no-build)")
    ap.add_argument("--no-build", action="store_true", help="with --print: fail instead of building")
    args = ap.parse_args(argv)
    # `make testbed` builds the flavors side by side: every line names the one it is about.
    logging.basicConfig(level=logging.INFO if not args.what else logging.WARNING,
                        format=f"%(asctime)s testbed {' '.join(filter(None, (args.flavor, args.arch)))}: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.what == "key":
            print(load(args.flavor, args.arch).key)
            return 0
        tb = lookup(args.flavor, args.arch) if args.no_build else ensure(args.flavor, args.arch, args.force)
        if tb is None:
            print(f"no cached test bed for {args.flavor} {args.arch}: run make testbed", file=sys.stderr)
            return 1
    except (BuildError, RecipeError, RuntimeError) as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    if args.what == "image":
        print(tb.image)
    elif args.what == "dir":
        print(tb.dir)
    else:
        m = tb.manifest
        r = json.loads((tb.repo / "manifest.json").read_text())
        print(f"{tb.image}\n  {m['flavor']} {m['arch']} {m['suite']} kernel {m['kernel']}, "
              f"{m['installed_packages']} packages, image built in {m['build_s']} s; "
              f"repo {tb.repo.name}: {r['debs']} debs, built in {r['build_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
