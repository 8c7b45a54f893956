"""The ceil-packages step script run for real on a scratch root, apt-get and dpkg stubbed.

Its power-cut case was found by the e2e power-cut test: an index file renamed into place but
empty (its data lost with the page cache) made every retry fail with "no installation
candidate", because apt trusted it as current."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/common/lib/steps/packages.sh.j2"
PACKAGES = "10.0.2.100_debian_dists_trixie_main_binary-amd64_Packages"


@pytest.fixture
def scratch(tmp_path):
    root = tmp_path / "root"
    (root / "etc/ceil/apt").mkdir(parents=True)
    (root / "etc/ceil/packages.txt").write_text("# role packages\ndnsmasq\nchrony\n")
    (root / "etc/ceil/apt/sources.list").write_text("deb http://10.0.2.100/debian trixie main\n")
    (root / "usr/sbin").mkdir(parents=True)
    lists = root / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "lock").write_text("")
    script = tmp_path / "packages.sh"
    script.write_text(jinja2.Template(SCRIPT.read_text()).render())
    stubs, log = tmp_path / "stubs", tmp_path / "calls.log"
    stubs.mkdir()
    # apt-get: `update` records which index files it found and writes a good one; `install`
    # fails while STUB_INSTALL_RC says so, and records whether policy-rc.d was in place.
    (stubs / "apt-get").write_text(f"""#!/bin/sh
for a in "$@"; do case "$a" in
  update) echo "update found: $(cd {lists} && ls -s --block-size=1 | tr '\\n' ' ')" >> {log}
          echo "Package: dnsmasq" > {lists}/{PACKAGES}; exit 0 ;;
  install) echo "install policy=$(cat {root}/usr/sbin/policy-rc.d 2>/dev/null | tail -1) $*" >> {log}
           # As apt: dpkg and its maintainer scripts get DPkg::Path as their PATH, not the
           # caller's (here the stubs stand for the system's own programs).
           PATH={stubs}:/usr/sbin:/usr/bin:/sbin:/bin
           for o in "$@"; do case "$o" in DPkg::Path=*) PATH="${{o#DPkg::Path=}}" ;; esac; done
           # What dh_installsystemd's postinst snippet runs for each package with a unit
           # (none runs when the download fails: STUB_NO_POSTINST).
           if [ -z "${{STUB_NO_POSTINST:-}}" ]; then
             systemctl --system daemon-reload; systemctl --quiet is-enabled chrony.service
             systemctl --system daemon-reload; systemctl start dnsmasq.service
           fi
           exit "${{STUB_INSTALL_RC:-0}}" ;;
esac; done
""")
    (stubs / "dpkg").write_text(f'#!/bin/sh\necho "dpkg $*" >> {log}\n')
    (stubs / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}\n')
    for f in stubs.iterdir():
        f.chmod(0o755)

    def run(**env: str) -> subprocess.CompletedProcess:
        full = {**os.environ, "CEIL_ROOT": str(root), "CEIL_LIB": str(SCRIPT.parents[1]),
                "CEIL_STEP_WHY": str(tmp_path / "why"), "PATH": f"{stubs}:{os.environ['PATH']}", **env}
        return subprocess.run(["sh", str(script)], env=full, capture_output=True, text=True, timeout=60)

    return root, lists, run, log


def test_installs_the_role_packages_from_the_private_sources_with_daemons_held(scratch):
    root, _, run, log = scratch
    done = run()
    assert done.returncode == 0, done.stderr
    calls = log.read_text()
    assert "dpkg --configure -a" in calls
    assert "install policy=exit 101" in calls and "dnsmasq chrony" in calls
    assert f"Dir::Etc::SourceList={root}/etc/ceil/apt/sources.list" in calls
    assert not (root / "usr/sbin/policy-rc.d").exists()  # removed again afterwards


def test_an_empty_index_left_by_a_power_cut_is_fetched_again(scratch):
    _, lists, run, log = scratch
    (lists / PACKAGES).write_text("")  # renamed into place, data lost
    assert run().returncode == 0
    found = [line for line in log.read_text().splitlines() if line.startswith("update found:")][0]
    assert PACKAGES not in found, "apt-get update ran with the empty index still in place"


def test_a_failed_install_drops_every_index_for_the_next_attempt(scratch):
    _, lists, run, _ = scratch
    failed = run(STUB_INSTALL_RC="100")
    assert failed.returncode == 1
    assert sorted(p.name for p in lists.iterdir()) == ["lock"]


def test_waits_for_a_held_dpkg_lock_instead_of_failing(scratch):
    """Ubuntu's unattended-upgrades holds dpkg's lock after first boot: the step waits it out."""
    import fcntl
    import threading

    root, _, run, log = scratch
    (root / "var/lib/dpkg").mkdir(parents=True)
    lock = (root / "var/lib/dpkg/lock-frontend").open("a")
    fcntl.lockf(lock, fcntl.LOCK_EX)  # like apt, an fcntl lock (a different process from the step's)
    timer = threading.Timer(2.0, lock.close)  # closing the file releases the lock
    timer.start()
    try:
        done = run(CEIL_APT_LOCK_POLL="1")
    finally:
        timer.cancel()
        lock.close()
    assert done.returncode == 0, done.stderr
    assert "/var/lib/dpkg/lock-frontend is held" in done.stderr and "free after" in done.stderr
    assert "install" in log.read_text()


def test_a_lock_held_too_long_fails_the_attempt_for_a_retry(scratch):
    import fcntl

    root, _, run, log = scratch
    with (root / "var/lib/apt/lists/lock").open("a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        done = run(CEIL_APT_LOCK_POLL="1", CEIL_APT_LOCK_WAIT="2")
    assert done.returncode == 1
    assert "/var/lib/apt/lists/lock still held after 2s" in done.stderr
    assert not log.exists() or "install" not in log.read_text()


@pytest.mark.parametrize("left", [b"", b"#!/bin/sh\n# ceil-packages: daemons wait for their first-boot step\nexit 101\n"])
def test_a_policy_file_a_power_cut_left_is_taken_over_and_removed(scratch, left):
    """Found by the power-cut test with the lock-holding Ubuntu twin: a cut right after the
    policy file was written left it empty ("Exec format error" in every postinst, for good), or
    whole and never removed (no daemon restarted by later upgrades)."""
    root, _, run, log = scratch
    (root / "usr/sbin/policy-rc.d").write_bytes(left)
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    done = run()
    assert done.returncode == 0, done.stderr
    assert "install policy=exit 101" in log.read_text()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "usr/sbin/policy-rc.d.ceil-tmp").exists()


def test_somebody_elses_policy_file_is_left_alone(scratch):
    root, _, run, log = scratch
    theirs = b"#!/bin/sh\n# a container's own policy\nexit 101\n"
    (root / "usr/sbin/policy-rc.d").write_bytes(theirs)
    assert run().returncode == 0
    assert (root / "usr/sbin/policy-rc.d").read_bytes() == theirs


def test_an_archive_signed_after_the_cards_clock_says_it_waits_for_network_time(scratch, tmp_path):
    """Issue 17: a card booted long after its bake: apt refuses until the clock is right."""
    root, lists, run, log = scratch
    stub = tmp_path / "stubs/apt-get"
    stub.write_text("#!/bin/sh\ncase \" $* \" in *' update '*) ;; *) exit 0 ;; esac\n"
                    "echo 'E: Release file for http://10.0.2.100/debian/dists/trixie/InRelease is not valid yet"
                    " (invalid for another 40d 3h 2min 1s). Updates for this repository will not be applied.'\nexit 100\n")
    done = run()
    assert done.returncode == 1
    assert "earlier than the package archive's signature: waiting for network time" in done.stderr
    # ... and tells ceil-step why, in words that stay the same from one attempt to the next
    assert (tmp_path / "why").read_text() == ("the clock is earlier than the package archive's signature:"
                                              " waiting for network time\n")
    assert not (lists / ".ceil-update.log").exists()
    # timesyncd asks its server again now, not at its next (backed-off) poll
    assert "systemctl try-restart systemd-timesyncd.service" in log.read_text()


def test_install_points_timesyncd_at_the_clusters_time_servers(tmp_path):
    from router_lan_render import cluster_from

    from ceil.features import FIRSTBOOT_DIR, jinja_env

    cluster = cluster_from({"network": {"ntp_servers": ["192.0.2.53", "ntp.example.org"]}})
    env = jinja_env(FIRSTBOOT_DIR)  # as ceil.payload renders it
    router = env.get_template("install.sh.j2").render(cluster=cluster, role="router", boot_mount="/boot/firmware")
    node = env.get_template("install.sh.j2").render(cluster=cluster, role="one", boot_mount="/boot/firmware")
    assert "NTP=%s\\nPollIntervalMaxSec=64\\n' '192.0.2.53 ntp.example.org'" in router
    assert "NTP=%s\\nPollIntervalMaxSec=64\\n' 10.42.0.1 >" in node
    for text in (router, node):
        assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0


def test_the_maintainer_scripts_reloads_become_one_after_the_install(scratch):
    """Issue 21: each postinst's `systemctl --system daemon-reload` (9-20 s each under TCG) is
    skipped during the install, every other systemctl call reaches the real one, and systemd is
    reloaded once afterwards, failed install or not."""
    _, _, run, log = scratch

    def calls() -> list[str]:
        return [c.split(" policy=")[0] for c in log.read_text().splitlines() if c.startswith(("install", "systemctl"))]

    for rc, code in (("0", 0), ("100", 1)):
        log.write_text("")
        assert run(STUB_INSTALL_RC=rc).returncode == code
        assert calls() == ["install", "systemctl --quiet is-enabled chrony.service", "systemctl start dnsmasq.service",
                           "systemctl daemon-reload"], rc
    # An attempt that configured nothing (a node's archive not served yet) asks for no reload.
    log.write_text("")
    assert run(STUB_INSTALL_RC="100", STUB_NO_POSTINST="1").returncode == 1
    assert calls() == ["install"]
