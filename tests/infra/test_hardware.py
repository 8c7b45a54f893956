"""What only a real Pi can show (docs/hardware.md): the WiFi uplink (rfkill, regulatory domain,
association), the kernel's page size and a bootloader that can try Ubuntu 26.04's boot slots. Plain functions of testinfra hosts; in the QEMU suite
the uplink is Ethernet and there is no radio, so the WiFi check skips, saying why.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e


def test_wifi_uplink_is_unblocked_in_its_country_and_associated(router, cluster):
    uplink = cluster.router.uplink
    if uplink.type != "wifi":
        pytest.skip(f"router.uplink.type is {uplink.type}: no radio to check (QEMU has none either)")
    iface = cluster.uplink_interface
    with router.sudo():
        rfkill = router.run("rfkill list wifi").stdout
        reg = router.run("iw reg get").stdout
        link = router.run(f"iw dev {iface} link").stdout
    assert "Soft blocked: yes" not in rfkill and "Hard blocked: yes" not in rfkill, (
        f"{iface} is blocked (rfkill):\n{rfkill}\nwithout a regulatory domain Raspberry Pi OS keeps WiFi"
        " soft-blocked: is router.uplink.wifi.country set, and cfg80211.ieee80211_regdom on the command line?")
    country = re.search(r"^country (\w\w):", reg, re.M)
    assert country and country.group(1) == uplink.wifi.country, f"regulatory domain:\n{reg}"
    assert "Connected to" in link and uplink.wifi.ssid in link, f"{iface} is not associated:\n{link}"


def test_nodes_run_4k_pages_where_the_cluster_asks_for_them(router, nodes, cluster):
    """A Pi 5 on Raspberry Pi OS boots a 16K-page kernel, where container images linked with a
    4K-page jemalloc abort; with kubernetes.pi5_page_size 4k (the default) its nodes boot the
    image's 4K-page kernel (config.txt's [pi5] section, docs/hardware.md), and every other Pi and
    flavor runs 4K pages anyway. The router's page size is only recorded (it runs no containers)."""
    sizes = {name: int(host.check_output("getconf PAGESIZE")) for name, host in {"router": router, **nodes}.items()}
    assert all(size in (4096, 16384, 65536) for size in sizes.values()), sizes
    if cluster.kubernetes.pi5_page_size == "4k":
        wrong = {name: size for name, size in sizes.items() if name != "router" and size != 4096}
        assert not wrong, (f"nodes not on 4K pages: {wrong}; a Pi 5 should boot kernel8.img: is the [pi5] section"
                           f" at the end of its /boot/firmware/config.txt, and kernel8.img on that partition?")


# The oldest Pi 4 bootloader EEPROM that can tryboot, as snapd's piboot judges it before it
# installs a kernel (snapcore/snapd bootloader/piboot.go, eepromVersionSupportsTryboot: the
# build-timestamp of pieeprom-2021-03-18, the first default release with tryboot). A Pi 5's EEPROM
# has always had it; a Pi 3 and earlier run the start.elf on the card's boot partition.
PI4_TRYBOOT_EEPROM = 1616057651  # 2021-03-18 08:54:11 UTC


def test_the_bootloader_can_try_the_boot_slots(host, machine, cluster):
    """Ubuntu 26.04's boot slots: a kernel update lands in new/ and is booted once in tryboot mode;
    a Pi 4 whose EEPROM predates tryboot never boots new/, and the update never takes. Reads the
    bootloader's build time the firmware leaves in the device tree."""
    from ceil.catalog import load_flavor

    flavor = load_flavor(cluster.flavor)
    if not flavor.other_cmdlines:
        pytest.skip(f"flavor {flavor.name} has no boot slots")
    virt = host.run("systemd-detect-virt").stdout.strip()
    if virt not in ("", "none"):
        pytest.skip(f"{machine} runs in {virt}: the twin's tryboot is the harness's (test_boot_slots.py)")
    model = host.run("tr -d '\\0' < /proc/device-tree/model").stdout.strip()
    if not re.search(r"Raspberry Pi (4|400|Compute Module 4)", model):
        pytest.skip(f"{machine} is a {model or 'board without a device-tree model'}: tryboot needs no EEPROM check")
    stamp = host.run("od -An -tu1 /proc/device-tree/chosen/bootloader/build-timestamp")
    assert stamp.rc == 0, f"{machine} ({model}): no bootloader build-timestamp in the device tree: {stamp.stderr}"
    built = int.from_bytes(bytes(int(b) for b in stamp.stdout.split()), "big")
    assert built >= PI4_TRYBOOT_EEPROM, (
        f"{machine} ({model}): its bootloader EEPROM was built at {built} (before 2021-03-18), without"
        " tryboot: kernel updates in new/ would never be booted. Update it: sudo rpi-eeprom-update -a, reboot")
