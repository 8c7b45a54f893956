"""What netplan's networkd path cannot carry of the router's WiFi name and passphrase is refused
before anything is baked, with the key, the value (never the passphrase) and the ways out. The
limits themselves were found with the real netplan and wpa_supplicant, and are proven there on
every run: tests/e2e/test_wifi_real_parsers.py."""

from __future__ import annotations

import pytest
import yaml

from ceil.catalog import load_flavor
from ceil.config import ConfigError, parse_cluster
from ceil.features import RoleContext, preflight, read_as_comment
from ceil.payload import render_seed
from ceil.secrets import SecretStore
from tests.wpa_supplicant import MISSING, WPA, parsed, read_back

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"


def cluster_with(ssid: str, psk: str, flavor: str = "ubuntu-24.04-raspi"):
    doc = {"flavor": flavor, "ssh": {"authorized_keys": [KEY]}, "nodes": [{"name": "one", "role": "server"}],
           "router": {"uplink": {"type": "wifi", "wifi": {"ssid": ssid, "psk": psk, "country": "DE"}}}}
    if load_flavor(flavor).arch == "armhf":  # no shipped armhf k3s digest: the nodes' check wants a pin
        doc["kubernetes"] = {"k3s_sha256": "a" * 64}
    return parse_cluster(yaml.safe_dump(doc), "cluster.yaml")


def refusal(cluster) -> str | None:
    try:
        preflight(cluster, ["router"], load_flavor(cluster.flavor))
    except ConfigError as e:
        return " ".join(str(e).split())
    return None


@pytest.mark.parametrize("ssid", ["Back\\slash", "a\"b #c", "a\" #"])
def test_a_name_wpa_supplicant_would_read_otherwise_is_refused_on_the_networkd_path(ssid):
    said = refusal(cluster_with(ssid, "correct-horse"))
    assert said and f"router.uplink.wifi.ssid: {ssid!r}" in said, said
    assert "router.uplink.type: ethernet" in said and "flavor raspios-trixie" in said
    assert refusal(cluster_with(ssid, "correct-horse", "raspios-trixie")) is None  # NetworkManager carries it


def test_a_passphrase_cut_by_a_comment_is_refused_without_showing_it_and_its_derived_key_is_taken():
    passphrase = 'ab"cd#efgh'
    said = refusal(cluster_with("Home", passphrase))
    assert said and "router.uplink.wifi.psk" in said and passphrase not in said and "cd#ef" not in said
    assert "`wpa_passphrase 'SSID'`" in said and "64 hex digits" in said
    assert refusal(cluster_with("Home", "0123456789abcdef" * 4)) is None  # the derived key
    for fine in ('ab#cd"efgh', 'ab"cd"ef#g', "pass#word", 'quote"only', "back\\slash"):
        assert refusal(cluster_with("Home", fine)) is None, fine


def test_the_seed_is_not_rendered_around_the_check(tmp_path):
    cluster = cluster_with("Back\\slash", "correct-horse")
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path))
    with pytest.raises(ConfigError, match="holds a backslash"):
        render_seed(ctx, "i-test")


@pytest.mark.skipif(WPA is None, reason=MISSING)
@pytest.mark.parametrize("ssid", ["Home", "Back\\slash", 'a"b #c', "📶 Café", "x" * 32])
@pytest.mark.parametrize("psk", ['ab"cd#efgh', "correct-horse", "0123456789abcdef" * 4])
def test_hypriots_wpa_supplicant_file_is_read_back_intact_by_wpa_supplicant(tmp_path, ssid, psk):
    """HypriotOS's router gets its own wpa_supplicant file (SSID in hex, the derived key): the real
    reader takes any SSID and passphrase from it whole, and derives the same key ceil wrote."""
    from ceil.hooks.wifi_ifupdown import WPA_SECRET, secret_files, wpa_psk

    cluster = cluster_with(ssid, psk, "hypriot-1.12.3")
    assert refusal(cluster) is None
    conf = secret_files(cluster, "router", None)[WPA_SECRET]
    got_ssid, got_psk, said = read_back(conf, tmp_path)
    assert got_ssid == ssid.encode() and got_psk == bytes.fromhex(wpa_psk(ssid, psk)), said
    if len(psk) != 64 and not read_as_comment(psk):  # the derivation itself, by wpa_supplicant
        found, said = parsed(f'network={{\n  ssid={ssid.encode().hex()}\n  psk="{psk}"\n}}\n', tmp_path)
        assert found["PSK (from passphrase)"].hex() == wpa_psk(ssid, psk), said
