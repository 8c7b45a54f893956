"""Issue 17: Ubuntu 26.04's A/B boot slots, on their twin (testbed-ubuntu-slots).

The twin keeps its boot assets in current/ and ships a pending new/ slot, so its first boot is a
double boot: it reboots into the Pi's tryboot mode, the firmware (the harness, reading config.txt's
os_prefix) boots new/, and once that boot reaches multi-user, new/ becomes current/ for good. A
bake that edited only current/cmdline.txt would leave the node's second boot, and every boot
after it, without the memory cgroup k3s needs.

One node baked from the twin, booted on its own: its built-in port (eth0) on QEMU user
networking, since there is no router here to lease it an address or to jump through.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from ceil_infra.helpers import wait_for
from ceil_infra.ssh import Endpoint, SshConfig

from ceil.bakery import MEMCG_CMDLINE_FLAGS
from ceil_e2e import readiness, session
from ceil_e2e.cluster import TestCluster, free_port, log
from ceil_e2e.vm import TRYBOOT_MARK, Guest, Uplink

pytestmark = [pytest.mark.e2e, pytest.mark.full, pytest.mark.own_cluster]

@pytest.fixture(scope="module")
def slotted():
    s = session.settings()
    tb = session.testbed(s["arch"], session.SLOTS_FLAVOR)
    workdir = Path(tempfile.mkdtemp(prefix="ceil-e2e-slots-", dir=s["workdir"]))
    (workdir / "pid").write_text(str(os.getpid()))  # stale-run cleanup (session.remove_stale_workdirs)
    c = TestCluster("boot-slots", tb, s["arch"], s["artifacts"] / "boot-slots", workdir,
                    overrides={"flavor": tb.manifest["flavor"]}, roles=["one"], cache=session.CACHE)
    guest = ssh = None
    try:
        log(f"boot slots: baked one in {c.bake():.0f}s")
        img = c.image("one")
        os.truncate(img, 8 << 30)
        port = free_port()
        ssh = SshConfig(c.artifacts / "ssh_config", c.user, c.key, [Endpoint("one", "127.0.0.1", port)],
                        c.artifacts / "known_hosts")
        guest = Guest("one", img, s["arch"], c.artifacts, lan=None, uplink=Uplink(port, c.internet.guestfwds()),
                      cpus=int(os.environ.get("CEIL_E2E_CPUS", 1)))
        guest.start()
        readiness.wait_ssh(ssh, "one", c.timeouts.ssh, [guest])
        readiness.wait_cloud_init(ssh, "one", c.timeouts.cloud_init)
        log(f"boot slots: cloud-init done after boots through {guest.slots}")
        yield {"guest": guest, "ssh": ssh, "host": ssh.testinfra_host("one"), "cluster": c}
    finally:
        if guest is not None:
            guest.cleanup()
        if ssh is not None:
            ssh.close()
        c.close()


def flags_once(line: str) -> bool:
    return all(line.split().count(flag) == 1 for flag in MEMCG_CMDLINE_FLAGS)


def test_the_first_boot_double_boots_into_the_pending_slot_with_the_nodes_flags(slotted):
    g, host = slotted["guest"], slotted["host"]
    assert g.slots[:2] == ["current/", "new/"], f"boots went through {g.slots}, not current/ then the tryboot of new/"
    line = host.file("/proc/cmdline").content_string
    assert TRYBOOT_MARK in line, f"this boot is not the tryboot: {line}"
    assert flags_once(line), f"the pending slot's command line lacks ceil's flags: {line}"


def test_the_validated_slot_becomes_current_and_keeps_the_flags_after_a_reboot(slotted):
    g, host, ssh = slotted["guest"], slotted["host"], slotted["ssh"]
    # The twin's piboot-try-validate runs after multi-user.target.
    wait_for("new/ to become current/", lambda: not host.file("/boot/firmware/new").exists, timeout=300)
    assert host.file("/boot/firmware/current/state").content_string.strip() == "good"
    for slot in ("current", "old"):
        assert flags_once(host.file(f"/boot/firmware/{slot}/cmdline.txt").content_string), slot
    boots = g.boots
    ssh.run("one", "sudo systemctl reboot", timeout=30)
    ssh.drop_master("one")
    wait_for("the node to reboot", lambda: (g.poll(), g.boots > boots)[1], timeout=300, every=2)
    readiness.wait_ssh(ssh, "one", 900, [g])
    line = host.file("/proc/cmdline").content_string
    assert g.slots[-1] == "current/" and TRYBOOT_MARK not in line, (g.slots, line)
    assert flags_once(line), line
