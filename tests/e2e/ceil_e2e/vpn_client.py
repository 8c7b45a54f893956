"""A WireGuard client in its own network namespace, beside the router's uplink (root only).

Why not a UDP hostfwd: QEMU's user networking with restrict=on drops every UDP datagram the
guest sends except DHCP and TFTP (libslirp's udp_input checks `restricted` before it looks for
a socket), so the router's WireGuard replies would never come back through a forward.

Instead the router's uplink NIC sits on a QEMU hub that joins its user network to a local-only
wire (vm.Uplink.side_wire). `NetnsTap` puts a TAP interface of a network namespace at the
other end of that wire, with an address in the uplink's subnet, and relays its Ethernet
frames in a thread of this process. The client's packets reach the router's uplink interface
and pass its uplink firewall as if from the internet; nothing leaves 127.0.0.1.

Order for the harness: bake the router with this client's peer and with vpn.endpoint set to the
router's uplink address (vm.UPLINK_GUEST_IP); `create_link()` any time; `up()` once the router
is up.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import threading
from pathlib import Path

from .vm import Wire

CLIENT_IP = "10.0.2.200"  # in the uplink's subnet, far above slirp's DHCP pool (.15 upwards)
CLIENT_MAC = "02:00:0a:00:02:c8"

_TUNSETIFF, _IFF_TAP, _IFF_NO_PI = 0x400454CA, 0x0002, 0x1000

# libslirp's emulated hosts (gateway, DNS, guestfwd addresses) all send from MAC 52:55:<IPv4>.
SLIRP_MAC_PREFIX = b"\x52\x55"
ETH_IPV4 = b"\x08\x00"


class SlirpHearsOnlyItsOwn:
    """Make QEMU's hub behave like the switch of a home LAN, for the user network on it.

    A hub floods every frame to every port, so QEMU's user network sees the frames this host
    sends to the router too. It takes each TCP SYN in them for a connection of its own guest and,
    with restrict=on, answers at once with a reset under the destination's address; the router
    under TCG answers later, so the host finds "connection refused" where a real LAN would have
    connected. On a switch the home gateway never sees those frames. So an IPv4 frame from slirp
    passes only when its source address is one this host sent frames to slirp's MAC for.
    """

    def __init__(self) -> None:
        self.asked: set[bytes] = set()

    def outgoing(self, frame: bytes) -> None:
        if frame[:2] == SLIRP_MAC_PREFIX and frame[12:14] == ETH_IPV4:
            self.asked.add(frame[30:34])  # IPv4 destination

    def passes(self, frame: bytes) -> bool:
        if frame[6:8] != SLIRP_MAC_PREFIX or frame[12:14] != ETH_IPV4:
            return True
        return frame[26:30] in self.asked  # IPv4 source


class _HearsAll:
    def outgoing(self, frame: bytes) -> None:
        pass

    def passes(self, frame: bytes) -> bool:
        return True


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


class NetnsTap:
    """Network namespace `ns` whose interface eth0 (a TAP) is the peer end of `wire`, as `ip`/`prefix`.

    `hears_only_its_own=False` relays every frame, as a guest's NIC on the hub would get them
    (the harness tests use it to play the router)."""

    def __init__(self, wire: Wire, ns: str, ip: str, mac: str, prefix: int = 24, hears_only_its_own: bool = True):
        self.wire, self.ns, self.ip, self.mac = wire, ns, ip, mac
        self._tap = self._sock = None
        self._switch = SlirpHearsOnlyItsOwn() if hears_only_its_own else _HearsAll()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        tap_name = f"ct{os.getpid() % 100000}{ns[-3:]}"[:15]
        _run(["ip", "netns", "add", ns])
        try:
            self._tap = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(self._tap, _TUNSETIFF, struct.pack("16sH", tap_name.encode(), _IFF_TAP | _IFF_NO_PI))
            # The open file keeps the TAP alive and attached to it in whatever namespace it moves to.
            _run(["ip", "link", "set", tap_name, "address", mac, "netns", ns])
            for cmd in (["ip", "link", "set", tap_name, "name", "eth0"], ["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{ip}/{prefix}", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
                self.run(*cmd)
            self._sock = wire.peer_socket()
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._relay, name=f"tap-{ns}", daemon=True)
        self._thread.start()

    def run(self, *cmd: str) -> str:
        return _run(["ip", "netns", "exec", self.ns, *cmd])

    def tcp_banner(self, ip: str, port: int = 22, timeout: float = 10) -> str:
        """The first line a TCP service sends (an SSH server greets with `SSH-2.0-...`)."""
        code = (f"import socket;s=socket.create_connection(({ip!r},{port}),timeout={timeout});"
                "print(s.recv(256).decode(errors='replace').splitlines()[0])")
        return self.run("python3", "-c", code).strip()

    def _relay(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._tap, self._sock], [], [], 0.5)
                if self._tap in ready:
                    frame = os.read(self._tap, 65536)
                    self._switch.outgoing(frame)
                    self._sock.send(frame)
                if self._sock in ready:
                    frame = self._sock.recv(65536)
                    if self._switch.passes(frame):
                        os.write(self._tap, frame)
            except OSError:
                if self._stop.is_set():
                    return
                # No one at QEMU's end yet (ECONNREFUSED), or a frame the kernel refused: keep going.

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tap is not None:
            os.close(self._tap)
        if self._sock is not None:
            self._sock.close()
        self._tap = self._sock = None
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


class NetnsVpnClient:
    """The config written by `bake.py vpn-client`, brought up with wg-quick in its own netns."""

    def __init__(self, workdir: Path, config_text: str, wire: Wire, name: str = "ceilvpn"):
        self.dir, self.wire = workdir, wire
        self.ns = f"{name}{os.getpid() % 10000}"
        # The interface takes the file's name; keep it short and distinct from the router's wg0.
        self.conf = workdir / f"wgc{os.getpid() % 10000}.conf"
        # DNS= would make wg-quick rewrite this machine's resolver through resolvconf.
        self.conf.write_text(re.sub(r"(?m)^DNS = .*\n", "", config_text))
        self.conf.chmod(0o600)
        self.link: NetnsTap | None = None
        self._up = False

    def create_link(self) -> None:
        if self.link is None:
            self.link = NetnsTap(self.wire, self.ns, CLIENT_IP, CLIENT_MAC)

    def up(self) -> None:
        self.create_link()
        if self._up:  # a previous test left it up: bring it down first (wg-quick refuses twice)
            self.down()
        self.link.run("wg-quick", "up", str(self.conf))
        self._up = True

    def down(self) -> None:
        if self._up and self.link is not None:
            subprocess.run(["ip", "netns", "exec", self.ns, "wg-quick", "down", str(self.conf)], capture_output=True)
        self._up = False

    def tcp_banner(self, ip: str, port: int = 22, timeout: float = 10) -> str:
        return self.link.tcp_banner(ip, port, timeout)

    def handshake_seconds(self) -> int:
        out = self.link.run("wg", "show", self.conf.stem, "latest-handshakes")
        return max((int(line.split()[-1]) for line in out.splitlines() if line.strip()), default=0)

    def close(self) -> None:
        self.down()
        if self.link is not None:
            self.link.close()
            self.link = None
