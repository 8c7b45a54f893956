"""Build (or reuse) the QEMU test bed's k3s stand-in from upstream pieces: `python -m testbed.kubenode`.

k3s's own module is refused by the Go module proxy these machines reach (testbed/apiserver.py
says how), so the nodes of the QEMU suite cannot run k3s. They run the pieces k3s packages
instead, built here from their Go modules for the guests' architecture:

    kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
                                   k8s.io/kubernetes at the Kubernetes version of the k3s
                                   release the test bed plays (apiserver.STAND_IN_K3S),
                                   stamped with the k3s version (as k3s stamps its own)
    kine                           k3s's SQLite datastore shim (CGO SQLite)
    containerd, containerd-shim-runc-v2, ctr    github.com/containerd/containerd/v2
    runc                           github.com/opencontainers/runc (CGO: its nsenter is C)
    bridge, host-local, loopback, portmap       github.com/containernetworking/plugins

`bundle()` packs them with testbed/k3s_standin.py (what starts them on a node, from the config
and secret files ceil baked) into one self-extracting file, served where the release's k3s
binary would be: the node's install step fetches it from the router's cache, checks its digest
and runs it under the k3s unit ceil wrote, like the real binary (tests/e2e/ceil_e2e/fakes.py).
What k3s itself adds is not here, and docs/testing.md lists it: the supervisor (the stand-in
uses Kubernetes' own CSR bootstrap with the agent token's secret, after checking the CA the
token pins), flannel (a bridge per node), kube-proxy, the packaged add-ons and images.

The result lives in ${CEIL_CACHE:-~/.cache/ceil}/kubenode/<k3s version>-<arch>-<key>/, keyed by
the recipe and the Go toolchain, built in a temporary sibling under a lock.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path


from .apiserver import K3S_COMPONENTS, STAND_IN_K3S, BuildError, _go_env, _run, build_kubernetes, go_version, kubernetes_version
from .cache import ensure_built, lock
from .recipe import cache_root as recipe_cache_root

log = logging.getLogger("kubenode")

# Runtime pieces: the newest the module proxy served on 2026-12-02 of the lines k3s 1.36 ships
# (containerd 2.2, runc 1.4, CNI plugins 1.9).
CONTAINERD = "v2.2.9"
RUNC = "v1.4.4"
CNI_PLUGINS = "v1.9.1"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")
CNI = ("main/bridge", "main/loopback", "ipam/host-local", "meta/portmap")
RECIPE_FORMAT = 3  # 2: the pause image; 3: runc with seccomp
STANDIN = Path(__file__).with_name("k3s_standin.py")
# C compilers for the CGO pieces (kine's SQLite, runc's nsenter and seccomp) when the guest is
# another arch, and where that arch's libseccomp is (Debian multiarch).
CROSS_CC = {"arm64": "aarch64-linux-gnu-gcc", "amd64": "x86_64-linux-gnu-gcc"}
CROSS_PACKAGE = {"arm64": "gcc-aarch64-linux-gnu", "amd64": "gcc-x86-64-linux-gnu"}
# The C library headers for the cross compiler: only recommended by it, so an install without
# recommends (setup-host.sh's) leaves a compiler that cannot compile cgo's own files.
CROSS_LIBC = {"arm64": "libc6-dev-arm64-cross", "amd64": "libc6-dev-amd64-cross"}
TRIPLET = {"arm64": "aarch64-linux-gnu", "amd64": "x86_64-linux-gnu"}


def seccomp_pc(arch: str) -> Path:
    return Path(f"/usr/lib/{TRIPLET[arch]}/pkgconfig/libseccomp.pc")


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def recipe(arch: str, stamp: str | None = None) -> dict:
    """The pieces of the k3s release the test bed plays; `stamp` names another k3s version of the same Kubernetes
    release to stamp them with (an upgrade's target: the same source under another version, as
    the rolling-upgrade test needs, rebuilt in a minute or two from Go's build cache)."""
    version = STAND_IN_K3S
    stamp = stamp or version
    if version not in K3S_COMPONENTS:
        raise BuildError(f"testbed/apiserver.py K3S_COMPONENTS has no row for k3s {version}")
    if kubernetes_version(stamp) != kubernetes_version(version):
        raise BuildError(f"k3s {stamp} is another Kubernetes release than the stand-in's {version}: it"
                         f" builds {kubernetes_version(version)} only (stamped with any k3s version of it)")
    return {"format": RECIPE_FORMAT, "k3s": stamp, "kubernetes": kubernetes_version(version),
            "kine": K3S_COMPONENTS[version]["kine"], "containerd": CONTAINERD, "runc": RUNC,
            "cni_plugins": CNI_PLUGINS, "commands": KUBERNETES_COMMANDS, "arch": arch, "go": go_version()}


def key(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:12]


def cache_root() -> Path:
    return recipe_cache_root().parent / "kubenode"


def final_dir(r: dict) -> Path:
    return cache_root() / f"{r['k3s']}-{r['arch']}-{key(r)}"


def lookup(arch: str, stamp: str | None = None) -> Path | None:
    """The cached build's directory for this arch (and k3s version stamp: STAND_IN_K3S's by default), or None."""
    if shutil.which("go") is None:
        return None
    final = final_dir(recipe(arch, stamp))
    return final if (final / "manifest.json").is_file() else None


def cross_headers_work(arch: str) -> bool:
    """Whether the cross compiler finds its C library (cgo's runtime includes stdint.h)."""
    done = subprocess.run([CROSS_CC[arch], "-E", "-x", "c", "-"], input="#include <stdint.h>\n",
                          capture_output=True, text=True)
    return done.returncode == 0


def check_tools(arch: str) -> None:
    missing = [f"{tool} not found: {why}" for tool, why in {
        "go": "it builds every piece from its Go module (Go >= 1.26)",
        "zstd": "it compresses the bundle (apt install zstd)",
    }.items() if shutil.which(tool) is None]
    if arch != host_arch() and shutil.which(CROSS_CC[arch]) is None:
        missing.append(f"{CROSS_CC[arch]} not found: it compiles kine's SQLite and runc's nsenter for"
                       f" {arch} guests (apt install {CROSS_PACKAGE[arch]}; make setup-test installs it)")
    elif arch != host_arch() and not cross_headers_work(arch):
        missing.append(f"{CROSS_CC[arch]} cannot find the C library's headers for {arch} (stdint.h): apt install"
                       f" {CROSS_LIBC[arch]} (only recommended by {CROSS_PACKAGE[arch]}; make setup-test installs it)")
    elif shutil.which("gcc") is None:
        missing.append("gcc not found: it compiles kine's SQLite and runc's nsenter (apt install gcc)")
    if not seccomp_pc(arch).is_file() or shutil.which("pkg-config") is None:
        package = "libseccomp-dev" if arch == host_arch() else f"libseccomp-dev:{arch} (after dpkg --add-architecture {arch})"
        missing.append(f"libseccomp for {arch} not found ({seccomp_pc(arch)}): runc is built with seccomp, as k3s"
                       f" builds it (apt install pkg-config {package}; make setup-test installs it)")
    if missing:
        raise BuildError("; ".join(missing))


def ensure(arch: str, force: bool = False, stamp: str | None = None) -> Path:
    check_tools(arch)
    r = recipe(arch, stamp)
    final = final_dir(r)
    return ensure_built(final, lambda tmp: _build(r, tmp), force, f"the k3s stand-in's pieces for {arch} ({r['k3s']}) are")


def _env(r: dict, bin_dir: Path | None = None, cgo: bool = False) -> dict[str, str]:
    env = {**_go_env(gobin=None, cgo=cgo), "GOOS": "linux", "GOARCH": r["arch"]}
    if cgo and r["arch"] != host_arch():
        env["CC"] = CROSS_CC[r["arch"]]
    if bin_dir:
        # `go install` refuses GOBIN for another GOARCH: built into a folder, copied below.
        env["GOBIN"] = str(bin_dir) if r["arch"] == host_arch() else ""
    return env


def _install(step: str, packages: list[str], r: dict, work: Path, bin_dir: Path, logfile: Path,
             timings: dict, cgo: bool = False, tags: str = "") -> None:
    """`go install pkg@version ...` into bin_dir (for another arch: GOPATH/bin/linux_<arch>/)."""
    env = _env(r, bin_dir, cgo)
    if cgo and r["arch"] != host_arch():
        env["PKG_CONFIG_LIBDIR"] = str(seccomp_pc(r["arch"]).parent)
    gopath = work / "gopath"
    if r["arch"] != host_arch():
        env["GOPATH"] = str(gopath)
        env["GOMODCACHE"] = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                                           check=True).stdout.strip()
    _run(step, ["go", "install", "-trimpath", *(["-tags", tags] if tags else []), "-ldflags", "-s -w", *packages],
         work, env, logfile, timings)
    if r["arch"] != host_arch():
        for f in (gopath / "bin" / f"linux_{r['arch']}").iterdir():
            shutil.move(str(f), bin_dir / f.name)


def _build(r: dict, tmp: Path) -> None:
    timings: dict[str, dict] = {}
    t0 = time.monotonic()
    work, bin_dir, logfile = tmp / "work", tmp / "bin", tmp / "build.log"
    work.mkdir()
    bin_dir.mkdir()
    # Stamped with the k3s version, as k3s stamps the components it embeds: the kubelet reports
    # it as the node's version, which ceil's upgrade and skew checks read.
    build_kubernetes(r["kubernetes"], r["k3s"], KUBERNETES_COMMANDS, r["go"], work, bin_dir, _env(r), logfile, timings)
    _install("build_kine", [f"github.com/k3s-io/kine@{r['kine']}"], r, work, bin_dir, logfile, timings, cgo=True)
    _install("build_containerd", [f"github.com/containerd/containerd/v2/cmd/{c}@{r['containerd']}"
                                  for c in ("containerd", "containerd-shim-runc-v2", "ctr")],
             r, work, bin_dir, logfile, timings)
    # With seccomp, as k3s builds it: containerd gives every pod sandbox a seccomp profile, which
    # a runc without it refuses ("config provided but seccomp not supported").
    _install("build_runc", [f"github.com/opencontainers/runc@{r['runc']}"], r, work, bin_dir, logfile, timings,
             cgo=True, tags="seccomp")
    _install("build_cni", [f"github.com/containernetworking/plugins/plugins/{p}@{r['cni_plugins']}" for p in CNI],
             r, work, bin_dir, logfile, timings)
    _pause_image(r, work, tmp / "images", logfile, timings)
    shutil.rmtree(work, ignore_errors=True)
    manifest = {**r, "key": key(r), "steps": timings, "build_s": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "binaries": sorted(p.name for p in bin_dir.iterdir())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("built the k3s stand-in's pieces for %s in %.0f s", r["arch"], manifest["build_s"])


# The sandbox image every pod needs (containerd's pinned sandbox, k3s's default name). No image
# can be pulled here, so the build makes one: a static program that waits for SIGTERM, as pause
# does, in a FROM-scratch OCI image the stand-in imports into containerd at start, the way k3s
# imports the air-gap images tarball.
PAUSE_IMAGE = "docker.io/rancher/mirrored-pause:3.6"
PAUSE_SOURCE = """package main

import (
	"os"
	"os/signal"
	"syscall"
)

// ceil's test-bed pause: holds a pod's namespaces until the kubelet stops the sandbox.
func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
"""


def _pause_image(r: dict, work: Path, images: Path, logfile: Path, timings: dict) -> None:
    from ceil import oci

    src = work / "pause"
    src.mkdir()
    (src / "go.mod").write_text(f"module ceil.invalid/pause\n\ngo {r['go'].removeprefix('go')}\n")
    (src / "main.go").write_text(PAUSE_SOURCE)
    _run("build_pause", ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(src / "pause"), "."],
         src, _env(r), logfile, timings)
    image = oci.scratch_image({"pause": (src / "pause").read_bytes()}, arch=r["arch"], cmd=["/pause"],
                              executable=("pause",))
    images.mkdir()
    with tarfile.open(images / "pause.tar", "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        for digest, data in {**image.blobs, image.digest: image.manifest}.items():
            add(f"blobs/sha256/{digest.split(':')[1]}", data)
        add("index.json", json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest),
            "platform": {"os": "linux", "architecture": r["arch"]},
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                            "org.opencontainers.image.ref.name": PAUSE_IMAGE.rsplit(":", 1)[1]}}]}).encode())


# ---- the bundle: one file where the release's k3s binary would be --------------------------

HEADER = """#!/bin/sh
# ceil's QEMU test-bed stand-in for k3s {version}: upstream Kubernetes pieces built from their Go
# modules (testbed/kubenode.py), started by testbed/k3s_standin.py. Not k3s: no supervisor, no
# flannel, no packaged add-ons. Unpacks itself under /var/lib/rancher/k3s/data/, as k3s does.
set -eu
case "${{1:-}}" in --version|-v|version)
    echo "k3s version {version} (ceil test-bed stand-in: upstream Kubernetes pieces)"; exit 0 ;;
esac
DATA=/var/lib/rancher/k3s/data/ceil-{payload}
if [ ! -f "$DATA/.unpacked" ]; then
    rm -rf "$DATA.part"
    mkdir -p "$DATA.part"
    tail -n +{skip} "$0" | zstd -dcq | tar -x -C "$DATA.part"
    touch "$DATA.part/.unpacked"
    rm -rf "$DATA"
    mv "$DATA.part" "$DATA"
fi
K3S_VERSION='{version}' CEIL_STANDIN_DATA="$DATA" exec python3 "$DATA/k3s_standin.py" "$@"
"""


def payload(build: Path) -> Path:
    """bin/ and the starter, tar+zstd, kept beside the build (remade when the starter changes)."""
    digest = hashlib.sha256(STANDIN.read_bytes() + (build / "manifest.json").read_bytes()).hexdigest()[:12]
    path = build / f"payload-{digest}.tar.zst"
    if path.is_file():
        return path
    with lock(build / ".payload.lock"):
        if path.is_file():
            return path
        tmp = path.with_suffix(".part")
        tar = build / f".payload-{os.getpid()}.tar"
        with tarfile.open(tar, "w") as t:
            t.add(STANDIN, "k3s_standin.py")
            t.add(build / "bin", "bin")
            t.add(build / "images", "images")
        subprocess.run(["zstd", "-q", "-f", "-T0", "-6", str(tar), "-o", str(tmp)], check=True)
        tar.unlink()
        for old in build.glob("payload-*.tar.zst"):
            old.unlink()
        tmp.rename(path)
    return path


def bundle(arch: str, version: str, dest: Path) -> Path:
    """Write the self-extracting stand-in for k3s `version` to dest (executable). The build of
    STAND_IN_K3S must exist (`make kubenode`); another version of its Kubernetes release is
    built here from it (a relink: the packages are in Go's build cache)."""
    if lookup(arch) is None:
        raise BuildError(f"the k3s stand-in for {arch} guests is not built: run `make kubenode ARCH={arch}`"
                         f" (python -m testbed.kubenode --arch {arch}; about 10 min cold)")
    build = lookup(arch, version) or ensure(arch, stamp=version)
    data = payload(build)
    tag = data.stem.split("-")[1].split(".")[0]
    text = HEADER.format(version=version, payload=tag, skip=0)
    text = HEADER.format(version=version, payload=tag, skip=text.count("\n") + 1)
    tmp = dest.with_name(f".{dest.name}.part")
    with open(tmp, "wb") as out, open(data, "rb") as src:
        out.write(text.encode())
        shutil.copyfileobj(src, out, 1 << 20)
    tmp.chmod(0o755)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.kubenode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=os.environ.get("ARCH") or "host", choices=[*sorted(CROSS_CC), "host"],
                    help="the guests' architecture (default: $ARCH, else this machine's)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has this recipe")
    ap.add_argument("--print", dest="what", choices=["dir"], help="only print the cached dir")
    args = ap.parse_args(argv)
    if args.arch == "host":
        args.arch = host_arch()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kubenode: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.what == "dir":
            found = lookup(args.arch)
            if found is None:
                print(f"kubenode: not built for {args.arch}", file=sys.stderr)
                return 1
            print(found)
            return 0
        build = ensure(args.arch, args.force)
        payload(build)
    except (BuildError, subprocess.CalledProcessError, OSError) as exc:
        print(f"kubenode: {exc}", file=sys.stderr)
        return 1
    m = json.loads((build / "manifest.json").read_text())
    print(f"{build}\n  Kubernetes {m['kubernetes']} (stamped {m['k3s']}), kine {m['kine']}, containerd"
          f" {m['containerd']}, runc {m['runc']}, CNI plugins {m['cni_plugins']}, {m['arch']}, built in {m['build_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
