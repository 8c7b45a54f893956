"""Build (or reuse) the Helm CLI for the tests: `python -m testbed.helm`.

Users package and lint their charts with their own helm; the app-delivery tests need one to
prove what `bake.py app` does with real Helm (lint and template the demo chart, pull the chart
it pushed back out of the registry by digest), and no release download can be reached here. The
Go module proxy serves helm.sh/helm/v3, whose go.mod has no replace directives, so a plain
`go install` builds it (about 3.5 min on two cores, 0.9 GiB peak).

Helm 3, not 4: k3s's helm-controller runs Helm 3 (klipper-helm) for the HelmChart the cluster
installs from, and an OCI chart is the same artifact for both.

The result lives in ${CEIL_CACHE:-~/.cache/ceil}/helm/<version>-<key>/bin/helm, keyed like the
API server build (recipe and Go toolchain), built in a temporary sibling under a lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from .apiserver import _go_env, _run, build_main, check_tools, go_version
from .cache import ensure_built
from .recipe import cache_root as recipe_cache_root

log = logging.getLogger("helm")

HELM_VERSION = "v3.22.0"  # the newest v3 the module proxy served on 2026-11-25
RECIPE_FORMAT = 1


def key(version: str = HELM_VERSION) -> str:
    text = json.dumps({"format": RECIPE_FORMAT, "helm": version, "go": go_version()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return recipe_cache_root().parent / "helm"


def final_dir() -> Path:
    return cache_root() / f"{HELM_VERSION}-{key()}"


def lookup() -> Path | None:
    """The cached helm binary for this recipe, or None."""
    if shutil.which("go") is None:
        return None
    final = final_dir()  # asks `go env` once
    return final / "bin" / "helm" if (final / "manifest.json").is_file() else None


def _build(tmp: Path) -> None:
    timings: dict[str, dict] = {}
    t0 = time.monotonic()
    (tmp / "bin").mkdir()
    # helm stamps its version from this variable; without it `helm version` says "v3.22".
    stamp = f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    _run("build_helm", ["go", "install", "-trimpath", "-ldflags", f"-s -w {stamp}",
                        f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
         tmp, _go_env(gobin=tmp / "bin"), tmp / "build.log", timings)
    manifest = {"helm": HELM_VERSION, "go": go_version(), "key": key(), "steps": timings,
                "build_s": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def ensure(force: bool = False) -> Path:
    check_tools()
    final = final_dir()
    return ensure_built(final, _build, force, f"helm {HELM_VERSION} is") / "bin" / "helm"


def main(argv: list[str] | None = None) -> int:
    return build_main("helm", __doc__, ensure, argv)


if __name__ == "__main__":
    sys.exit(main())
