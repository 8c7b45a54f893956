"""Each real flavor's layout, stated here from its publisher and not read from images/*.yaml.

The image tests build their synthetic bases from the flavor files themselves
(tests/imagefactory.make_base_image), so a wrong label, seed method or command-line path in a
flavor file would bake and pass there, and fail only on a real card. This table is the second,
independent statement of those facts (issue 17); the twins must carry the same layout as the
flavor they stand in for, or the QEMU suite proves a card nobody has.
"""

from __future__ import annotations

import pytest

from ceil.catalog import available, load_flavor

# (boot label, boot mount, root label, seed method, cmdline.txt path, network stack)
REAL = {
    # Ubuntu's preinstalled raspi server images: FAT `system-boot` mounted at /boot/firmware,
    # ext4 `writable`; cloud-init reads NoCloud from the FAT by its label (the image's
    # /etc/cloud/cloud.cfg.d/99-fake_cloud.cfg); netplan rendered by systemd-networkd. Ubuntu's
    # "The Boot Partition" README on that FAT; Ubuntu Server docs, "Configure your board for
    # headless use".
    "ubuntu-24.04-raspi": ("system-boot", "/boot/firmware", "writable", "fs_label", "cmdline.txt", "netplan-networkd"),
    # 26.04: the same partitions; the kernel command line moved into the A/B boot slots
    # (piboot-try: current/, new/, old/ on the FAT).
    "ubuntu-26.04-raspi": ("system-boot", "/boot/firmware", "writable", "fs_label", "current/cmdline.txt",
                           "netplan-networkd"),
    # Raspberry Pi OS (bookworm onwards): FAT `bootfs` at /boot/firmware, ext4 `rootfs`; the
    # images since 2025-11-24 carry cloud-init with rpi-cloud-init-mods, whose NoCloud seedfrom
    # is file:///boot/firmware; NetworkManager renders netplan (Raspberry Pi documentation,
    # "Configuration", cloud-init and netplan sections).
    "raspios-trixie": ("bootfs", "/boot/firmware", "rootfs", "seedfrom", "cmdline.txt", "netplan-nm"),
    # HypriotOS 1.x: FAT `HypriotOS` at /boot, ext4 `root`; cloud-init 0.7.9 reads
    # /var/lib/cloud/seed/nocloud-net, whose files link to /boot (image-builder-rpi); ifupdown.
    "hypriot-1.12.3": ("HypriotOS", "/boot", "root", "seed_dir", "cmdline.txt", "ifupdown"),
}

# Each twin and the real flavor it stands in for (docs/testing.md, "The test bed").
TWINS = {
    "testbed-ubuntu": "ubuntu-24.04-raspi",
    "testbed-ubuntu-amd64": "ubuntu-24.04-raspi",
    "testbed-ubuntu-slots": "ubuntu-26.04-raspi",
    "testbed-ubuntu-slots-amd64": "ubuntu-26.04-raspi",
    "testbed-raspios": "raspios-trixie",
    "testbed-raspios-amd64": "raspios-trixie",
}


def layout(name: str) -> tuple[str, ...]:
    f = load_flavor(name)
    return (f.partitions.boot.label, f.partitions.boot.mount, f.partitions.root.label, f.seed.method, f.cmdline,
            f.network)


def test_every_flavor_is_in_one_of_the_tables():
    """A new flavor file must be stated here too (a real one) or name the flavor it twins."""
    assert set(available()) == set(REAL) | set(TWINS)


@pytest.mark.parametrize("name", sorted(REAL))
def test_each_real_flavor_file_matches_its_publishers_layout(name):
    assert layout(name) == REAL[name]


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_each_twin_has_the_layout_of_the_card_it_stands_in_for(twin):
    real = load_flavor(TWINS[twin])
    assert layout(twin) == REAL[real.name]
    assert load_flavor(twin).other_cmdlines == real.other_cmdlines  # 26.04's other boot slots
    assert load_flavor(twin).usb_ethernet == real.usb_ethernet  # the uplink's predictable name
