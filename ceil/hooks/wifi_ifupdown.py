"""Hooks of the `wifi-ifupdown` feature: the router's wpa_supplicant config, as a secret file.

Only the WPA pre-shared key derived from the passphrase (PBKDF2-HMAC-SHA1 over the SSID, 4096
rounds, 32 bytes: what `wpa_passphrase` prints) goes into the image, so the passphrase itself
never lands on the Pi; a 64-hex-digit PSK from cluster.yaml is used as it is.
"""

from __future__ import annotations

import hashlib
import re

from ..config import Cluster
from ..secrets import SecretStore

WPA_SECRET = "wifi/wpa_supplicant.conf"  # -> /etc/ceil/secrets/wifi/wpa_supplicant.conf


def wpa_psk(ssid: str, passphrase: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{64}", passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"wifi": {"iface": cluster.uplink_interface}}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict:
    wifi = cluster.router.uplink.wifi
    # The SSID in hex: wpa_supplicant's quoted strings have no escapes, and an SSID may hold any byte.
    return {WPA_SECRET: (
        f"country={wifi.country}\n"
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\n"
        "update_config=0\n"
        "network={\n"
        f"    ssid={wifi.ssid.encode().hex()}\n"
        f"    psk={wpa_psk(wifi.ssid, wifi.psk.get_secret_value())}\n"
        "    key_mgmt=WPA-PSK\n"
        "}\n"
    )}
