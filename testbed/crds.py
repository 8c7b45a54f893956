"""The real CRDs of the add-on catalog's custom resources, from their projects' Go modules.

No chart can be fetched here, but the Go module proxy serves the projects' source, which carries
the CRD YAML their charts install (KEDA's config/crd/bases/, Flux's, Flagger's ...). An add-on
names them in its addon.yaml (`crds:` module, version, paths, kinds), at the version its chart
pins; the control-plane tests install them into the real API server and apply what the catalog
renders against them, so a wrong field fails there as it would on the cluster.

The Go module cache is the cache (content-addressed by module and version); `python -m
testbed.crds` downloads every source the catalog names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ceil.addons.catalog import Catalog, CrdSource


class CrdError(RuntimeError):
    pass


def _env(toolchain: str | None) -> dict[str, str]:
    # GOFLAGS=-mod=mod: no go.mod here; the toolchain: only where the module's go.mod needs a newer
    # Go (the go command takes that approved version from the module proxy, like a module).
    return {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": toolchain or "local"}


def download(module: str, version: str, toolchain: str | None = None) -> Path:
    """The module's folder in the Go module cache (read-only), fetched from the proxy if missing."""
    with tempfile.TemporaryDirectory(prefix="ceil-crds-") as tmp:
        done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                              capture_output=True, text=True, env=_env(toolchain), cwd=tmp, timeout=900)
    try:
        info = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        info = {"Error": done.stdout.strip()[-500:]}
    if done.returncode != 0 or "Error" in info or not info.get("Dir"):
        raise CrdError(f"the Go module proxy did not give {module}@{version}: {info.get('Error') or done.stderr.strip()}")
    return Path(info["Dir"])


def module_dir(source: CrdSource) -> Path:
    return download(source.module, source.version, source.toolchain)


def files(source: CrdSource) -> list[Path]:
    root = module_dir(source)
    found = [root / p for p in source.paths]
    missing = [str(p.relative_to(root)) for p in found if not p.is_file()]
    if missing:
        raise CrdError(f"{source.module}@{source.version} has no {', '.join(missing)}")
    return found


def catalog_sources(catalog: Catalog | None = None) -> dict[str, list[CrdSource]]:
    """{add-on: its CRD sources} for every add-on that names some."""
    catalog = catalog or Catalog()
    return {name: spec.crds for name, spec in catalog.specs.items() if spec.crds}


def main() -> int:
    for name, sources in catalog_sources().items():
        for source in sources:
            try:
                paths = files(source)
            except CrdError as e:
                print(f"crds: {name}: {e}", file=sys.stderr)
                return 1
            print(f"{name}: {source.module}@{source.version}: {len(paths)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
