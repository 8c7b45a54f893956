"""Three network namespaces on this machine: a VPN client, the router, and a node on the LAN.

client (198.18.0.2) --veth "uplink"-- router (198.18.0.1 | 10.42.0.1) --veth "LAN"-- node (10.42.0.11)

The router runs the rendered wg0.conf with wg-quick, the client its generated config; nothing
leaves the machine (all addresses live inside the namespaces). Needs root.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


class NetnsLab:
    ROUTER_UPLINK = "198.18.0.1"
    CLIENT_UPLINK = "198.18.0.2"
    ROUTER_LAN = "10.42.0.1"
    NODE_IP = "10.42.0.11"

    def __init__(self, workdir: Path, suffix: str):
        self.dir = workdir
        self.ns = {k: f"ceil{k}{suffix}" for k in ("c", "r", "n")}
        # wireguard-go keeps its socket in /var/run/wireguard/<iface>.sock, shared by all
        # namespaces, so the two ends need different interface (= file) names.
        self.server_if, self.client_if = f"wgs{suffix}"[:15], f"wgc{suffix}"[:15]
        self.procs: list[subprocess.Popen] = []
        self.started: list[tuple[str, Path]] = []
        for ns in self.ns.values():
            self._run("ip", "netns", "add", ns)
            self.exec(ns, "ip", "link", "set", "lo", "up")
        self._veth(self.ns["c"], self.CLIENT_UPLINK, self.ns["r"], self.ROUTER_UPLINK, "30", "up")
        self._veth(self.ns["r"], self.ROUTER_LAN, self.ns["n"], self.NODE_IP, "24", "lan")
        self.exec(self.ns["n"], "ip", "route", "add", "default", "via", self.ROUTER_LAN)
        self.exec(self.ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _run(self, *cmd: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done.stdout

    def exec(self, ns: str, *cmd: str) -> str:
        return self._run("ip", "netns", "exec", ns, *cmd)

    def _veth(self, ns_a: str, ip_a: str, ns_b: str, ip_b: str, prefix: str, tag: str) -> None:
        a, b = f"{tag}a{ns_a[-5:]}"[:15], f"{tag}b{ns_b[-5:]}"[:15]
        self._run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
            self.exec(ns, "ip", "addr", "add", f"{ip}/{prefix}", "dev", dev)
            self.exec(ns, "ip", "link", "set", dev, "up")

    def up(self, server_conf: str, client_conf: str) -> None:
        """Bring up both ends with wg-quick and start a web server on the node."""
        server = self.dir / f"{self.server_if}.conf"
        client = self.dir / f"{self.client_if}.conf"
        server.write_text(server_conf)
        # DNS= makes wg-quick call resolvconf, which would rewrite this machine's resolver.
        client.write_text(re.sub(r"(?m)^DNS = .*\n", "", client_conf))
        for path in (server, client):
            path.chmod(0o600)
        for ns, path in ((self.ns["r"], server), (self.ns["c"], client)):
            self.exec(ns, "wg-quick", "up", str(path))
            self.started.append((ns, path))
        (self.dir / "www").mkdir()
        (self.dir / "www/index.html").write_text("ceil-node\n")
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.ns["n"], "python3", "-m", "http.server", "8000",
             "--bind", self.NODE_IP, "--directory", str(self.dir / "www")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def fetch_from_client(self, url: str, attempts: int = 20) -> str:
        code = f"import urllib.request;print(urllib.request.urlopen({url!r}, timeout=3).read().decode())"
        last = ""
        for _ in range(attempts):
            done = subprocess.run(["ip", "netns", "exec", self.ns["c"], "python3", "-c", code],
                                  capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                return done.stdout
            last = done.stderr
            time.sleep(0.5)
        raise AssertionError(f"{url} unreachable from the VPN client: {last}")

    def client_handshake_seconds(self) -> int:
        out = self.exec(self.ns["c"], "wg", "show", self.client_if, "latest-handshakes")
        return int(out.split()[-1])

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
        for ns, path in reversed(self.started):
            subprocess.run(["ip", "netns", "exec", ns, "wg-quick", "down", str(path)], capture_output=True)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
