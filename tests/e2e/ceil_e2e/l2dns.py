"""The fake "internet" DNS and NTP server, on its own QEMU L2 segment.

QEMU's user networking forwards only TCP from guest to host (guestfwd), and dnsmasq and chrony
ask their upstreams over UDP, so the fake upstream cannot sit behind the uplink. Instead the
router gets a third NIC on a local-only multicast segment (the same kind as the LAN, vm.Lan),
and this process speaks raw Ethernet on it: it answers ARP for its address, A queries over
UDP/53 (one name -> one address, everything else NXDOMAIN) and NTP client requests over UDP/123
with this machine's clock (or `ntp_ahead` seconds later: the card is first booted that long
after its bake), but only once `ntp_after` seconds have passed since it started (a real upstream
is not there the moment a Pi boots: the first boot must cope). Frames stay on 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable

from .vm import Lan

ROUTER_IP = "192.0.2.1"     # TEST-NET-1: never a real upstream; the harness gives it to eth2
SERVER_IP = "192.0.2.53"
PREFIX = 24
SERVER_MAC = bytes.fromhex("020000c00235")
ANSWER_TTL = 60


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _qname(msg: bytes) -> tuple[str, int]:
    """The question's name and the offset after it (queries carry no compression pointers)."""
    labels, pos = [], 12
    while msg[pos]:
        labels.append(msg[pos + 1:pos + 1 + msg[pos]].decode("ascii", "replace"))
        pos += 1 + msg[pos]
    return ".".join(labels), pos + 1


def dns_reply(query: bytes, names: dict[str, str]) -> tuple[str, bytes]:
    """(asked name, reply): an A record for a known name, NXDOMAIN otherwise."""
    name, end = _qname(query)
    qtype, = struct.unpack("!H", query[end:end + 2])
    question = query[12:end + 4]
    known = names.get(name.lower().rstrip("."))
    if known and qtype == 1:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ANSWER_TTL, 4) + socket.inet_aton(known)
        return name, query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + answer
    rcode = 0 if known else 3  # known name, other type: empty answer
    return name, query[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, 0, 0, 0) + question


NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def _ntp_time(t: float) -> bytes:
    seconds = int(t) + NTP_EPOCH_OFFSET
    return struct.pack("!II", seconds & 0xFFFFFFFF, int((t % 1) * 2**32) & 0xFFFFFFFF)


def ntp_reply(request: bytes, now: float) -> bytes | None:
    """A stratum-2 server answer (mode 4) to a client request (mode 3), RFC 5905 section 7.3."""
    if len(request) < 48 or request[0] & 0x07 != 3:
        return None
    version = (request[0] >> 3) & 0x07
    header = struct.pack("!BBbb", (0 << 6) | (version << 3) | 4, 2, request[2], -20)
    root = struct.pack("!II4s", 0x00000100, 0x00000100, b"FAKE")  # 1/256 s delay and dispersion
    return header + root + _ntp_time(now - 16) + request[40:48] + _ntp_time(now) + _ntp_time(now)


def udp_frame(dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + SERVER_MAC + b"\x08\x00" + ip + udp


def arp_reply(frame: bytes, my_ip: str) -> bytes | None:
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1) or tpa != socket.inet_aton(my_ip):
        return None
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + SERVER_MAC + tpa + sha + spa
    return sha + SERVER_MAC + b"\x08\x06" + body


def handle(frame: bytes, names: dict[str, str], my_ip: str = SERVER_IP,
           ntp_now: float | None = None) -> tuple[str | None, bytes | None]:
    """(what was asked, frame to send back) for one received Ethernet frame: a DNS name, or
    "ntp" for an NTP request (answered only when `ntp_now` is given)."""
    if len(frame) < 42 or frame[6:12] == SERVER_MAC:
        return None, None
    ethertype, = struct.unpack("!H", frame[12:14])
    if ethertype == 0x0806:
        return None, arp_reply(frame, my_ip)
    if ethertype != 0x0800:
        return None, None
    ihl = (frame[14] & 0x0F) * 4
    ip = frame[14:14 + ihl]
    if ip[9] != 17 or ip[16:20] != socket.inet_aton(my_ip):
        return None, None
    sport, dport, length, _ = struct.unpack("!HHHH", frame[14 + ihl:22 + ihl])
    payload = frame[22 + ihl:14 + ihl + length]
    if dport == 123:
        reply = ntp_reply(payload, ntp_now) if ntp_now is not None else None
        return "ntp", reply and udp_frame(frame[6:12], my_ip, socket.inet_ntoa(ip[12:16]), 123, sport, reply)
    if dport != 53:
        return None, None
    try:
        name, reply = dns_reply(payload, names)
    except (IndexError, struct.error):
        return None, None
    return name, udp_frame(frame[6:12], my_ip, socket.inet_ntoa(ip[12:16]), 53, sport, reply)


def segment_socket(seg: Lan) -> socket.socket:
    """A member of the segment's multicast group, joined the way QEMU's socket netdev joins it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((seg.group, seg.port))
    mreq = socket.inet_aton(seg.group) + socket.inet_aton("127.0.0.1")
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return s


class SegmentDns:
    """The fake upstream DNS server on segment `seg`, answering `names` ({name: IPv4}), and its
    NTP server, silent for the first `ntp_after` seconds and `ntp_ahead` seconds ahead after them."""

    def __init__(self, seg: Lan, names: dict[str, str], ntp_after: float = 0.0, ntp_ahead: float = 0.0):
        self.segment = seg
        self.names = {k.lower().rstrip("."): v for k, v in names.items()}
        self.asked: list[str] = []
        self.ntp_after = ntp_after
        self.ntp_ahead = ntp_ahead  # seconds the time served is ahead of this machine's clock
        self.ntp_requests = 0   # NTP requests seen
        self.ntp_answered = 0   # ... and answered (after ntp_after)
        self.ntp_first_request: float | None = None  # time.time() of the first request (diagnostics)
        self.ntp_first_answer: float | None = None  # ... and of the first answer
        self._answer_at = time.monotonic() + ntp_after  # NTP is silent until then (hold_ntp moves it)
        self._until: tuple[Callable[[], float | None], float, float] | None = None  # hold_ntp_until's
        self._sock = segment_socket(seg)
        self._sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            answering = self.silent_for() == 0
            name, reply = handle(frame, self.names, ntp_now=time.time() + self.ntp_ahead if answering else None)
            if name == "ntp":
                self.ntp_requests += 1
                if self.ntp_first_request is None:
                    self.ntp_first_request = time.time()
                self.ntp_answered += reply is not None
                if reply is not None and self.ntp_first_answer is None:
                    self.ntp_first_answer = time.time()
            elif name is not None:
                self.asked.append(name)
            if reply is not None:
                self._sock.sendto(reply, (self.segment.group, self.segment.port))

    def silent_for(self) -> float:
        """Seconds until NTP answers (0: it answers now; an estimate while waiting for an event)."""
        now = time.monotonic()
        wait = self._answer_at - now
        if self._until is not None:
            ago, after, deadline = self._until
            seconds_ago = ago()
            gate = deadline - now if seconds_ago is None else min(after - seconds_ago, deadline - now)
            wait = max(wait, gate)
        return max(0.0, wait)

    def hold_ntp(self, seconds: float | None = None) -> None:
        """Stay silent for at least `seconds` (default `ntp_after`) from now: the harness calls it
        when the router powers on and when its first boot's cloud-init is done, so the silence
        covers the router's first apt attempt however long the bake and the boot took."""
        wait = self.ntp_after if seconds is None else seconds
        self._answer_at = max(self._answer_at, time.monotonic() + wait)

    def hold_ntp_until(self, ago: Callable[[], float | None], after: float, at_most: float) -> None:
        """Also stay silent until `after` seconds past an event (`ago()`: seconds since it happened,
        None before it has), and no longer than `at_most` seconds from now: the harness keeps the
        upstream's time away until the package archive has been met once on a card's own clock.
        Called again (at power-on, then after the router's cloud-init), the cap only moves later."""
        deadline = time.monotonic() + at_most
        if self._until is not None:
            deadline = max(deadline, self._until[2])
        self._until = (ago, after, deadline)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
