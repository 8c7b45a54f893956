"""What each node's k3s is told: /etc/rancher/k3s/config.yaml and the secret files it names.

Pure functions of the cluster description, so the configs are tested without a machine. The
config files name secrets by path (`token-file`, ...) and never hold them: they are rendered
into the payload's etc/ tree, and only secret_files travel as secrets.

Server topology: one server runs k3s with its default datastore (SQLite). Three or more servers
run embedded etcd: the first (in cluster.yaml order) has `cluster-init` and the CA files, the
others join it with the full server token and receive the CAs from the cluster's bootstrap data.
"""

from __future__ import annotations

from ..addons.catalog import Catalog, selected
from ..config import Cluster, Node
from ..errors import ConfigError
from .token import agent_secret, agent_token, node_password, server_secret, server_token
from .kubeconfig import API_PORT
from .pki import K3S_CAS, ensure_k3s_cas
from ..secrets import SecretStore

SECRETS_ON_TARGET = "/etc/ceil/secrets"
TOKEN_FILE = "k3s/token"
AGENT_TOKEN_FILE = "k3s/agent-token"
NODE_PASSWORD_FILE = "k3s/node-password"
TLS_ON_TARGET = "k3s/tls"  # under /etc/ceil/secrets/; k3s-node.sh copies it to server/tls/


def servers(cluster: Cluster) -> list[Node]:
    return [n for n in cluster.nodes if n.role == "server"]


def init_server(cluster: Cluster) -> Node:
    """The server every other node joins (the first in cluster.yaml)."""
    return servers(cluster)[0]


def join_url(cluster: Cluster) -> str:
    return f"https://{init_server(cluster).ip}:{API_PORT}"


def check_servers(cluster: Cluster) -> None:
    count = len(servers(cluster))
    if count > 1 and count % 2 == 0:
        names = ", ".join(n.name for n in servers(cluster))
        raise ConfigError(
            f"nodes: {count} nodes have role 'server' ({names}): embedded etcd needs a majority,"
            f" so an even count tolerates no more failures than one server fewer. Use 1 server,"
            f" or 3 (or 5) for high availability"
        )


def metallb_enabled(cluster: Cluster) -> bool:
    """Whether MetalLB will hand out LoadBalancer addresses (then k3s's servicelb must be off)."""
    if not cluster.addons.enabled:
        return False
    return any(spec.name == "metallb" for spec in selected(cluster, Catalog()))


def _secret_path(name: str) -> str:
    return f"{SECRETS_ON_TARGET}/{name}"


# k3s replaces the kubelet's hard-eviction defaults with its own disk-only ones (nodefs and imagefs
# 5%), and with them goes memory.available<100Mi: a Pi short of memory then meets the kernel's
# OOM killer, which may take k3s itself, instead of the kubelet evicting pods
# (docs/research/addon-resources.md, section 7). The memory signal back, k3s's disk values kept.
KUBELET_EVICTION_HARD = "eviction-hard=memory.available<100Mi,nodefs.available<5%,imagefs.available<5%"


def _common(cluster: Cluster, node: Node) -> dict:
    return {
        "node-name": cluster.hostname(node.name),
        "node-ip": str(node.ip),
        "kubelet-arg": [KUBELET_EVICTION_HARD],
        # flannel-iface is appended on the machine: it is whichever interface holds node-ip.
    }


def server_config(cluster: Cluster, node: Node) -> dict:
    cfg = _common(cluster, node)
    cfg.update({
        "tls-san": [cluster.hostname(node.name), cluster.fqdn(node.name), str(node.ip)],
        "cluster-cidr": str(cluster.kubernetes.cluster_cidr),
        "service-cidr": str(cluster.kubernetes.service_cidr),
        "secrets-encryption": True,
        "token-file": _secret_path(TOKEN_FILE),
        "agent-token-file": _secret_path(AGENT_TOKEN_FILE),
    })
    if cluster.kubernetes.flannel_backend != "vxlan":  # the servers choose it for every node
        cfg["flannel-backend"] = cluster.kubernetes.flannel_backend
    if metallb_enabled(cluster):
        cfg["disable"] = ["servicelb"]
    if len(servers(cluster)) > 1:
        if node == init_server(cluster):
            cfg["cluster-init"] = True
        else:
            cfg["server"] = join_url(cluster)
    return cfg


def agent_config(cluster: Cluster, node: Node) -> dict:
    cfg = _common(cluster, node)
    cfg.update({"server": join_url(cluster), "token-file": _secret_path(AGENT_TOKEN_FILE)})
    return cfg


def server_secret_files(cluster: Cluster, node: Node, store: SecretStore) -> dict[str, bytes | str]:
    """The init server gets the CA set and the bare secrets; joining servers the full server token."""
    files: dict[str, bytes | str] = {NODE_PASSWORD_FILE: node_password(store, node.name) + "\n"}
    if node == init_server(cluster):
        cas = ensure_k3s_cas(store)
        for name in K3S_CAS:
            files[f"{TLS_ON_TARGET}/{name}.crt"] = cas[name].cert_pem
            files[f"{TLS_ON_TARGET}/{name}.key"] = cas[name].key_pem
        files[TOKEN_FILE] = server_secret(store) + "\n"
    else:
        files[TOKEN_FILE] = server_token(store) + "\n"
    files[AGENT_TOKEN_FILE] = agent_secret(store) + "\n"
    return files


def agent_secret_files(cluster: Cluster, node: Node, store: SecretStore) -> dict[str, bytes | str]:
    """An agent gets its node password and the full agent token (CA hash + node secret): no CA
    key, no server token."""
    return {
        NODE_PASSWORD_FILE: node_password(store, node.name) + "\n",
        AGENT_TOKEN_FILE: agent_token(store) + "\n",
    }
