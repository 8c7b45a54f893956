"""One mDNS question from a given source address: `python3 mdnsmini.py SRC NAME SECONDS` prints
the first IPv4 address the answer holds, or "no answer" after SECONDS. A "legacy unicast" query
(not from port 5353), so the responder answers straight to this socket; the multicast leaves by
the interface holding SRC, with or without a route. Stdlib only: it runs in network namespaces
(tests/unit/test_trusted_networks_netns.py) and beside the QEMU router's uplink
(tests/infra/test_router_lan.py)."""

import socket
import struct
import sys
import time

src, name = sys.argv[1], sys.argv[2]
query = struct.pack(">6H", 0x4242, 0, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))  # not port 5353: a "legacy unicast" query, answered straight to this socket
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.settimeout(1)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    s.sendto(query, ("224.0.0.251", 5353))
    try:
        data = s.recv(4096)
    except OSError:
        continue
    def skip_name(i):
        while data[i]:
            if data[i] >= 0xC0:
                return i + 2
            i += data[i] + 1
        return i + 1
    qd, an = struct.unpack(">HH", data[4:8])
    i = 12
    for _ in range(qd):
        i = skip_name(i) + 4
    for _ in range(an):
        i = skip_name(i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[i:i + 10])
        if rtype == 1:
            print(socket.inet_ntoa(data[i + 10:i + 14]))
            sys.exit(0)
        i += 10 + rdlen
print("no answer")
