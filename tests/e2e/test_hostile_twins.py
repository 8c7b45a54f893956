"""The test beds reproduce hostile facts of the real images (docs/testing.md, "Hostile twins");
these checks show, on the session's cluster, that each fact bit and ceil coped with it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_first_boot_waits_for_unattended_upgrades_instead_of_failing(nodes, cluster):
    """The Ubuntu twin holds dpkg's and apt's locks after its first boot, as Ubuntu's first
    unattended-upgrades run does; the packages step waits for them, and no attempt fails on a
    lock. (Attempts may still fail while the router is away: its power-cut test runs meanwhile.)"""
    if not cluster.flavor.startswith("testbed-ubuntu"):
        pytest.skip(f"{cluster.flavor} mimics Raspberry Pi OS, which runs no unattended-upgrades")
    for name, host in nodes.items():
        with host.sudo():
            holder = host.check_output("journalctl -u testbed-unattended-upgrades.service --no-pager -o cat")
            packages = host.check_output("journalctl -u ceil-packages.service --no-pager -o cat")
            status = json.loads(host.file("/var/lib/ceil/status.json").content_string)
        assert "holding /var/lib/dpkg/lock-frontend" in holder, f"{name}: the twin's lock holder did not run"
        assert "is held (unattended-upgrades?): waiting for it" in packages, f"{name}:\n{packages}"
        assert status["steps"]["packages"]["state"] == "done", f"{name}: {status['steps']['packages']}"
        # apt's own wait ("Waiting for cache lock: Could not get lock ... held by process ...", from
        # DPkg::Lock::Timeout) is fine: with the stale-clock twin, the clock's jump to the bake time
        # fires Debian's Persistent apt-daily timer, whose apt-get may hold the lock for a while.
        # What must not appear is apt giving up on a lock (an "E:" line).
        refusals = [line for line in packages.splitlines() if line.startswith("E:") and "lock" in line.lower()]
        assert not refusals, f"{name}: an apt call failed on a lock:\n{packages}"


def test_a_card_booted_after_its_bake_waits_for_network_time_before_apt(machines, cluster):
    """The cards are first booted BOOTED_AFTER_BAKE_DAYS after their bake, as far as they can
    tell, and the archive was signed since: apt refuses it on the bake-time clock. The twin must
    have bitten somewhere (the nodes, at least, ask for packages before the router serves the
    upstream's time, which stays silent for the first NTP_DELAY seconds of the router's boot),
    and every packages step got through once the clock was right."""
    from ceil_e2e.cluster import BOOTED_AFTER_BAKE_DAYS

    if not BOOTED_AFTER_BAKE_DAYS:
        pytest.skip("CEIL_E2E_BOOTED_AFTER_BAKE_DAYS=0: the cards are booted right after their bake")
    waited, steps = [], {}
    for name, host in machines.items():
        with host.sudo():
            status = json.loads(host.file("/var/lib/ceil/status.json").content_string)
        step = steps[name] = status["steps"]["packages"]
        # Read from status.json, which ceil-step fsyncs: the router's journal lost these lines
        # when the power-cut test cut it (journald syncs every 5 minutes; run e2e24).
        if any("earlier than the package archive's signature" in why for why in step.get("waited", [])):
            waited.append(name)
        assert step["state"] == "done", f"{name}: {step}"
    # The harness's side of the story: CI keeps no artefacts, so the message must say what happened
    # (CI's runs on db17f7d and 64127d4 failed here, while every run on the developers' machine passed).
    from ceil_e2e import session
    from ceil_e2e.cluster import log

    harness = session.active().clock_twin_timeline() if session.active() else "(no harness cluster)"
    log("stale-clock twin: " + harness.replace("\n", "; ") + f"; refused on: {', '.join(waited) or 'none'}")
    if not waited:
        seen = []
        for name, host in machines.items():
            with host.sudo():
                # What set this machine's clock, and when (every boot; the first-boot lines matter).
                clock = host.run("journalctl --no-pager -o short-iso -g 'clock|time server|Contacted|"
                                 "not valid yet|Not live until|System clock' | tail -n 12").stdout
            seen.append(f"{name}: packages {steps[name]}\n{clock}")
        pytest.fail("no machine's apt refused the archive signed after the bake: the twin did not bite\n"
                    + harness + "\n" + "\n".join(seen))


def test_on_the_pi5_twin_nodes_boot_the_4k_page_kernel_and_the_router_the_boards_own(cluster):
    """The Pi OS twin plays a Pi 5 (its firmware boots kernel_2712.img, 16K pages on arm64): the
    nodes' config.txt, as ceil baked it, makes the firmware boot kernel8.img with initramfs8,
    while the router keeps the board's own (kubernetes.pi5_page_size, docs/hardware.md). The
    pages themselves are checked by test_hardware.py, on real Pis too."""
    from ceil_e2e import session

    c = session.active()
    if c is None or c.testbed.manifest.get("twin", {}).get("board") != "pi5":
        pytest.skip(f"{cluster.flavor} does not stand in for a Pi 5")
    booted = {name: (m.guest.assets.kernel, m.guest.assets.initrd) for name, m in c.machines.items()}
    want = {name: ("kernel_2712.img", "initramfs_2712") if name == "router" else ("kernel8.img", "initramfs8")
            for name in booted}
    assert booted == want
