"""A minimal DNS client and fake upstream server (standard library only) for the netns tests.

    python3 dnsmini.py query SERVER NAME [TYPE [TIMEOUT]]   prints the answers (A / PTR), the rcode, or timeout
    python3 dnsmini.py serve ADDR ANSWER_IP LOG     answers every A query with ANSWER_IP, logs names;
                                                    names under rebind. get 10.42.0.1, as a DNS-rebinding
                                                    attacker's server answers for the router's LAN address
"""

from __future__ import annotations

import random
import socket
import struct
import sys

TYPES = {"A": 1, "PTR": 12}
REBIND_IP = "10.42.0.1"


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p) + b"\0"


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels, end = [], None
    while msg[pos]:
        if msg[pos] & 0xC0 == 0xC0:  # compression pointer
            end = end or pos + 2
            pos = struct.unpack("!H", msg[pos:pos + 2])[0] & 0x3FFF
            continue
        labels.append(msg[pos + 1:pos + 1 + msg[pos]].decode())
        pos += 1 + msg[pos]
    return ".".join(labels), (end or pos + 1)


def query(server: str, name: str, qtype: str = "A", timeout: float = 3.0) -> list[str] | str:
    """Answers as strings, or 'rcode=N' / 'timeout'."""
    qid = random.randrange(65536)
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        try:
            msg = s.recv(4096)
        except socket.timeout:
            return "timeout"
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    if flags & 0xF:
        return f"rcode={flags & 0xF}"
    pos = 12
    for _ in range(qd):
        pos = read_name(msg, pos)[1] + 4
    out = []
    for _ in range(an):
        pos = read_name(msg, pos)[1]
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(msg[pos:pos + 4]))
        elif rtype == 12:
            out.append(read_name(msg, pos)[0])
        pos += rdlen
    return out


def serve(addr: str, answer_ip: str, log_path: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        msg, peer = s.recvfrom(4096)
        name, end = read_name(msg, 12)
        with open(log_path, "a") as log:
            log.write(f"{name}\n")
        header = msg[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
        ip = REBIND_IP if name.startswith("rebind.") else answer_ip
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
        s.sendto(header + msg[12:end + 4] + answer, peer)


if __name__ == "__main__":
    if sys.argv[1] == "query":
        qtype = sys.argv[4] if len(sys.argv) > 4 else "A"
        print(query(sys.argv[2], sys.argv[3], qtype, float(sys.argv[5]) if len(sys.argv) > 5 else 3.0))
    else:
        serve(*sys.argv[2:5])
