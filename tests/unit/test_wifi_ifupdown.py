"""WiFi uplink on ifupdown flavors (HypriotOS): rendered only there, the passphrase never baked,
and the step script run for real on a scratch root with ifup/ifdown/ip stubbed."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.features import RoleContext, render_features
from ceil.hooks.wifi_ifupdown import WPA_SECRET, wpa_psk
from ceil.secrets import SecretStore
from command_stubs import write_stubs  # tests/unit/command_stubs.py

PASSPHRASE = "correct horse battery"
SSID = 'Home "5G"'


def cluster(tmp_path, ssh_pubkey, flavor: str, uplink: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        f"flavor: {flavor}\n"
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
        f"router: {{uplink: {uplink}}}\n"
        "nodes: [{name: one, role: server, ip: 10.42.0.11}]\n"
        "piwatch: {enabled: false}\n"  # Hypriot has no PiWatch bundle (python_tag)
    )
    return load_cluster(path)


WIFI = f"{{type: wifi, wifi: {{ssid: '{SSID}', psk: '{PASSPHRASE}', country: DE}}}}"


def render(tmp_path, c):
    ctx = RoleContext(c, "router", load_flavor(c.flavor), SecretStore(tmp_path / "secrets"))
    return render_features(ctx, tmp_path / "payload")


def test_psk_is_derived_like_wpa_passphrase():
    # IEEE 802.11i-2004, H.4.3 test vector.
    assert wpa_psk("IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    assert wpa_psk("x", "AB" * 32) == "ab" * 32  # already a raw key: used as it is


def test_hypriot_router_with_wifi_gets_the_step_and_only_the_derived_key(tmp_path, ssh_pubkey):
    rendered = render(tmp_path, cluster(tmp_path, ssh_pubkey, "hypriot-1.12.3", WIFI))
    assert "wifi-ifupdown" in rendered.features
    conf = rendered.secrets[WPA_SECRET].decode()
    assert f"psk={wpa_psk(SSID, PASSPHRASE)}" in conf
    assert f"ssid={SSID.encode().hex()}" in conf and "country=DE" in conf
    assert PASSPHRASE not in conf
    unit = (tmp_path / "payload/units/ceil-wifi-uplink.service").read_text()
    assert "Before=ceil-packages.service" in unit
    assert "\nIFACE=wlan0\n" in (tmp_path / "payload/lib/steps/wifi-uplink.sh").read_text()


@pytest.mark.parametrize("flavor, uplink", [
    ("ubuntu-24.04-raspi", WIFI),          # netplan renders WiFi from network-config
    ("hypriot-1.12.3", "{type: ethernet, interface: eth1}"),
])
def test_no_wifi_step_where_it_does_not_belong(tmp_path, ssh_pubkey, flavor, uplink):
    rendered = render(tmp_path, cluster(tmp_path, ssh_pubkey, flavor, uplink))
    assert "wifi-ifupdown" not in rendered.features
    assert WPA_SECRET not in rendered.secrets


# ---- the step script, for real on a scratch root ---------------------------------------------


@pytest.fixture
def scratch(tmp_path, ssh_pubkey):
    rendered = render(tmp_path, cluster(tmp_path, ssh_pubkey, "hypriot-1.12.3", WIFI))
    root = tmp_path / "root"
    secret = root / "etc/ceil/secrets" / WPA_SECRET
    secret.parent.mkdir(parents=True)
    secret.write_bytes(rendered.secrets[WPA_SECRET])
    stubs, log = tmp_path / "stubs", tmp_path / "calls.log"
    write_stubs(stubs, log, ["ifup", "ifdown", "ip"])
    script = tmp_path / "payload/lib/steps/wifi-uplink.sh"

    def run(**env: str) -> subprocess.CompletedProcess:
        full = {**os.environ, "CEIL_ROOT": str(root), "CEIL_LIB": str(tmp_path / "payload/lib"),
                "PATH": f"{stubs}:{os.environ['PATH']}",
                "STUB_IP_OUT": "3: wlan0    inet 192.168.1.23/24 brd 192.168.1.255 scope global wlan0", **env}
        return subprocess.run(["sh", str(script)], env=full, capture_output=True, text=True, timeout=60)

    return root, run, log


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_step_writes_wpa_config_and_stanza_and_brings_the_interface_up(scratch):
    root, run, log = scratch
    done = run()
    assert done.returncode == 0, done.stderr
    wpa = root / "etc/wpa_supplicant/wpa_supplicant-ceil.conf"
    stanza = root / "etc/network/interfaces.d/wlan0"
    assert mode(wpa) == 0o600 and "psk=" in wpa.read_text()
    assert mode(stanza) == 0o644
    assert "iface wlan0 inet dhcp" in stanza.read_text()
    assert "wpa-conf /etc/wpa_supplicant/wpa_supplicant-ceil.conf" in stanza.read_text()
    assert "ifup wlan0" in log.read_text()
    assert "192.168.1.23/24" in done.stderr


def test_step_rerun_changes_nothing(scratch):
    root, run, _ = scratch
    assert run().returncode == 0
    files = [root / "etc/wpa_supplicant/wpa_supplicant-ceil.conf", root / "etc/network/interfaces.d/wlan0"]
    before = [(f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    assert run().returncode == 0
    assert [(f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before
    assert not list(root.rglob("*.ceil-tmp"))


def test_step_retries_when_ifup_fails_and_stops_when_the_secret_is_missing(scratch):
    root, run, _ = scratch
    failed = run(STUB_IFUP_RC="1")
    assert failed.returncode == 1 and "retrying" in failed.stderr
    (root / "etc/ceil/secrets" / WPA_SECRET).unlink()
    missing = run()
    assert missing.returncode == 3 and "re-bake" in missing.stderr
