"""The test-bed recipe: what one build needs to know, and the cache key derived from it.

A build is fully described by (recipe.yaml, role-packages.txt, the modules that produce the
output, the flavor file, arch). The cache key is a hash over exactly those, so a warm cache is reused until one of
them changes, and nothing else (time, host) invalidates it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

TESTBED_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTBED_DIR.parent
IMAGES_DIR = REPO_ROOT / "images"
ARCHES = ("arm64", "amd64")


class RecipeError(Exception):
    """The recipe, the flavor file or the arguments are not usable; the message says why."""


@dataclass(frozen=True)
class Flavor:
    """The facts of a test-bed flavor file (images/testbed-*.yaml) that the builder uses."""

    name: str
    boot_label: str
    boot_mount: str
    root_label: str
    seed_method: str
    cmdline_file: str
    network: str

    @classmethod
    def load(cls, name: str) -> "Flavor":
        path = IMAGES_DIR / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in IMAGES_DIR.glob("testbed-*.yaml"))
            raise RecipeError(f"flavor {name!r}: no file {path} (test-bed flavors: {', '.join(known)})")
        data = yaml.safe_load(path.read_text())
        try:
            parts = data["partitions"]
            if parts["boot"]["index"] != 1 or parts["root"]["index"] != 2:
                raise RecipeError(f"{path}: the test bed lays out boot as partition 1 and root as 2")
            return cls(
                name=data["name"],
                boot_label=parts["boot"]["label"],
                boot_mount=parts["boot"]["mount"],
                root_label=parts["root"]["label"],
                seed_method=data["seed"]["method"],
                cmdline_file=data["cmdline"],
                network=data["network"],
            )
        except KeyError as exc:
            raise RecipeError(f"{path}: missing key {exc}") from None


@dataclass(frozen=True)
class Recipe:
    flavor: Flavor
    arch: str
    data: dict  # recipe.yaml as parsed
    role_packages: tuple[str, ...]
    key: str

    @property
    def suite(self) -> str:
        return self.data["suite"]

    @property
    def mirror(self) -> str:
        return self.data["mirror"]

    @property
    def net(self) -> dict:
        try:
            return self.data["network"][self.flavor.network]
        except KeyError:
            raise RecipeError(
                f"recipe.yaml: no network entry {self.flavor.network!r} "
                f"(flavor {self.flavor.name}); known: {', '.join(self.data['network'])}"
            ) from None

    def packages(self) -> list[str]:
        return [*self.data["packages"], self.data["kernel"][self.arch], *self.net["packages"]]

    @property
    def slug(self) -> str:
        return f"{self.flavor.name}-{self.arch}"


def read_role_packages(path: Path = TESTBED_DIR / "role-packages.txt") -> tuple[str, ...]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return tuple(names)


def _key_inputs() -> list[Path]:
    # Only the modules that shape the output; the CLI and this module do not.
    code = [TESTBED_DIR / f for f in ("rootfs.py", "disk.py", "repo.py")]
    return [TESTBED_DIR / "recipe.yaml", TESTBED_DIR / "role-packages.txt", *code]


def load(flavor_name: str, arch: str) -> Recipe:
    if arch not in ARCHES:
        raise RecipeError(f"arch {arch!r}: expected one of {', '.join(ARCHES)}")
    flavor = Flavor.load(flavor_name)
    data = yaml.safe_load((TESTBED_DIR / "recipe.yaml").read_text())
    h = hashlib.sha256()
    h.update(f"arch={arch}\n".encode())
    # The flavor's facts the builder uses, not its file: a new catalog field (or a comment)
    # does not force a 20-minute rebuild.
    h.update(repr(flavor).encode())
    for path in _key_inputs():
        h.update(f"{path.relative_to(REPO_ROOT)}\n".encode())
        h.update(path.read_bytes())
    return Recipe(flavor, arch, data, read_role_packages(), h.hexdigest()[:16])


def cache_root() -> Path:
    base = os.environ.get("CEIL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ceil")
    return Path(base) / "testbed"
