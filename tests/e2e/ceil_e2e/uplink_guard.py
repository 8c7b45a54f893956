"""A guard between the router's uplink NIC and the uplink's QEMU hub (root not needed).

The hub floods every frame to every port, so QEMU's user network (slirp) also hears what a
workstation beside the uplink (vpn_client.NetnsTap) and the router say to each other. It takes
the router's answers to the workstation for traffic of its own guest and, with restrict=on,
resets them towards the router, under the workstation's address. The workstation's own relay
drops what slirp sends to it (vpn_client.SlirpHearsOnlyItsOwn), but frames from slirp to the
router pass from one hub port to another inside QEMU: in runs e2e24 and e2e29 every direct TCP
connection from the workstation to the booted router was reset that way.

So the router's NIC is wired to this process instead of to the hub (vm.Uplink.guard), and this
relay forwards both ways, except a frame from slirp's MAC whose IPv4 source is an address a real
station on the segment uses (learned from the frames that did not come from slirp). On a home
LAN's switch the gateway never hears those conversations, so it never answers in their name.
Slirp's own hosts (gateway, DNS, DHCP, guestfwds, NAT'd replies) never share a station's
address, so everything the router asks of the user network still passes, DHCP included.

A dead end (the router's QEMU killed by a power cut, between two starts) only costs the frames
sent meanwhile: the sockets stay bound to the wire's ports, and the relay keeps running.
"""

from __future__ import annotations

import select
import threading

from .vpn_client import ETH_IPV4, SLIRP_MAC_PREFIX


class SpoofFilter:
    """Which frames from the hub may reach the router (the rule above, without sockets)."""

    def __init__(self) -> None:
        self.stations: set[bytes] = set()

    def passes(self, frame: bytes) -> bool:
        if len(frame) < 34 or frame[12:14] != ETH_IPV4:
            return True  # ARP and the rest: slirp answers ARP only for its own hosts
        source = frame[26:30]
        if frame[6:8] == SLIRP_MAC_PREFIX:
            return source not in self.stations
        if source != b"\x00\x00\x00\x00":  # a DHCP client has no address yet
            self.stations.add(source)
        return True


class UplinkGuard:
    """Relays frames between `nic_wire` (the router's NIC) and `hub_wire` (a port of the uplink's
    hub), both vm.Wire, dropping slirp's frames in a station's name on the way to the NIC."""

    def __init__(self, nic_wire, hub_wire) -> None:
        self.nic_wire, self.hub_wire = nic_wire, hub_wire
        self.filter = SpoofFilter()
        self.dropped = 0
        self._nic = nic_wire.peer_socket()
        self._hub = hub_wire.peer_socket()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="uplink-guard", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._nic, self._hub], [], [], 0.5)
            except (OSError, ValueError):
                return  # closed
            for sock in ready:
                try:
                    frame = sock.recv(65536)
                    if sock is self._nic:
                        self._hub.send(frame)
                    elif self.filter.passes(frame):
                        self._nic.send(frame)
                    else:
                        self.dropped += 1
                except OSError:
                    # ECONNREFUSED: the other end's QEMU is not running (yet, or any more); the
                    # frame is lost as on a cable to a switched-off machine. Keep relaying.
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in (self._nic, self._hub):
            try:
                sock.close()
            except OSError:
                pass

