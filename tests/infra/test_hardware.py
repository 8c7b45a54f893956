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


def test_page_size_is_reported(router, nodes):
    """A Pi 5 runs a 16K-page kernel (Raspberry Pi OS); software built for 4K pages may fail
    there. Recorded for every machine so a failure elsewhere can be read against it."""
    for name, host in {"router": router, **nodes}.items():
        size = int(host.check_output("getconf PAGESIZE"))
        assert size in (4096, 16384, 65536), f"{name}: page size {size}"
