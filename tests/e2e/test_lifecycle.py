"""Power cut after first boot: the machine comes back unchanged.

The trap (design.md): if the seed vanished or its instance-id changed, cloud-init would take the
next boot for a new instance and regenerate the SSH host keys. The session's known_hosts pins
every machine's host key (HostKeyAlias + StrictHostKeyChecking accept-new), so any change also
breaks the login itself.

A clean reboot takes the same path through cloud-init (same seed, same instance-id), so only
the harder case runs here; the router's clean reboot is exercised by
tests/infra/test_router_lan.py::test_addresses_are_kept_across_a_router_reboot (~3 min saved).
"""

from __future__ import annotations

import pytest

from ceil_e2e import session

pytestmark = [pytest.mark.e2e, pytest.mark.full]

SNAPSHOT = (
    "sudo sh -c 'cat /etc/ssh/ssh_host_*_key.pub; cat /etc/machine-id; ls -l --time-style=+%s /var/lib/ceil/done/;"
    " cat /var/lib/cloud/data/instance-id'"
)


def snapshot(host) -> str:
    return host.check_output(SNAPSHOT)


def boots_seen_by_cloud_init(host) -> int:
    # one "running 'init'" line per boot in which cloud-init ran its network stage
    return int(host.check_output("sudo grep -c \"running 'init'\" /var/log/cloud-init.log || true") or 0)


def test_router_comes_back_unchanged_after_a_power_cut(router):
    c = session.get()
    before = snapshot(router)
    instance = router.check_output("sudo cat /var/lib/cloud/data/instance-id")
    # A power cut is a kill -9 of QEMU: the guest's unsynced page cache is lost, the disk stays.
    router.check_output("echo power_cut | sudo tee /var/lib/ceil/e2e-probe >/dev/null && sync")
    boots = c.machines["router"].guest.boots
    c.power_cut("router")
    assert c.machines["router"].guest.boots == boots + 1
    router = c.host("router")
    after = snapshot(router)
    assert after == before, "after a power cut: host keys, machine-id, done-markers or instance-id changed"
    assert router.check_output("sudo cat /var/lib/cloud/data/instance-id") == instance
    assert router.check_output("cat /var/lib/ceil/e2e-probe") == "power_cut"
    assert router.run("systemctl is-active ceil-firstboot.target").stdout.strip() == "active"
