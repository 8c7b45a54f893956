"""Hooks of the `status-board` and `status-report` features: the board's config (who may report,
where it listens), the router's reporting key and each node's token derived from it."""

from __future__ import annotations

from ..config import Cluster
from ..secrets import SecretStore
from ..status import BOARD_KEY_SECRET, REPORT_TOKEN_SECRET, STATUS_PORT, report_token
from .dnsmasq import LAN_HOSTS_DIR


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    net = cluster.network
    return {
        "status_board": {
            "bind": str(net.router_ip),
            "port": STATUS_PORT,
            "cluster": cluster.name,
            "domain": cluster.domain,
            "nodes": [n.name for n in cluster.nodes],
            "hostnames": {r: cluster.hostname(r) for r in cluster.roles},
            "state_dir": "/var/lib/ceil-status-board",
            # What a node baked after the router may ask for (POST /api/register/<node>).
            "lan": {"cidr": str(net.lan_cidr), "router_ip": str(net.router_ip),
                    "pool": [str(net.dhcp_start), str(net.dhcp_end)], "lb": [str(net.lb_start), str(net.lb_end)],
                    # where ceil-lan-hosts writes what dnsmasq reads (its config names the same)
                    "hosts_dir": LAN_HOSTS_DIR},
            "reserved": {n.name: {"ip": str(n.ip), "mac": n.mac} for n in cluster.nodes},
        },
        # The node's own address and the URL it registers at (status-report feature, nodes).
        "registration": None if role == "router" else {
            "url": f"http://{net.router_ip}:{STATUS_PORT}/api/register/{role}",
            "ip": str(cluster.node(role).ip),
        },
    }


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, str]:
    key = store.token(BOARD_KEY_SECRET)
    if role == "router":
        return {BOARD_KEY_SECRET: key + "\n"}
    return {REPORT_TOKEN_SECRET: report_token(key, role) + "\n"}
