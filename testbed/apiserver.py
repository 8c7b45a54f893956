"""Build (or reuse) a real Kubernetes API server for the fast test layer: `python -m testbed.apiserver`.

Why not k3s itself: the Go module proxy these machines reach refuses github.com/k3s-io/k3s
(`go mod download github.com/k3s-io/k3s@<pseudo-version>`: "403 Forbidden ... This module version
is not available"), and no k3s release asset can be downloaded here. What it does serve are the
upstream pieces k3s packages, so the fast layer runs those: `kube-apiserver` and
`kube-controller-manager` from k8s.io/kubernetes at the Kubernetes version of the k3s release
the test bed plays (STAND_IN_K3S, v1.36.1+k3s1 -> v1.36.1; the same minor release as ceil's
default `kubernetes.k3s_version`), kine (the etcd shim k3s uses for its SQLite
datastore) and k3s's helm-controller at the version that k3s release embeds. What k3s adds on
top (its supervisor and /cacerts, token joins, node passwords, the kubelet, flannel) is not in
this build, and no test claims it is.

The steps: check_tools, resolve (the k8s.io/kubernetes go.mod names its ~30 staging modules,
which a build outside that tree must pin to v0.<minor>.<patch>), build_kubernetes, build_kine,
build_helm_controller. The result lives in ${CEIL_CACHE:-~/.cache/ceil}/apiserver/<version>-<key>/:

    bin/kube-apiserver, bin/kube-controller-manager   stamped with their Kubernetes version
    bin/kine             CGO SQLite, as k3s embeds it
    bin/helm-controller  k3s's HelmChart controller (it installs its CRDs and makes install Jobs)
    manifest.json        versions, Go toolchain, wall time and peak memory of each step

The key hashes the recipe (RECIPE, the versions) and the Go toolchain: a change to any rebuilds.
The build runs in a temporary sibling directory under a lock and is renamed into place only when
complete, so concurrent runs wait for one build and a failed one leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from .cache import ensure_built
from .recipe import cache_root as recipe_cache_root

log = logging.getLogger("apiserver")

# The k3s release the test bed's control plane and k3s stand-in play. Not ceil's default
# kubernetes.k3s_version: the nodes install only a k3s binary with a digest ceil vouches for, and
# the stand-in is no such binary, so the QEMU suite's cluster.yaml names this version and pins the
# stand-in's own digest (kubernetes.k3s_sha256), as a user with a build of their own would. A unit
# test keeps it on the default's Kubernetes minor release, whose API the add-ons are checked against.
STAND_IN_K3S = "v1.36.1+k3s1"
# What each k3s release embeds, from its release notes ("Embedded Component Versions");
# STAND_IN_K3S must have a row (a unit test checks), so a new one brings its pieces.
K3S_COMPONENTS = {
    # https://github.com/k3s-io/k3s/releases/tag/v1.36.1+k3s1: Kine v0.15.0, Helm-controller v0.17.1.
    # The module proxy refuses kine v0.15.0 (403), so the newest kine it serves stands in: the
    # etcd API kine offers kube-apiserver has not changed between them.
    "v1.36.1+k3s1": {"kine": "v0.17.5", "helm_controller": "v0.17.1"},
}
# Bump when the steps below change in a way that changes the binaries.
RECIPE_FORMAT = 1
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager")
TOOLS = {
    "go": "builds kube-apiserver and kine from their Go modules (apt install golang, Go >= 1.26)",
    "gcc": "compiles SQLite into kine (CGO; apt install gcc)",
}


class BuildError(RuntimeError):
    pass


def kubernetes_version(k3s_version: str | None = None) -> str:
    """The Kubernetes release inside a k3s release: v1.36.1+k3s1 -> v1.36.1."""
    version = k3s_version or STAND_IN_K3S
    return version.split("+", 1)[0]


def staging_version(kube: str) -> str:
    """k8s.io/kubernetes v1.36.1 publishes its staging modules (k8s.io/api, ...) as v0.36.1."""
    return "v0." + kube.removeprefix("v1.")


def go_version() -> str:
    out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class Recipe:
    kubernetes: str
    kine: str
    helm_controller: str
    go: str

    @property
    def key(self) -> str:
        text = json.dumps({"format": RECIPE_FORMAT, "commands": KUBERNETES_COMMANDS, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ApiServerBuild:
    dir: Path

    @property
    def apiserver(self) -> Path:
        return self.dir / "bin" / "kube-apiserver"

    @property
    def controller_manager(self) -> Path:
        return self.dir / "bin" / "kube-controller-manager"

    @property
    def kine(self) -> Path:
        return self.dir / "bin" / "kine"

    @property
    def helm_controller(self) -> Path:
        return self.dir / "bin" / "helm-controller"

    @property
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())


def cache_root() -> Path:
    """Beside the test-bed images, under the same ${CEIL_CACHE:-~/.cache/ceil}."""
    return recipe_cache_root().parent / "apiserver"


def recipe(k3s_version: str | None = None) -> Recipe:
    version = k3s_version or STAND_IN_K3S
    if version not in K3S_COMPONENTS:
        raise BuildError(f"testbed/apiserver.py K3S_COMPONENTS has no row for k3s {version}: add the kine and"
                         f" helm-controller versions from that release's notes")
    parts = K3S_COMPONENTS[version]
    return Recipe(kubernetes_version(version), parts["kine"], parts["helm_controller"], go_version())


def final_dir(r: Recipe) -> Path:
    return cache_root() / f"{r.kubernetes}-{r.key}"


def lookup() -> ApiServerBuild | None:
    """The cached build for the current recipe, or None."""
    if shutil.which("go") is None:
        return None
    b = ApiServerBuild(final_dir(recipe()))
    return b if (b.dir / "manifest.json").is_file() else None


def check_tools() -> None:
    missing = [f"{tool} not found: it {why}" for tool, why in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise BuildError("; ".join(missing))


def ensure(force: bool = False) -> ApiServerBuild:
    check_tools()
    r = recipe()
    final = final_dir(r)
    ensure_built(final, lambda tmp: _build(r, tmp), force,
                 f"kube-apiserver {r.kubernetes}, kine {r.kine}, helm-controller {r.helm_controller} are")
    return ApiServerBuild(final)


def _go_env(gobin: Path | None = None, cgo: bool = False) -> dict[str, str]:
    env = {**os.environ, "CGO_ENABLED": "1" if cgo else "0",
           # Use the installed Go, never a toolchain fetched because a go.mod asks for a newer one:
           # the manifest and the key name the toolchain that really built the binaries.
           "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    if gobin:
        env["GOBIN"] = str(gobin)
    return env


def _run(step: str, cmd: list[str], cwd: Path, env: dict, logfile: Path, timings: dict) -> None:
    log.info("step %s: %s", step, " ".join(cmd[:3]) + (" ..." if len(cmd) > 3 else ""))
    t0 = time.monotonic()
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    timings[step] = {"wall_s": round(time.monotonic() - t0, 1),
                     # The largest single process any step has run so far (the Go linker, usually).
                     "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}
    if done.returncode != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-15:])
        raise BuildError(f"step {step} failed ({done.returncode}); the end of {logfile}:\n{tail}")
    log.info("step %s done in %.0f s", step, timings[step]["wall_s"])


def build_main(name: str, doc: str, ensure, argv: list[str] | None) -> int:
    """`python -m testbed.<name> [--force]` for a build whose ensure(force) returns one path to print."""
    ap = argparse.ArgumentParser(prog=f"python -m testbed.{name}", description=doc.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has this recipe")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name}: %(message)s", datefmt="%H:%M:%S")
    try:
        path = ensure(args.force)
    except (BuildError, subprocess.CalledProcessError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The modules k8s.io/kubernetes's go.mod replaces with its own ./staging/src/ directories."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", kubernetes_gomod, re.M)))


def wrapper_gomod(kube: str, modules: list[str], go: str) -> str:
    """A main module that builds k8s.io/kubernetes's kube-apiserver from outside its tree."""
    pins = "\n".join(f"\t{m} => {m} {staging_version(kube)}" for m in modules)
    return (f"module ceil.invalid/testbed-apiserver\n\ngo {go.removeprefix('go')}\n\n"
            f"require k8s.io/kubernetes {kube}\n\nreplace (\n{pins}\n)\n")


def build_kubernetes(kube: str, stamp: str, commands: tuple[str, ...], go: str, work: Path, bin_dir: Path,
                     env: dict, logfile: Path, timings: dict) -> list[str]:
    """k8s.io/kubernetes@`kube`'s `commands` into bin_dir, built in the wrapper module at `work`
    with `env` (GOARCH...), each stamped with version `stamp`. Returns the staging modules pinned."""
    info = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube}"],
                          capture_output=True, text=True, env=_go_env(), cwd=work)
    meta = json.loads(info.stdout or "{}")
    if info.returncode != 0 or "Error" in meta:
        raise BuildError(f"the Go module proxy does not serve k8s.io/kubernetes@{kube}: "
                         f"{meta.get('Error') or info.stderr.strip()}")
    modules = staging_modules(Path(meta["GoMod"]).read_text())
    (work / "go.mod").write_text(wrapper_gomod(kube, modules, go))
    imports = "".join(f'import _ "k8s.io/kubernetes/cmd/{c}"\n' for c in commands)
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\n{imports}")
    _run("resolve", ["go", "mod", "tidy"], work, _go_env(), logfile, timings)
    minor = kube.split(".")[1]
    ldflags = " ".join(f"-X k8s.io/component-base/version.{k}={v}" for k, v in {
        "gitVersion": stamp, "gitMajor": "1", "gitMinor": minor, "gitTreeState": "clean"}.items())
    # One `go build` per command: -o names the file; the shared packages compile once (build cache).
    for command in commands:
        _run(f"build_{command}", ["go", "build", "-trimpath", "-ldflags", f"-s -w {ldflags}",
                                  "-o", str(bin_dir / command), f"k8s.io/kubernetes/cmd/{command}"],
             work, env, logfile, timings)
    return modules


def _build(r: Recipe, tmp: Path) -> None:
    timings: dict[str, dict] = {}
    t0 = time.monotonic()
    work, bin_dir, logfile = tmp / "work", tmp / "bin", tmp / "build.log"
    work.mkdir()
    bin_dir.mkdir()
    modules = build_kubernetes(r.kubernetes, r.kubernetes, KUBERNETES_COMMANDS, r.go, work, bin_dir, _go_env(),
                               logfile, timings)
    _run("build_kine", ["go", "install", "-trimpath", "-ldflags", "-s -w", f"github.com/k3s-io/kine@{r.kine}"],
         work, _go_env(gobin=bin_dir, cgo=True), logfile, timings)
    _run("build_helm_controller", ["go", "install", "-trimpath", "-ldflags", "-s -w",
                                   f"github.com/k3s-io/helm-controller@{r.helm_controller}"],
         work, _go_env(gobin=bin_dir), logfile, timings)
    shutil.rmtree(work)
    manifest = {"kubernetes": r.kubernetes, "kine": r.kine, "helm_controller": r.helm_controller,
                "go": r.go, "key": r.key,
                "staging_modules": len(modules), "steps": timings,
                "build_s": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("built Kubernetes %s, kine %s and helm-controller %s in %.0f s",
             r.kubernetes, r.kine, r.helm_controller, manifest["build_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.apiserver", description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has this recipe")
    ap.add_argument("--print", dest="what", choices=["dir", "key"], help="only print the cached dir or key")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s apiserver: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.what == "key":
            print(recipe().key)
            return 0
        build = ensure(args.force)
    except (BuildError, subprocess.CalledProcessError, OSError) as exc:
        print(f"apiserver: {exc}", file=sys.stderr)
        return 1
    if args.what == "dir":
        print(build.dir)
        return 0
    m = build.manifest
    print(f"{build.dir}\n  kube-apiserver {m['kubernetes']}, kine {m['kine']}, helm-controller"
          f" {m['helm_controller']}, {m['go']}, built in {m['build_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
