"""The router's WiFi name and passphrase as ceil writes them for the default flavor (netplan,
networkd renderer), read by the real netplan of the router's twin (its generator under
--root-dir: nothing on the machine changes), and what netplan wrote read back by the real
wpa_supplicant (its configuration reader, -dd, on the test host): every value ceil accepts
arrives byte for byte, and every value it refuses is one that would not (issue 18). QEMU has no
WiFi: the association itself is verified only on hardware."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from ceil.catalog import load_flavor
from ceil.config import ConfigError, parse_cluster
from ceil.features import RoleContext
from ceil.payload import render_seed
from ceil.secrets import SecretStore
from tests.wpa_supplicant import MISSING, WPA, read_back

pytestmark = pytest.mark.e2e

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
SSIDS = ["Home", 'Ho"me', "Ho#me", 'a#b"c', 'ab"c"d#e', "Back\\slash", 'a"b #c', 'a" #', "📶 Café", " lead",
         "trail ", "$(id) `id`", "{a: b}", ": x", "- x", "yes", "x" * 32, "ÄÖÜ äöü ß€"]
PSKS = ["correct-horse", 'pa"ss"word', 'ab#cd"efgh', 'ab"cd"ef#g', 'quote"only', "back\\slash1", "  spaces  ",
        "$(id)`x`12", "#leading-hash", 'ab"cd#efgh', "'single'quotes'", "0123456789abcdef" * 4]
PLACEHOLDER = ("placeholder-ssid", "placeholder-psk")


def network_config(ssid: str, psk: str, store: SecretStore) -> tuple[str, bool]:
    """(the router's network-config, whether ceil accepts these values). A refused pair is
    written into the seed rendered for placeholders, as the renderer quotes (JSON strings)."""
    doc = {"ssh": {"authorized_keys": [KEY]}, "nodes": [{"name": "one", "role": "server"}],
           "router": {"uplink": {"type": "wifi", "wifi": {"ssid": ssid, "psk": psk, "country": "DE"}}}}

    def render(d):
        cluster = parse_cluster(yaml.safe_dump(d), "cluster.yaml")
        assert cluster.flavor == "ubuntu-24.04-raspi" and load_flavor(cluster.flavor).network == "netplan-networkd"
        return render_seed(RoleContext(cluster, "router", load_flavor(cluster.flavor), store), "i-wifi")["network-config"]

    try:
        return render(doc), True
    except ConfigError:
        doc["router"]["uplink"]["wifi"].update(ssid=PLACEHOLDER[0], psk=PLACEHOLDER[1])
        text = render(doc)
        for placeholder, value in zip(PLACEHOLDER, (ssid, psk)):
            text = text.replace(json.dumps(placeholder), json.dumps(value, ensure_ascii=False))
        return text, False


@pytest.mark.skipif(WPA is None, reason=MISSING)
def test_every_wifi_name_and_passphrase_ceil_accepts_reaches_wpa_supplicant_intact(router, tmp_path):
    store = SecretStore(tmp_path / "secrets")
    cases = [(s, "correct-horse") for s in SSIDS] + [("Home", p) for p in PSKS]
    configs = [network_config(ssid, psk, store) for ssid, psk in cases]
    # Everything in one SSH command: each case's netplan configuration written as cloud-init
    # writes it (under network:, 0600), netplan's generator run on it, its wpa_supplicant file
    # printed between markers.
    script = ["set -u", "rm -rf /tmp/ceil-wifi", "umask 077"]
    for i, (text, _) in enumerate(configs):
        body = "network:\n" + "".join(f"  {line}\n" for line in text.splitlines())
        root = f"/tmp/ceil-wifi/{i}"
        script += [f"mkdir -p {root}/etc/netplan",
                   f"echo {base64.b64encode(body.encode()).decode()} | base64 -d > {root}/etc/netplan/50-cloud-init.yaml",
                   f"echo '=== {i}'",
                   f"netplan generate --root-dir {root} >/dev/null 2>{root}/err || {{ echo 'NETPLAN REFUSED'; cat {root}/err; }}",
                   f"cat {root}/run/netplan/wpa-wlan0.conf 2>/dev/null"]
    script.append("rm -rf /tmp/ceil-wifi")
    with router.sudo():
        out = router.check_output("bash -c %s", "\n".join(script))
    generated = {int(chunk.split("\n", 1)[0]): chunk.split("\n", 1)[1] if "\n" in chunk else ""
                 for chunk in out.split("=== ")[1:]}
    wrong = []
    for i, ((ssid, psk), (_, accepted)) in enumerate(zip(cases, configs)):
        conf = generated[i]
        assert "NETPLAN REFUSED" not in conf, f"netplan refused {ssid!r}/{psk!r}: {conf}"
        got_ssid, got_psk, said = read_back(conf, tmp_path)
        want_psk = bytes.fromhex(psk) if len(psk) == 64 else psk.encode()
        intact = got_ssid == ssid.encode() and got_psk == want_psk
        if intact != accepted:
            wrong.append(f"{'accepted' if accepted else 'refused'} ssid {ssid!r} psk {psk!r}: wpa_supplicant read"
                         f" {got_ssid!r} / {got_psk!r}\n{conf}\n{said}")
    assert not wrong, "\n\n".join(wrong)
    assert sum(not accepted for _, accepted in configs) >= 4  # the refusals were tried too
