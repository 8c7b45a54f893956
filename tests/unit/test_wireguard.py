"""WireGuard keys and configs: checked against the real `wg`, and a real handshake in netns."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess

import pytest
from click.testing import CliRunner

from ceil import wireguard as wgmod
from ceil.config import parse_cluster
from ceil.errors import CeilError, ConfigError
from ceil.hooks import wireguard as hooks
from ceil.secrets import SecretStore
from ceil.vpn_cli import vpn_client_command

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
CONFIG = f"""
ssh: {{authorized_keys: ["{KEY}"]}}
router: {{uplink: {{type: ethernet}}}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}]
vpn: {{endpoint: vpn.example.com}}
"""

needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="wg not installed (apt install wireguard-tools)")


def cluster_of(text: str = CONFIG):
    return parse_cluster(text)


def wg(*args: str, stdin: str) -> str:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True).stdout.strip()


@needs_wg
def test_our_public_key_matches_wg_pubkey():
    for _ in range(5):
        private = wgmod.generate_private_key()
        assert wgmod.public_key(private) == wg("pubkey", stdin=private)


@needs_wg
def test_keys_from_wg_genkey_are_understood():
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    assert wgmod.public_key(private) == wg("pubkey", stdin=private)


def test_private_key_is_clamped_like_wg_genkey():
    raw = base64.b64decode(wgmod.generate_private_key())
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64


def test_bad_key_says_what_is_expected():
    with pytest.raises(CeilError, match="44 characters of base64"):
        wgmod.public_key("not-a-key")


def test_endpoint_from_config_or_ddns():
    assert wgmod.endpoint(cluster_of()) == "vpn.example.com:51820"
    ddns = CONFIG.replace("vpn: {endpoint: vpn.example.com}",
                          "ddns: {enabled: true, api_token: t, zone: example.com, record: home.example.com}")
    assert wgmod.endpoint(cluster_of(ddns)) == "home.example.com:51820"
    assert wgmod.endpoint(cluster_of(CONFIG.replace("vpn.example.com", "203.0.113.9:4444"))) == "203.0.113.9:4444"
    assert wgmod.endpoint(cluster_of(CONFIG.replace("vpn.example.com", "'2001:db8::1'"))) == "[2001:db8::1]:51820"
    with pytest.raises(ConfigError, match="vpn.endpoint is not set"):
        wgmod.endpoint(cluster_of(CONFIG.replace("vpn: {endpoint: vpn.example.com}", "")))


def test_clients_get_distinct_stable_addresses(tmp_path):
    cluster, store = cluster_of(), SecretStore(tmp_path / "secrets")
    a, changed_a = wgmod.add_client(cluster, store, "laptop")
    b, _ = wgmod.add_client(cluster, store, "phone")
    again, changed_again = wgmod.add_client(cluster, store, "laptop")
    rotated, _ = wgmod.add_client(cluster, store, "laptop", rotate=True)
    assert (str(a.address), str(b.address)) == ("10.42.100.2", "10.42.100.3")
    assert (changed_a, changed_again) == ("new", "unchanged") and again == a
    assert rotated.address == a.address and rotated.private_key != a.private_key
    with pytest.raises(CeilError, match="not valid"):
        wgmod.add_client(cluster, store, "Bad_Name")


def test_a_client_config_follows_the_clusters_vpn_settings_with_its_keys(tmp_path):
    """A config was written once: after vpn.endpoint changed, `vpn-client laptop` said "exists
    (unchanged)" and laptop kept dialling the old endpoint while a new phone dialled the new one."""
    store = SecretStore(tmp_path / "secrets")
    laptop, _ = wgmod.add_client(cluster_of(), store, "laptop")
    moved = cluster_of(CONFIG.replace("vpn.example.com", "home.example.net"))
    assert wgmod.stale_clients(moved, store) == ["laptop"] and wgmod.stale_clients(cluster_of(), store) == []
    again, state = wgmod.add_client(moved, store, "laptop")
    text = store.read("wireguard/clients/laptop.conf").decode()
    assert state == "refreshed" and again == laptop and "Endpoint = home.example.net:51820" in text
    assert f"PrivateKey = {laptop.private_key}" in text  # same keys: the router's peer still fits
    assert wgmod.add_client(moved, store, "laptop")[1] == "unchanged"
    phone, _ = wgmod.add_client(moved, store, "phone")
    # the router's bake brings every config to what it is baked with
    hooks.secret_files(cluster_of(), "router", store)
    for name in ("laptop", "phone"):
        assert "Endpoint = vpn.example.com:51820" in store.read(f"wireguard/clients/{name}.conf").decode()
    assert wgmod.stale_clients(cluster_of(), store) == []
    # a subnet the client's address is outside of: refused by name, never "refreshed" into it
    elsewhere = cluster_of(CONFIG.replace("vpn: {endpoint: vpn.example.com}",
                                          "vpn: {endpoint: vpn.example.com, subnet: 10.99.0.0/24}"))
    for call in (lambda: wgmod.add_client(elsewhere, store, "laptop"), lambda: wgmod.stale_clients(elsewhere, store)):
        with pytest.raises(CeilError, match="outside vpn.subnet 10.99.0.0/24"):
            call()
    # vpn.endpoint removed later: the router needs none, so its bake is not refused for it
    bare = cluster_of(CONFIG.replace("vpn: {endpoint: vpn.example.com}", ""))
    assert wgmod.stale_clients(bare, store) == [] and "wireguard/wg0.conf" in hooks.secret_files(bare, "router", store)


def test_server_config_lists_every_client(tmp_path):
    cluster, store = cluster_of(), SecretStore(tmp_path / "secrets")
    laptop, _ = wgmod.add_client(cluster, store, "laptop")
    text = hooks.secret_files(cluster, "router", store)["wireguard/wg0.conf"]
    assert "Address = 10.42.100.1/24" in text and "ListenPort = 51820" in text
    assert f"PrivateKey = {wgmod.server_private_key(store)}" in text
    assert f"PublicKey = {laptop.public_key}" in text and "AllowedIPs = 10.42.100.2/32" in text
    assert stat.S_IMODE(store.path(wgmod.SERVER_KEY).stat().st_mode) == 0o600


def test_vpn_client_command_writes_a_0600_config(tmp_path):
    from ceil import compat

    (tmp_path / "cluster.yaml").write_text(CONFIG)
    store = SecretStore(tmp_path / "secrets")
    wgmod.server_private_key(store)  # the router's bake made it, and recorded the router baked
    compat.router_baked(store)
    runner = CliRunner()
    args = ["laptop", "--config", str(tmp_path / "cluster.yaml"), "--print-peer"]
    result = runner.invoke(vpn_client_command, args)
    assert result.exit_code == 0, result.output
    conf = tmp_path / "secrets/wireguard/clients/laptop.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "AllowedIPs = 10.42.0.0/24, 10.42.100.0/24" in text
    assert "DNS = 10.42.100.1, ceil.internal" in text and "Endpoint = vpn.example.com:51820" in text
    assert "re-bake" in result.output and "sudo wg set wg0 peer" in result.output
    client = wgmod.parse_client("laptop", text)
    assert client.public_key in result.output and "allowed-ips 10.42.100.2/32" in result.output
    second = runner.invoke(vpn_client_command, args[:3])
    assert second.exit_code == 0 and "unchanged" in second.output and conf.read_text() == text


def test_vpn_client_before_the_first_bake_makes_the_server_key_the_router_is_baked_with(tmp_path):
    """README, "Your way in": with a copied cluster.example.yaml, set vpn.endpoint and make clients;
    those made before the router is baked are baked into it. vpn-client stopped with "no VPN server
    key ... bake first": before any bake it now makes the server key, as init makes its first client."""
    (tmp_path / "cluster.yaml").write_text(CONFIG)
    result = CliRunner().invoke(vpn_client_command, ["phone", "--config", str(tmp_path / "cluster.yaml")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "its first bake" in result.output and "carries this peer" in result.output
    store = SecretStore(tmp_path / "secrets", make_new=False)
    phone = wgmod.parse_client("phone", (tmp_path / "secrets/wireguard/clients/phone.conf").read_text())
    server = wgmod.render_server(cluster_of(), store)  # what the router's bake writes into its wg0.conf
    assert f"PublicKey = {phone.public_key}" in server
    assert f"PublicKey = {wgmod.public_key(wgmod.server_private_key(store))}" in store.read(
        "wireguard/clients/phone.conf").decode()


def test_vpn_client_makes_no_server_key_for_a_cluster_already_baked(tmp_path):
    """A secrets/ that holds a baked cluster without a VPN server key (a mistyped --secrets, a copy
    missing files) gets no new one: the router's card carries another."""
    from ceil import compat

    (tmp_path / "cluster.yaml").write_text(CONFIG)
    compat.router_baked(SecretStore(tmp_path / "secrets"))
    result = CliRunner().invoke(vpn_client_command, ["phone", "--config", str(tmp_path / "cluster.yaml")])
    assert result.exit_code != 0 and "no VPN server key" in str(result.exception)
    assert not (tmp_path / "secrets/wireguard").exists()


def test_vpn_client_command_refuses_when_vpn_disabled(tmp_path):
    disabled = CONFIG.replace("vpn: {endpoint: vpn.example.com}", "vpn: {enabled: false}")
    (tmp_path / "cluster.yaml").write_text(disabled)
    result = CliRunner().invoke(vpn_client_command, ["laptop", "--config", str(tmp_path / "cluster.yaml")])
    assert result.exit_code != 0 and "vpn.enabled is false" in str(result.exception)


# ---- a real handshake between network namespaces ---------------------------------------


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "wg", "wg-quick"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = f"ceilprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` does not work here (no CAP_SYS_ADMIN?)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    kernel = subprocess.run(["ip", "link", "add", "ceilprobe", "type", "wireguard"], capture_output=True)
    if kernel.returncode == 0:
        subprocess.run(["ip", "link", "del", "ceilprobe"], capture_output=True)
    elif shutil.which("wireguard-go") is None or not os.path.exists("/dev/net/tun"):
        return "no WireGuard kernel module and no wireguard-go with /dev/net/tun"
    return None


@pytest.fixture
def netns_lab(tmp_path):
    from netns_lab import NetnsLab

    why = _netns_usable()
    if why:
        pytest.skip(why)
    lab = NetnsLab(tmp_path, suffix=str(os.getpid() % 100000))
    try:
        yield lab
    finally:
        lab.close()


def test_handshake_and_node_reachable_through_the_tunnel(netns_lab, tmp_path):
    config = CONFIG.replace("vpn.example.com", f"{netns_lab.ROUTER_UPLINK}")
    cluster, store = cluster_of(config), SecretStore(tmp_path / "secrets")
    client, _ = wgmod.add_client(cluster, store, "laptop")
    server_conf = hooks.secret_files(cluster, "router", store)["wireguard/wg0.conf"]
    client_conf = store.read(wgmod.client_secret_name("laptop")).decode()
    netns_lab.up(server_conf, client_conf)
    # The node answers only if the tunnel carried the request and the router forwarded it.
    body = netns_lab.fetch_from_client(f"http://{netns_lab.NODE_IP}:8000/")
    assert "ceil-node" in body
    assert netns_lab.client_handshake_seconds() > 0



def test_vpn_client_without_an_endpoint_is_refused_before_secrets_is_touched(tmp_path):
    """It made secrets/wireguard/server.key (and the lock, the .gitignore) and only then said a
    client had nowhere to dial: a user fixing cluster.yaml then found a half-made secrets/."""
    (tmp_path / "cluster.yaml").write_text(CONFIG.replace("endpoint: vpn.example.com", "port: 51820"))
    result = CliRunner().invoke(vpn_client_command, ["phone", "--config", str(tmp_path / "cluster.yaml")])
    assert result.exit_code != 0 and "vpn.endpoint is not set" in str(result.exception), result.output
    assert not (tmp_path / "secrets").exists()
