"""k3s configs per role, and what each role's rendered payload carries (and must not)."""

from __future__ import annotations

import pytest
import yaml

from ceil.k3s import node_config as k3s_config
from ceil.k3s import pki
from ceil.k3s import token as k3s_token
from ceil.k3s.digests import KNOWN
from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.errors import ConfigError
from ceil.features import RoleContext, render_features
from ceil.secrets import SecretStore


@pytest.fixture
def make(cluster_yaml, tmp_path):
    def build(extra: str = ""):
        cluster = load_cluster(cluster_yaml(extra))
        return cluster, SecretStore(tmp_path / "secrets")

    return build


def render(cluster, store, role, dest):
    ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), store)
    return render_features(ctx, dest)


def test_server_config(make):
    cluster, _ = make()
    cfg = k3s_config.server_config(cluster, cluster.node("one"))
    assert cfg == {
        "node-name": "ceil-one",
        "node-ip": "10.42.0.11",
        # k3s's own eviction defaults drop the memory signal (docs/research/addon-resources.md)
        "kubelet-arg": ["eviction-hard=memory.available<100Mi,nodefs.available<5%,imagefs.available<5%"],
        "tls-san": ["ceil-one", "ceil-one.ceil.internal", "10.42.0.11"],
        "cluster-cidr": "10.52.0.0/16",
        "service-cidr": "10.53.0.0/16",
        "secrets-encryption": True,
        "token-file": "/etc/ceil/secrets/k3s/token",
        "agent-token-file": "/etc/ceil/secrets/k3s/agent-token",
        "disable": ["servicelb"],
    }


def test_wireguard_native_flannel_is_the_servers_choice_for_every_node(make):
    """Issue 18: flannel's VXLAN takes pod packets from whoever holds a node's address on the LAN;
    wireguard-native accepts only the nodes' keys. Set on the servers (k3s hands it to the agents),
    never on an agent, whose k3s would refuse a server-only flag."""
    cluster, _ = make("kubernetes: {flannel_backend: wireguard-native}\n")
    assert k3s_config.server_config(cluster, cluster.node("one"))["flannel-backend"] == "wireguard-native"
    assert "flannel-backend" not in k3s_config.agent_config(cluster, cluster.node("two"))
    default, _ = make()
    assert "flannel-backend" not in k3s_config.server_config(default, default.node("one"))  # k3s's vxlan


def test_servicelb_stays_when_metallb_is_off(make):
    for extra in ("addons: {enabled: false}\n", "addons: {disable: [metallb, traefik, dashboard, demo, monitoring]}\n"):
        cluster, _ = make(extra)
        assert "disable" not in k3s_config.server_config(cluster, cluster.node("one")), extra


def test_agent_config(make):
    cluster, _ = make()
    assert k3s_config.agent_config(cluster, cluster.node("two")) == {
        "node-name": "ceil-two",
        "node-ip": "10.42.0.12",
        "kubelet-arg": ["eviction-hard=memory.available<100Mi,nodefs.available<5%,imagefs.available<5%"],
        "server": "https://10.42.0.11:6443",
        "token-file": "/etc/ceil/secrets/k3s/agent-token",
    }


HA = ("nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, role: server, ip: 10.42.0.12},"
      " {name: three, role: server, ip: 10.42.0.13}, {name: four, ip: 10.42.0.14}]\n")


def test_three_servers_use_embedded_etcd(make):
    cluster, store = make(HA)  # its `nodes:` replaces the fixture's
    first = k3s_config.server_config(cluster, cluster.node("one"))
    second = k3s_config.server_config(cluster, cluster.node("two"))
    assert first["cluster-init"] is True and "server" not in first
    assert second["server"] == "https://10.42.0.11:6443" and "cluster-init" not in second
    joining = k3s_config.server_secret_files(cluster, cluster.node("two"), store)
    assert not any(name.startswith("k3s/tls/") for name in joining)  # CAs come from the cluster
    assert joining["k3s/token"].strip() == k3s_token.server_token(store)
    k3s_config.check_servers(cluster)


def test_two_servers_are_refused(make):
    cluster, _ = make("nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, role: server, ip: 10.42.0.12}]\n")
    with pytest.raises(ConfigError, match="embedded etcd needs a majority"):
        k3s_config.check_servers(cluster)


def test_two_servers_are_refused_whichever_card_is_baked(make):
    """`--role one` refused two servers, but `--role three` (an agent) and `--role router` baked:
    cluster.yaml is judged whole, before any card is written."""
    from ceil.features import preflight

    cluster, _ = make("nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, role: server, ip: 10.42.0.12},"
                      " {name: three, role: agent, ip: 10.42.0.13}]\n")
    for roles in (["three"], ["router"], ["one"]):
        with pytest.raises(ConfigError, match="(?s)nothing was baked.*embedded etcd needs a majority"):
            preflight(cluster, roles, load_flavor(cluster.flavor))


def test_rendered_configs_are_the_configs(make, tmp_path):
    cluster, store = make()
    render(cluster, store, "one", tmp_path / "one")
    render(cluster, store, "two", tmp_path / "two")
    server = yaml.safe_load((tmp_path / "one/etc/k3s-server/config.yaml").read_text())
    agent = yaml.safe_load((tmp_path / "two/etc/k3s-agent/config.yaml").read_text())
    assert server == k3s_config.server_config(cluster, cluster.node("one"))
    assert agent == k3s_config.agent_config(cluster, cluster.node("two"))
    env = (tmp_path / "two/etc/k3s-install/install.env").read_text()
    version = cluster.kubernetes.k3s_version
    assert f"K3S_CACHE_URL=http://10.42.0.1:8088/k3s/{version}\n" in env
    assert f"K3S_UPSTREAM_URL=https://github.com/k3s-io/k3s/releases/download/{version.replace('+', '%2B')}\n" in env
    # Every node is baked with the digest it checks k3s against: the release's, which ceil ships.
    assert f"K3S_SHA256={KNOWN[version]['arm64']}\n" in env


def _all_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_agent_payload_holds_no_ca_key_and_no_server_token(make, tmp_path):
    cluster, store = make()
    payload = render(cluster, store, "two", tmp_path / "two")
    # Everything the agent image would carry: rendered trees plus its secret files.
    carried = _all_bytes(tmp_path / "two")
    carried.update({f"secrets/{k}": v for k, v in payload.secrets.items()})
    forbidden = {"server secret": k3s_token.server_secret(store).encode()}
    for name, ca in pki.ensure_k3s_cas(store).items():
        forbidden[f"{name} key"] = ca.key_pem
        forbidden[f"{name} key body"] = b"".join(ca.key_pem.splitlines()[1:-1])
    for what, value in forbidden.items():
        for path, data in carried.items():
            assert value not in data, f"{what} found in the agent payload file {path}"
    assert set(payload.secrets) == {"k3s/agent-token", "k3s/node-password", "k3s/registries.yaml",
                                   "k3s/registry-ca.crt", "status-report/token", "ssh/ssh_host_ed25519_key"}
    assert payload.secrets["k3s/agent-token"].decode().strip() == k3s_token.agent_token(store)


def test_secrets_only_travel_as_secret_files(make, tmp_path):
    cluster, store = make()
    for role in ("one", "two"):
        payload = render(cluster, store, role, tmp_path / role)
        values = [v.strip() for v in payload.secrets.values() if b"PRIVATE KEY" in v or b"\n" not in v.strip()]
        values += [k3s_token.server_secret(store).encode(), k3s_token.agent_secret(store).encode()]
        for path, data in _all_bytes(tmp_path / role).items():
            for value in values:
                assert value not in data, f"a secret value is in the non-secret payload file {role}/{path}"


def test_server_payload_carries_the_ca_set_and_bare_secrets(make, tmp_path):
    cluster, store = make()
    payload = render(cluster, store, "one", tmp_path / "one")
    cas = pki.ensure_k3s_cas(store)
    for name, ca in cas.items():
        assert payload.secrets[f"k3s/tls/{name}.crt"] == ca.cert_pem  # byte-exact: the token hash
        assert payload.secrets[f"k3s/tls/{name}.key"] == ca.key_pem
    assert payload.secrets["k3s/token"].decode().strip() == k3s_token.server_secret(store)
    assert payload.secrets["k3s/agent-token"].decode().strip() == k3s_token.agent_secret(store)
    assert payload.secrets["k3s/node-password"].decode().strip() == k3s_token.node_password(store, "one")


def test_router_payload_serves_the_cache_and_holds_no_k3s_secret(make, tmp_path):
    cluster, store = make()
    payload = render(cluster, store, "router", tmp_path / "router")
    unit = (tmp_path / "router/units/ceil-k3s-cache.service").read_text()
    assert "http.server 8088 --bind 10.42.0.1 --directory /var/lib/ceil/cache" in unit
    assert not any(name.startswith("k3s/") for name in payload.secrets)
