"""The image catalog: one YAML file per base-image flavor in images/.

A flavor is data, not code: where to download it, how its digest is known, and the facts the
bake relies on (partition indexes and labels, where the FAT is mounted, how cloud-init finds
the seed, which network stack renders network-config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import yamlfile
from .errors import ConfigError

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Partition(_Model):
    index: int = Field(ge=1, le=4)
    label: str
    mount: str | None = None


class Partitions(_Model):
    boot: Partition
    root: Partition


class Seed(_Model):
    method: Literal["fs_label", "seedfrom", "seed_dir"]


class Pi5Kernel(_Model):
    """An image's 4K-page kernel and its initramfs on the boot partition, which config.txt can
    choose for a Pi 5 (files on the FAT, e.g. kernel8.img and initramfs8)."""

    kernel: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    initramfs: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class Updates(_Model):
    """Where the publisher lists its images, to tell whether a newer one exists (`flavors --check`):
    `pattern`'s first group is the version, read from the index page and from the flavor's url."""

    index_url: str
    pattern: str


class Flavor(_Model):
    name: str
    description: str
    arch: Literal["arm64", "armhf", "amd64"]
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    checksum_url: str | None = None
    # The same file elsewhere, tried in order when `url` fails: publishers move or drop a release's
    # folder when the next one comes (Canonical keeps only the newest point release in place).
    # Only with a pinned sha256, which decides whether bytes from anywhere are the image.
    mirrors: list[str] = Field(default_factory=list)
    compression: Literal["none", "xz", "zip", "gz"] = "none"
    partitions: Partitions
    seed: Seed
    cmdline: str | None = "cmdline.txt"
    # The command lines of the other boot slots (Ubuntu 26.04's new/ and old/), edited too where
    # the image has them: a pending new/ slot is what the next boot runs (a "double boot" through
    # the Pi's tryboot), and after it validates it becomes current/ for good.
    other_cmdlines: list[str] = Field(default_factory=list)
    network: Literal["netplan-networkd", "netplan-nm", "ifupdown"]
    # The name a USB Ethernet adapter (a router's wired uplink: a Pi has one built-in port, the
    # LAN) gets on this OS: "eth1" where predictable names are off (Raspberry Pi OS, HypriotOS),
    # "enx*" where udev names USB NICs by their MAC (Ubuntu: 73-usb-net-by-mac). A trailing *
    # matches any name with that prefix (netplan `match`, nftables, dnsmasq take the pattern).
    usb_ethernet: str = Field(default="eth1", pattern=r"^[a-zA-Z0-9_.:-]{1,15}$|^[a-zA-Z0-9_.:-]{1,14}\*$")
    cloud_init: Literal["modern", "legacy"] = "modern"
    # Fields of the image's os-release (os-release(5)) naming the OS release this flavor is written
    # for: a base image whose fields differ is refused before anything is baked. Only fields the
    # publisher's image is known to carry; empty: not checked.
    os_release: dict[str, str] = Field(default_factory=dict)
    # CPython of the image ("cp312"): PiWatch's wheels are bundled for it. None: no PiWatch bundle.
    python_tag: str | None = Field(default=None, pattern=r"^cp3\d+$")
    # Debian packages that give gpiozero a real pin backend on this OS (PiWatch's venv sees the
    # system's site-packages); without one it falls back to mock pins. Empty for QEMU twins.
    gpio_packages: list[str] = Field(default_factory=list)
    # Where a Pi 5 boots a 16K-page kernel by default (Raspberry Pi OS: kernel_2712.img), the
    # image's 4K-page one, which the nodes boot instead when kubernetes.pi5_page_size is 4k.
    # None: the OS runs 4K pages on a Pi 5 already (Ubuntu), or does not run on one (HypriotOS).
    pi5_4k_kernel: Pi5Kernel | None = None
    # Extra kernel arguments a test bed needs (e.g. net.ifnames=0); empty for real flavors.
    kernel_args: list[str] = Field(default_factory=list)
    updates: Updates | None = None
    # QEMU twins of the real flavors, built by testbed/: not offered to users by `flavors`.
    test_only: bool = False

    @model_validator(mode="after")
    def _mirrors_need_a_pin(self) -> "Flavor":
        if self.mirrors and not self.sha256:
            raise ValueError("lists mirrors but pins no sha256: a checksum file vouches for its own folder only;"
                             " pin the image's sha256 or drop the mirrors")
        return self

    @property
    def wheel_platforms(self) -> list[str]:
        """pip --platform tags for binary wheels that run on this flavor's CPU."""
        return {
            "arm64": ["manylinux2014_aarch64", "manylinux_2_28_aarch64"],
            "armhf": ["manylinux2014_armv7l", "linux_armv7l"],
            "amd64": ["manylinux2014_x86_64", "manylinux_2_28_x86_64"],
        }[self.arch]

    @property
    def boot_mount(self) -> str:
        return self.partitions.boot.mount or "/boot/firmware"


def _names(images_dir: Path) -> set[str]:
    return {p.stem for p in images_dir.glob("*.yaml")}


def available(images_dir: Path = IMAGES_DIR) -> list[str]:
    return sorted(_names(images_dir))


def for_pis(images_dir: Path = IMAGES_DIR) -> list[str]:
    """The flavors for real cards: every one but the QEMU test beds (test_only)."""
    return [name for name in available(images_dir) if not load_flavor(name, images_dir).test_only]


def unknown_flavor(name: str, images_dir: Path = IMAGES_DIR) -> str | None:
    """Why `name` is no flavor (cluster.yaml's check and load_flavor's), or None. Looked up among
    the folder's files, not opened by name: a name of 300 characters made the file system refuse
    the path (a traceback)."""
    if name in _names(images_dir):
        return None
    return (f"{name!r} is not a known base image; flavors for a Raspberry Pi: {', '.join(for_pis(images_dir))}"
            f" (each is a file in {images_dir}; `python bake.py flavors` describes them)")


def load_flavor(name: str, images_dir: Path = IMAGES_DIR) -> Flavor:
    path = images_dir / f"{name}.yaml"
    if problem := unknown_flavor(name, images_dir):
        raise ConfigError(f"flavor: {problem}")
    try:
        flavor = Flavor.model_validate(yamlfile.load(path))
    except (ValidationError, yaml.YAMLError) as e:
        raise ConfigError(f"{path} is not a valid flavor file: {e}") from None
    if flavor.name != name:
        raise ConfigError(f"{path}: name is {flavor.name!r} but the file is {name}.yaml: make them match")
    if flavor.url and not (flavor.sha256 or flavor.checksum_url):
        raise ConfigError(
            f"{path}: has a url but neither sha256 nor checksum_url: ceil never uses an unverified image"
        )
    return flavor
