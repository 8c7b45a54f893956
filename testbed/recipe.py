"""The test-bed recipe: what one build needs to know, and the cache key derived from it.

An image is fully described by (recipe.yaml, the modules that produce it, the flavor's facts,
arch), its local apt repository additionally by role-packages.txt. Each cache key is a hash over
exactly those, so a warm cache is reused until one of them changes, and nothing else (time,
host) invalidates it; adding a role package rebuilds only the repository.
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
    arch: str
    boot_label: str
    boot_mount: str
    root_label: str
    seed_method: str
    cmdline_file: str
    network: str

    @property
    def family(self) -> str:
        """testbed-ubuntu for both testbed-ubuntu (arm64) and testbed-ubuntu-amd64."""
        return self.name.removesuffix(f"-{self.arch}")

    @classmethod
    def for_arch(cls, name: str, arch: str | None) -> "Flavor":
        """The flavor file for `arch`: the arm64 file and its `-amd64` twin are one family."""
        first = cls.load(name)
        if arch is None or first.arch == arch:
            return first
        for candidate in (f"{first.family}-{arch}", first.family):
            if (IMAGES_DIR / f"{candidate}.yaml").is_file():
                other = cls.load(candidate)
                if other.arch == arch:
                    return other
        raise RecipeError(f"flavor {name!r} is {first.arch}; no {arch} twin ({first.family}-{arch}.yaml) in {IMAGES_DIR}")

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
                arch=data["arch"],
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
    key: str        # the image's cache key
    repo_key: str   # the local repository's (image key + role packages)

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

    @property
    def twin(self) -> dict:
        """The facts of the mimicked image recipe.yaml lists for this flavor's family (`flavors:`)."""
        return self.data.get("flavors", {}).get(self.flavor.family, {})

    def packages(self) -> list[str]:
        kernel_16k = self.twin.get("kernel_16k", {}).get(self.arch)
        return [*self.data["packages"], self.data["kernel"][self.arch], *([kernel_16k] if kernel_16k else []),
                *self.net["packages"]]

    @property
    def slug(self) -> str:
        return f"{self.flavor.family}-{self.arch}"


def read_role_packages(path: Path = TESTBED_DIR / "role-packages.txt") -> tuple[str, ...]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return tuple(names)


# Only what shapes the output goes into a key; the CLI and this module do not.
IMAGE_INPUTS = ("recipe.yaml", "rootfs.py", "disk.py")
REPO_INPUTS = ("role-packages.txt", "repo.py")


def _digest(seed: str, names: tuple[str, ...]) -> str:
    h = hashlib.sha256(seed.encode())
    for name in names:
        h.update(f"\n{name}\n".encode())
        h.update((TESTBED_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def load(flavor_name: str, arch: str | None = None) -> Recipe:
    """The recipe for a flavor; `arch` picks the flavor's twin for that arch (default: its own)."""
    if arch is not None and arch not in ARCHES:
        raise RecipeError(f"arch {arch!r}: expected one of {', '.join(ARCHES)}")
    flavor = Flavor.for_arch(flavor_name, arch)
    arch = flavor.arch
    data = yaml.safe_load((TESTBED_DIR / "recipe.yaml").read_text())
    # The flavor's facts the builder uses, not its file: a new catalog field (or a comment)
    # does not force a 20-minute rebuild.
    key = _digest(f"arch={arch}\n{flavor!r}", IMAGE_INPUTS)
    # The repository is rebuilt (seconds) when the role packages change; the image is not.
    repo_key = _digest(key, REPO_INPUTS)
    return Recipe(flavor, arch, data, read_role_packages(), key, repo_key)


def cache_root() -> Path:
    base = os.environ.get("CEIL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ceil")
    return Path(base) / "testbed"
