"""A WireGuard client in its own network namespace on the test machine (root only).

The namespace reaches the root namespace over a veth pair: the client is 198.18.0.2, the root
side 198.18.0.1. The e2e harness forwards UDP 198.18.0.1:<vpn.port> to the router's uplink
(QEMU `hostfwd=udp:198.18.0.1:PORT-:PORT`) and bakes the router with vpn.endpoint 198.18.0.1,
so the tunnel's packets go client -> veth -> QEMU -> router's uplink, like from the internet.
Nothing leaves the machine: 198.18.0.0/15 is benchmarking space and lives only in the netns.

Order for the harness: `create_link()` before the router VM starts (QEMU binds its hostfwd to
198.18.0.1, which must exist by then), bake the router with this client's peer, then `up()`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT_SIDE, CLIENT_SIDE = "198.18.0.1", "198.18.0.2"


class NetnsVpnClient:
    def __init__(self, workdir: Path, config_text: str, name: str = "ceilvpn"):
        self.dir, self.ns = workdir, f"{name}{os.getpid() % 10000}"
        # The interface takes the file's name; keep it short and distinct from the router's wg0.
        self.conf = workdir / f"wgc{os.getpid() % 10000}.conf"
        # DNS= would make wg-quick rewrite this machine's resolver through resolvconf.
        self.conf.write_text(re.sub(r"(?m)^DNS = .*\n", "", config_text))
        self.conf.chmod(0o600)
        self.veth = f"vc{os.getpid() % 100000}"
        self._up = self._linked = False

    def _run(self, *cmd: str, ns: bool = True) -> str:
        full = ["ip", "netns", "exec", self.ns, *cmd] if ns else list(cmd)
        done = subprocess.run(full, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(full)}: {done.stderr.strip()}")
        return done.stdout

    def create_link(self) -> None:
        """The namespace and the veth pair (idempotent); gives the root side 198.18.0.1."""
        if self._linked:
            return
        self._run("ip", "netns", "add", self.ns, ns=False)
        self._run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns, ns=False)
        self._run("ip", "addr", "add", f"{ROOT_SIDE}/30", "dev", self.veth, ns=False)
        self._run("ip", "link", "set", self.veth, "up", ns=False)
        self._run("ip", "link", "set", "lo", "up")
        self._run("ip", "addr", "add", f"{CLIENT_SIDE}/30", "dev", "eth0")
        self._run("ip", "link", "set", "eth0", "up")
        self._linked = True

    def up(self) -> None:
        self.create_link()
        self._run("wg-quick", "up", str(self.conf))
        self._up = True

    def tcp_banner(self, ip: str, port: int = 22, timeout: float = 10) -> str:
        """The first line a TCP service sends (an SSH server greets with `SSH-2.0-...`)."""
        code = (f"import socket;s=socket.create_connection(({ip!r},{port}),timeout={timeout});"
                "print(s.recv(256).decode(errors='replace').splitlines()[0])")
        return self._run("python3", "-c", code).strip()

    def handshake_seconds(self) -> int:
        out = self._run("wg", "show", self.conf.stem, "latest-handshakes")
        return max((int(line.split()[-1]) for line in out.splitlines() if line.strip()), default=0)

    def close(self) -> None:
        if self._up:
            subprocess.run(["ip", "netns", "exec", self.ns, "wg-quick", "down", str(self.conf)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
