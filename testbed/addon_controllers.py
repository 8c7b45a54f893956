"""Build (or reuse) add-on controllers for the fast layer: `python -m testbed.addon_controllers`.

No image can be pulled here, so where an add-on's own controller can run as a process beside the
control-plane layer's real API server, the fast layer builds it from the Go module of the version
the add-on installs and runs it (tests/apiserver/test_gitops_flux.py, test_custom_metrics_hpa.py,
test_keda_scale_to_zero.py):

- the gitops add-on's Flux source-controller and kustomize-controller, at the versions the add-on
  names for its CRDs (addons/gitops/addon.yaml `crds:`), so a bump there builds the new ones;
- the custom-metrics add-on's prometheus-adapter, at the appVersion of the chart it installs
  (ADAPTER_VERSION, stated beside ADAPTER_CHART; a unit test fails when adapter.yaml.j2 installs
  another chart version than ADAPTER_CHART, so the two are updated together);
- the keda add-on's KEDA operator and the HTTP add-on's interceptor and external scaler, at the
  versions the add-on names for its CRDs (test_keda_scale_to_zero.py).

Each builds from a writable copy of its module's source, not with `go install module@version`:
the proxy refuses prometheus-adapter's version list, which `go install` asks for, and each Flux
controller's go.mod points its `api` submodule at ./api, a directory the module zip leaves out,
so the copy drops that replace and requires the api module of the same version instead. One module
the Flux v1.9.6 tags ask for is refused by the proxy (403); the nearest version it serves stands
in (SUBSTITUTES). Cold, on two cores beside the unit tests: about 2.5 min per Flux controller,
1.5 min for the adapter, 3 min for the interceptor and scaler together and 8 min for the KEDA
operator (2.7 GiB peak: it links every scaler KEDA has).

The result lives in ${CEIL_CACHE:-~/.cache/ceil}/addon-controllers/<key>/bin/<name>, keyed by the
modules, versions, substitutes and the Go toolchain, built in a temporary sibling under a lock
like the API server build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import crds
from .apiserver import BuildError, _go_env, _run, build_main, check_tools, go_version
from .cache import ensure_built
from .recipe import cache_root as recipe_cache_root

log = logging.getLogger("addon-controllers")

FLUX = "github.com/fluxcd/"
FLUX_CONTROLLERS = ("source-controller", "kustomize-controller")
KEDA, KEDA_HTTP = "github.com/kedacore/keda/v2", "github.com/kedacore/http-add-on"
# The appVersion of chart prometheus-adapter 5.3.0, which addons/custom-metrics/adapter.yaml.j2
# installs (registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0).
ADAPTER_CHART, ADAPTER_VERSION = "5.3.0", "v0.12.0"
# {module: (the version a controller's go.mod asks for, the version built instead)}. The proxy
# refuses github.com/fluxcd/pkg/artifact v0.18.3 ("This module version is not available") and
# serves v0.18.0 of the same minor line. A substitute applies only to the version it names: a
# controller that asks for another one builds with what it asks for.
SUBSTITUTES = {"github.com/fluxcd/pkg/artifact": ("v0.18.3", "v0.18.0")}
RECIPE_FORMAT = 1


@dataclass(frozen=True)
class Controller:
    name: str  # the binary's name in bin/
    module: str
    version: str
    package: str = "."  # the main package, inside the module
    api_submodule: bool = False  # go.mod replaces <module>/api => ./api (Flux's controllers)


@dataclass(frozen=True)
class Recipe:
    controllers: tuple[Controller, ...]
    go: str

    @property
    def key(self) -> str:
        text = json.dumps({"format": RECIPE_FORMAT, "controllers": [c.__dict__ for c in self.controllers],
                           "substitutes": SUBSTITUTES, "go": self.go}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def controllers() -> tuple[Controller, ...]:
    """What the fast layer runs: Flux's two at the gitops add-on's CRD versions, the adapter, and
    KEDA's operator with the HTTP add-on's interceptor and scaler at the keda add-on's CRD versions."""
    from ceil.addons.catalog import Catalog

    catalog = Catalog()
    flux = _crd_versions(catalog, "gitops", [FLUX + c for c in FLUX_CONTROLLERS])
    keda = _crd_versions(catalog, "keda", [KEDA, KEDA_HTTP])
    return (*(Controller(c, FLUX + c, flux[FLUX + c], api_submodule=True) for c in FLUX_CONTROLLERS),
            Controller("prometheus-adapter", "sigs.k8s.io/prometheus-adapter", ADAPTER_VERSION, "./cmd/adapter"),
            Controller("keda-operator", KEDA, keda[KEDA], "./cmd/operator"),
            *(Controller(c, KEDA_HTTP, keda[KEDA_HTTP], f"./{c}") for c in ("interceptor", "scaler")))


def _crd_versions(catalog, addon: str, modules: list[str]) -> dict[str, str]:
    """{module: version} as addons/<addon>/addon.yaml names them for its CRDs; every one must be named."""
    named = {s.module: s.version for s in catalog.get(addon).crds}
    missing = [m for m in modules if m not in named]
    if missing:
        raise BuildError(f"addons/{addon}/addon.yaml names no CRDs of {', '.join(missing)}:"
                         " the fast layer builds the controllers of the versions named there")
    return named


def recipe() -> Recipe:
    return Recipe(controllers(), go_version())


def cache_root() -> Path:
    return recipe_cache_root().parent / "addon-controllers"


def final_dir(r: Recipe) -> Path:
    return cache_root() / r.key


def lookup() -> Path | None:
    """The cached bin/ folder holding every controller for the current recipe, or None."""
    if shutil.which("go") is None:
        return None
    final = final_dir(recipe())
    return final / "bin" if (final / "manifest.json").is_file() else None


def substitutions(gomod: str) -> dict[str, str]:
    """{module: version built instead} for each SUBSTITUTES row whose refused version `gomod` asks for."""
    found = {}
    for module, (refused, served) in SUBSTITUTES.items():
        if re.search(rf"^\s*(require\s+)?{re.escape(module)}\s+{re.escape(refused)}\s*(//.*)?$", gomod, re.M):
            found[module] = served
    return found


def _source(module: str, version: str, dest: Path) -> Path:
    """The module's source, writable, at dest."""
    try:
        shutil.copytree(crds.download(module, version), dest)
    except crds.CrdError as e:
        raise BuildError(str(e)) from e
    for path in [dest, *dest.rglob("*")]:  # the module cache is read-only
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return dest


def build_controller(c: Controller, tmp: Path, timings: dict) -> dict[str, str]:
    """bin/<c.name> from the module's source; returns the substitutions made."""
    src = tmp / "src" / f"{c.module.replace('/', '_')}@{c.version}"
    if not src.exists():  # one copy per module: the HTTP add-on's interceptor and scaler share one
        _source(c.module, c.version, src)
    subs = substitutions((src / "go.mod").read_text())
    edits = [*((f"-dropreplace={c.module}/api", f"-require={c.module}/api@{c.version}") if c.api_submodule else ()),
             *(f"-replace={m}={m}@{v}" for m, v in subs.items())]
    env = {**_go_env(), "GOFLAGS": "-buildvcs=false -mod=mod"}
    logfile = tmp / "build.log"
    if edits:
        _run(f"resolve_{c.name}", ["go", "mod", "edit", *edits], src, env, logfile, timings)
    _run(f"build_{c.name}", ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "bin" / c.name),
                             c.package], src, env, logfile, timings)
    return subs


def _build(r: Recipe, tmp: Path) -> None:
    timings: dict[str, dict] = {}
    t0 = time.monotonic()
    (tmp / "bin").mkdir()
    (tmp / "src").mkdir()
    substituted = {c.name: build_controller(c, tmp, timings) for c in r.controllers}
    shutil.rmtree(tmp / "src")
    manifest = {"controllers": {c.name: f"{c.module}@{c.version}" for c in r.controllers},
                "substituted": substituted, "go": r.go, "key": r.key, "steps": timings,
                "build_s": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("built %s in %.0f s", _names(r), manifest["build_s"])


def _names(r: Recipe) -> str:
    return ", ".join(f"{c.name} {c.version}" for c in r.controllers)


def ensure(force: bool = False) -> Path:
    check_tools()
    r = recipe()
    final = final_dir(r)
    return ensure_built(final, lambda tmp: _build(r, tmp), force, f"{_names(r)} are") / "bin"


def main(argv: list[str] | None = None) -> int:
    return build_main("addon_controllers", __doc__, ensure, argv)


if __name__ == "__main__":
    sys.exit(main())
