"""The node's own firewall (feature node-firewall) doing its job in network namespaces: a LAN
device routes the pod network through a node, and talks to flannel's VXLAN port; a Service's
translated traffic still reaches its pod.

Security review: the nodes share the LAN's switch with every other device, so the router's
firewall never sees what such a device sends a node, and a node forwards (k3s needs it).

Needs root (ip netns) and nft; skipped otherwise. About 5 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from router_lan_render import cluster_from, render

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("nft") and shutil.which("ip")),
                                reason="needs root, ip and nft (scripts/setup-host.sh --test)")

NODE, DEVICE, POD = "10.42.0.11", "10.42.0.150", "10.52.0.5"  # the device: in the DHCP pool
SEND_UDP = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind((sys.argv[1], 0)); s.sendto(b'vxlan?', (sys.argv[2], 8472))\n")
RECV_UDP = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 8472)); s.settimeout(float(sys.argv[1]))\n"
            "try:\n  print(s.recvfrom(100)[1][0])\nexcept TimeoutError:\n  print('nothing')\n")
SERVE_TCP = ("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "s.bind(('0.0.0.0', 8080)); s.listen()\nwhile True:\n  c, _ = s.accept(); c.sendall(b'pod'); c.close()\n")
CONNECT = ("import socket, sys\ntry:\n  c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
           "  print(c.recv(10).decode() or 'closed')\nexcept OSError as e:\n  print('refused' if isinstance(e, ConnectionRefusedError) else 'timeout')\n")


class Lab:
    """Three namespaces: a LAN device and a node on one segment, a pod behind the node's bridge."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns = {name: f"ceil-nf-{name}-{tag}" for name in ("dev", "node", "pod")}
        self.procs: list[subprocess.Popen] = []
        for ns in self.ns.values():
            self.sh("ip", "netns", "add", ns)
            self.run_in(ns, "ip", "link", "set", "lo", "up")
        self.link("dev", "lan0", f"{DEVICE}/24", "node", "eth0", f"{NODE}/24")
        self.link("pod", "eth0", f"{POD}/24", "node", "cni0", "10.52.0.1/24")
        self.run("dev", "ip", "addr", "add", "10.42.0.12/24", "dev", "lan0")  # a second node's address
        self.run("pod", "ip", "route", "add", "default", "via", "10.52.0.1")
        self.run("node", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")  # as k3s-prep sets it
        # The attack: the device routes the pod network through the node.
        self.run("dev", "ip", "route", "add", "10.52.0.0/16", "via", NODE)

    def sh(self, *cmd: str) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout

    def run_in(self, ns: str, *cmd: str) -> str:
        return self.sh("ip", "netns", "exec", ns, *cmd)

    def run(self, name: str, *cmd: str) -> str:
        return self.run_in(self.ns[name], *cmd)

    def py(self, name: str, code: str, *args: str) -> str:
        return self.run(name, sys.executable, "-c", code, *args).strip()

    def start(self, name: str, code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name], sys.executable, "-c", code, *args],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        time.sleep(0.5)
        return proc

    def link(self, a: str, dev_a: str, ip_a: str, b: str, dev_b: str, ip_b: str) -> None:
        tmp_a, tmp_b = f"va{uuid.uuid4().hex[:8]}", f"vb{uuid.uuid4().hex[:8]}"
        self.sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, name, dev, ip in ((tmp_a, a, dev_a, ip_a), (tmp_b, b, dev_b, ip_b)):
            self.sh("ip", "link", "set", tmp, "netns", self.ns[name])
            self.run(name, "ip", "link", "set", tmp, "name", dev)
            self.run(name, "ip", "addr", "add", ip, "dev", dev)
            self.run(name, "ip", "link", "set", dev, "up")

    def udp_from(self, source: str) -> str:
        """What the node's VXLAN port receives from `source` (an address of the device)."""
        listener = self.start("node", RECV_UDP, "1.5")
        self.py("dev", SEND_UDP, source, NODE)
        return listener.communicate(timeout=10)[0].strip()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def node_rules(tmp_path) -> str:
    cluster = cluster_from({"router": {"uplink": {"type": "ethernet"}},
                            "nodes": [{"name": "one", "role": "server", "ip": NODE}, {"name": "two", "ip": "10.42.0.12"}]})
    return str(render(cluster, "one", tmp_path) / "etc/nftables/node.nft")


def test_a_lan_device_reaches_neither_the_pods_nor_vxlan_and_a_service_still_does(lab, tmp_path):
    lab.start("pod", SERVE_TCP)
    # kube-proxy's part, as a Service of type NodePort or LoadBalancer: destination NAT to the pod.
    lab.run("node", "nft", "add table ip kubeproxy ; add chain ip kubeproxy pre { type nat hook prerouting priority"
                    " -100 ; } ; add rule ip kubeproxy pre tcp dport 30080 dnat to " + f"{POD}:8080")
    # A kubelet stand-in on every address, IPv6 included (as the kubelet listens).
    lab.start("node", SERVE_TCP.replace("socket.socket()", "socket.socket(socket.AF_INET6)")
              .replace("('0.0.0.0', 8080)", "('::', 10250)"))
    for _ in range(50):  # link-local addresses are usable once duplicate address detection ends
        if "tentative" not in lab.run("node", "ip", "-6", "addr") + lab.run("dev", "ip", "-6", "addr"):
            break
        time.sleep(0.1)
    node_ll = lab.run("node", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").split()[3].split("/")[0]
    kubelet_v6 = f"{node_ll}%lan0"
    # Without ceil's table the review's attack works: the pod answers the device directly, and
    # so does the kubelet's port over IPv6.
    assert lab.py("dev", CONNECT, POD, "8080") == "pod"
    assert lab.py("dev", CONNECT, kubelet_v6, "10250") == "pod"
    assert lab.udp_from(DEVICE) == DEVICE
    rules = node_rules(tmp_path)
    lab.run("node", "nft", "-f", rules)
    lab.run("node", "nft", "-f", rules)  # loaded again at the next boot: no duplicate
    assert lab.run("node", "nft", "list", "table", "inet", "ceil_node").count("counter") == 5
    assert lab.py("dev", CONNECT, POD, "8080") == "timeout"
    assert lab.udp_from(DEVICE) == "nothing"
    # What stays: the Service (translated by kube-proxy), and VXLAN from a node's address.
    assert lab.py("dev", CONNECT, NODE, "30080") == "pod"
    assert lab.udp_from("10.42.0.12") == "10.42.0.12"
    # The kubelet's port over link-local IPv6, which every LAN device has: dropped too.
    assert lab.py("dev", CONNECT, kubelet_v6, "10250") == "timeout"
    # node-exporter on the host's network (the monitoring add-on): Prometheus, a pod, scrapes it;
    # a LAN device does not read the node's kernel, mounts and interfaces.
    lab.start("node", SERVE_TCP.replace("8080", "9100"))
    assert lab.py("pod", CONNECT, NODE, "9100") == "pod"
    assert lab.py("dev", CONNECT, NODE, "9100") == "timeout"
    # A pod's own connection out through the node gets its answers (they come back to the pod's
    # address, untranslated here; flannel masquerades them on a real node).
    lab.start("dev", SERVE_TCP.replace("8080", "9090"))
    assert lab.py("pod", CONNECT, DEVICE, "9090") == "pod"
