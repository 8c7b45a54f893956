"""A router, a node and "the internet" as three network namespaces on this machine (needs root).

    inet (198.18.0.2: fake DNS + HTTP) --enx...-- router (198.18.0.1 | br0 10.42.0.1) --+-- node (10.42.0.11)
                                                                                     +-- dhcp (a DHCP client)

The router runs the *rendered* nftables ruleset, dnsmasq config, chrony config and status board;
nothing leaves the machine (every address lives inside the namespaces; 198.18.0.0/15 is the
benchmarking range). Processes are started per test and all stopped in close().
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INET_IP, ROUTER_UPLINK_IP = "198.18.0.2", "198.18.0.1"
# The router's uplink is named the way Ubuntu names a USB Ethernet adapter (enx<MAC>), and the
# labs' clusters leave router.uplink.interface unset: the flavor's pattern (enx*) must carry
# through netplan, nftables and dnsmasq.
ROUTER_UPLINK_DEV = "enx000ec6c0ffee"
# What the fake upstream DNS says every internet name is: benchmark space (RFC 2544), which the
# router's dnsmasq passes; TEST-NET answers count as private there (stop-dns-rebind drops them).
FAKE_ANSWER = "198.19.80.7"


class RouterLanLab:
    def __init__(self, workdir: Path):
        self.dir = workdir
        tag = f"{os.getpid() % 100000}"
        self.ns = {k: f"ceil{k}{tag}" for k in ("inet", "rtr", "node", "dhcp")}
        self.procs: list[subprocess.Popen] = []
        for ns in self.ns.values():
            self.sh("ip", "netns", "add", ns)
            self.run(ns, "ip", "link", "set", "lo", "up", raw_ns=True)
        self._link("inet", "eth0", f"{INET_IP}/30", "rtr", ROUTER_UPLINK_DEV, f"{ROUTER_UPLINK_IP}/30")
        # The router's LAN is a bridge (like the Pi's eth0 on a switch) so two clients can share it.
        self.run("rtr", "ip", "link", "add", "br0", "type", "bridge")
        self.run("rtr", "ip", "addr", "add", "10.42.0.1/24", "dev", "br0")
        self.run("rtr", "ip", "link", "set", "br0", "up")
        self._link("rtr", "lan-node", None, "node", "eth0", "10.42.0.11/24")
        self._link("rtr", "lan-dhcp", None, "dhcp", "eth0", None)
        for port in ("lan-node", "lan-dhcp"):
            self.run("rtr", "ip", "link", "set", port, "master", "br0")
        self.run("node", "ip", "route", "add", "default", "via", "10.42.0.1")
        self.run("rtr", "ip", "route", "add", "default", "via", INET_IP)
        self.run("inet", "ip", "route", "add", "10.42.0.0/16", "via", ROUTER_UPLINK_IP)

    # ---- plumbing --------------------------------------------------------------------------

    def sh(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60, raw_ns: bool = False):
        name = ns if raw_ns else self.ns[ns]
        return self.sh("ip", "netns", "exec", name, *cmd, check=check, timeout=timeout)

    def start(self, ns: str, *cmd: str, log: str) -> subprocess.Popen:
        out = open(self.dir / log, "w")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], *cmd], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _link(self, ns_a: str, dev_a: str, ip_a: str | None, ns_b: str, dev_b: str, ip_b: str | None) -> None:
        # Created straight inside the namespaces under temporary names, then renamed there.
        tmp_a, tmp_b = f"va{ns_b[:4]}{os.getpid() % 100000}", f"vb{ns_b[:4]}{os.getpid() % 100000}"
        self.sh("ip", "link", "add", tmp_a, "netns", self.ns[ns_a], "type", "veth", "peer", "name", tmp_b,
                "netns", self.ns[ns_b])
        for ns, tmp, dev, ip in ((ns_a, tmp_a, dev_a, ip_a), (ns_b, tmp_b, dev_b, ip_b)):
            self.run(ns, "ip", "link", "set", tmp, "name", dev)
            if ip:
                self.run(ns, "ip", "addr", "add", ip, "dev", dev)
            self.run(ns, "ip", "link", "set", dev, "up")

    def wait_port(self, ns: str, host: str, port: int, proto: str = "tcp", seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            flag = "-t" if proto == "tcp" else "-u"
            if f"{host}:{port}" in self.run(ns, "ss", "-lnH", flag, check=False).stdout:
                return
            time.sleep(0.2)
        raise AssertionError(f"nothing listens on {host}:{port}/{proto} in {ns}; logs in {self.dir}")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.ns.values():
            self.sh("ip", "netns", "del", ns, check=False)

    # ---- probes ----------------------------------------------------------------------------

    def open_ports(self, ns: str, host: str, ports: list[int], timeout: float = 1.5) -> set[int]:
        """The TCP ports of `ports` that accept a connection from `ns` (probed in parallel, so a
        firewall that drops costs one timeout, not one per port)."""
        code = (
            "import socket,sys\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "def probe(p):\n try:\n  socket.create_connection((sys.argv[1], p), timeout=float(sys.argv[2])).close()\n"
            "  return p\n except OSError:\n  return None\n"
            "with ThreadPoolExecutor(16) as ex:\n"
            " print(' '.join(str(p) for p in ex.map(probe, map(int, sys.argv[3:])) if p))"
        )
        out = self.run(ns, sys.executable, "-c", code, host, str(timeout), *map(str, ports)).stdout
        return {int(p) for p in out.split()}

    def listen_tcp(self, ns: str, port: int, addr: str = "0.0.0.0") -> None:
        """A stand-in service (e.g. sshd on 22): accepts and closes connections."""
        code = ("import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind((sys.argv[1],int(sys.argv[2])))\ns.listen()\nwhile True: s.accept()[0].close()")
        self.start(ns, sys.executable, "-c", code, addr, str(port), log=f"listen-{ns}-{port}.log")
        self.wait_port(ns, addr if addr != "0.0.0.0" else "0.0.0.0", port)

    def dns(self, ns: str, server: str, name: str, qtype: str = "A") -> str:
        return self.run(ns, sys.executable, str(HERE / "dnsmini.py"), "query", server, name, qtype).stdout.strip()

    def dns_answers(self, ns: str, server: str, name: str) -> bool:
        """Whether anything answers DNS at server (1.5 s: used to show that nothing does)."""
        return self.run(ns, sys.executable, str(HERE / "dnsmini.py"), "query", server, name, "A",
                        "1.5").stdout.strip() != "timeout"

    def fake_internet(self) -> None:
        """Fake upstream DNS and an HTTP server on the internet side (both log who asked)."""
        self.start("inet", sys.executable, str(HERE / "dnsmini.py"), "serve", INET_IP, FAKE_ANSWER,
                   str(self.dir / "upstream-queries.log"), log="fake-dns.log")
        (self.dir / "www").mkdir(exist_ok=True)
        (self.dir / "www/hello.txt").write_text("hello from the internet\n")
        self.start("inet", sys.executable, "-m", "http.server", "8000", "--bind", INET_IP,
                   "--directory", str(self.dir / "www"), log="fake-http.log")
        self.wait_port("inet", INET_IP, 53, "udp")
        self.wait_port("inet", INET_IP, 8000)
