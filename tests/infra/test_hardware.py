"""What only a real Pi can show (docs/hardware.md): the WiFi uplink (rfkill, regulatory domain,
association) and the kernel's page size. Plain functions of testinfra hosts; in the QEMU suite
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
