"""A node's chrony after its only source, the router, jumps in time (the router served its own
clock, minutes behind, then its upstream answered): how soon does the node take the router again?

A real chronyd (-x: it never touches this machine's clock) runs the node's rendered chrony config
in a network namespace; a small NTP server in another namespace plays the router, 30 minutes
behind until the node has selected it, then right. With chrony's default minpoll (64 s) the node
went over four and a half minutes without a selectable source in this lab (over 13 minutes in
e2e run e2e13); the rendered minpoll 4 brings it back in under two.

Needs root (ip netns) and chronyd; skipped otherwise. About 2 minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from router_lan_lab import RouterLanLab
from router_lan_render import cluster_from, render

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "chronyd")),
    reason="needs root, ip and chronyd (scripts/setup-host.sh --test)",
)

ROUTER_IP = "10.42.0.1"  # the lab router's LAN address; node one is 10.42.0.11
RECOVERY_LIMIT_S = 150

# An NTP server OFFSET seconds behind until the file SWITCH exists, then right.
FAKE_ROUTER = r"""
import os, socket, struct, sys, time
addr, offset, switch = sys.argv[1], float(sys.argv[2]), sys.argv[3]
def ts(t):
    return struct.pack("!II", int(t) + 2208988800, int((t % 1) * 2**32))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 123))
while True:
    data, peer = s.recvfrom(512)
    if len(data) < 48:
        continue
    shift = 0.0 if os.path.exists(switch) else -offset
    now = time.time() + shift
    head = struct.pack("!BBbb", (4 << 3) | 4, 2, 4, -20) + struct.pack("!II", 20, 20) + bytes([192, 0, 2, 53])
    s.sendto(head + ts(now - 1) + data[40:48] + ts(now) + ts(time.time() + shift), peer)
"""


@pytest.fixture
def lab(tmp_path):
    """The router/node namespaces of router_lan_lab: the router on 10.42.0.1, node one on .11."""
    lab = RouterLanLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def wait_for_line(log: Path, pattern: str, after: int, seconds: float) -> float | None:
    """Seconds until a log line matching `pattern` appears beyond the first `after` lines."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        lines = log.read_text().splitlines()[after:]
        if any(re.search(pattern, line) for line in lines):
            return time.monotonic() - start
        time.sleep(1)
    return None


def test_a_node_takes_the_router_again_soon_after_the_routers_time_jumps(lab):
    work = lab.dir
    out = render(cluster_from({}), "one", work / "render")
    node_conf = (out / "etc/chrony/ceil.conf").read_text()
    assert f"server {ROUTER_IP} " in node_conf
    conf = work / "node-chrony.conf"
    conf.write_text(node_conf + f"pidfile {work}/chronyd.pid\ncmdport 0\n")
    switch = work / "switch"
    lab.start("rtr", sys.executable, "-c", FAKE_ROUTER, ROUTER_IP, "1800", str(switch), log="router.log")
    lab.start("node", "chronyd", "-x", "-d", "-u", "root", "-f", str(conf), log="chronyd.log")
    log = work / "chronyd.log"
    assert wait_for_line(log, r"Selected source " + re.escape(ROUTER_IP), 0, 60) is not None, log.read_text()
    seen = len(log.read_text().splitlines())
    switch.touch()  # the router's upstream answered: its time jumps 30 minutes forward
    assert wait_for_line(log, r"no selectable sources", seen, 60) is not None, log.read_text()
    back = wait_for_line(log, r"Selected source " + re.escape(ROUTER_IP), seen, RECOVERY_LIMIT_S)
    assert back is not None, f"no source for over {RECOVERY_LIMIT_S} s after the router's jump:\n{log.read_text()[-2000:]}"
