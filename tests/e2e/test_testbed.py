"""The test beds themselves, without the bake: does a bare test-bed image boot like its flavor?

Boots cached test beds with a hand-made NoCloud seed (ceil_e2e.bare): by default the flavor the
cluster does not run on, so each run boots both testbed-ubuntu and testbed-raspios
(CEIL_E2E_BARE picks others). Checks what the rest of the suite takes for granted, so that a
test-bed problem is told apart from a bake problem: seed found the flavor's way, SSH with the
key only, cloud-init clean, the flavor's partitions and mounts, no identity baked in (and what
becomes of a host key the seed gives), root grown to the disk, and packages from the local
repository.
"""

from __future__ import annotations

import json
import time

import pytest
from ceil.catalog import Flavor, load_flavor

from ceil_e2e import session

# Its own guest: it runs with the other own-guest tests, before the shared cluster boots, and
# the session boots it while the broken-image test runs (tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.own_cluster, pytest.mark.bare_testbed]


@pytest.fixture(scope="module", params=session.settings()["bare"])
def bare(request):
    # All of them were started together at the start of the session (tests/e2e/conftest.py).
    try:
        yield session.bare(request.param).wait()
    finally:
        session.close_bare(request.param)


def _flavor(bare) -> Flavor:
    return load_flavor(bare["testbed"].manifest["flavor"])


def test_seed_found_the_flavors_way_and_cloud_init_clean(bare):
    host = bare["host"]
    res = host.run("cloud-init status --long")
    assert res.rc == 0, res.stdout
    assert "DataSourceNoCloud" in res.stdout
    assert host.run("hostname").stdout.strip() == "bare"
    # Ubuntu finds the seed as a file system labelled system-boot; Pi OS reads the directory its
    # cloud.cfg.d names (seedfrom file:///boot/firmware/). A test bed that found its seed the
    # other way would let a bake that only works one way pass.
    where = host.check_output("sudo cloud-init query subplatform")
    flavor = _flavor(bare)
    if flavor.seed.method == "seedfrom":
        assert flavor.partitions.boot.mount in where, where
    else:
        assert where.startswith("config-disk"), where


def test_flavor_layout(bare):
    host, parts = bare["host"], _flavor(bare).partitions
    boot = host.mount_point(parts.boot.mount)
    assert boot.exists and boot.filesystem == "vfat"
    assert host.run(f"lsblk -no LABEL {boot.device}").stdout.strip() == parts.boot.label
    root = host.mount_point("/")
    assert root.filesystem == "ext4"
    assert host.run(f"lsblk -no LABEL {root.device}").stdout.strip() == parts.root.label
    # growpart + resizefs on first boot, as on a Pi with a bigger card than the image
    size = int(host.check_output("df --output=size -B1 / | tail -1"))
    assert size > 6 << 30, f"root file system not grown: {size} bytes"


def test_no_identity_baked_in(bare):
    host = bare["host"]
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32
    # host keys exist now, made on this boot. Measured on the guest's own clock, which starts
    # months behind the host's (the stale-clock twin): the keys are younger than the boot.
    now, up = host.check_output("date +%s.%N; cut -d' ' -f1 /proc/uptime").split()
    booted = float(now) - float(up)
    for key in host.run("ls /etc/ssh/ssh_host_*_key").stdout.split():
        assert host.file(key).mtime.timestamp() >= booted - 2, f"{key} predates this boot"
    assert host.run("sudo grep -c '^root:[*!]' /etc/shadow").stdout.strip() == "1"


def test_packages_install_from_the_local_repository(bare):
    host = bare["host"]
    # The Ubuntu twin's stand-in for unattended-upgrades holds apt's locks after the first boot,
    # as the real one does: wait for it as a user would (ceil's own step waits for the locks).
    host.run("sudo sh -c 'while systemctl -q is-active testbed-unattended-upgrades.service; do sleep 5; done'")
    # The twin wakes up months in the past (no RTC): apt would find the archive "not valid yet".
    # Set the clock first, as a user of a bare card must (ceil's cards do it from their bake time).
    # After the jump another apt-get may hold the locks (the daily apt timers, months overdue, as
    # on a real card; seen in ci-art81 and on arm64): wait for them as a user's apt would.
    host.run(f"sudo date -s @{int(time.time())}")
    wait = "-o DPkg::Lock::Timeout=600"
    out = host.run(f"sudo apt-get {wait} update 2>&1 && sudo DEBIAN_FRONTEND=noninteractive apt-get {wait} install -y "
                   "--no-install-recommends wireguard-tools 2>&1")
    assert out.rc == 0, out.stdout[-2000:]
    assert host.run("wg --version").rc == 0


def test_ping_works_for_the_admin_user(bare):
    """As on Ubuntu and Pi OS: network checks run ping without sudo."""
    assert bare["host"].run("ping -c1 -W5 127.0.0.1").rc == 0


def test_the_secrets_step_leaves_no_byte_of_a_hostile_wifi_passphrase_on_a_real_fat(bare):
    """Issue 18 #4 at the block level, with the kernel's own vfat (this machine has none, and the
    QEMU cluster's uplink is wired, so its boot partition holds no passphrase): the router's
    network-config as ceil renders it, with a passphrase of quotes, backslashes and shell
    characters, and a secret file, on a FAT image in the twin; the real secrets step; then every
    6 bytes in a row of the passphrase are looked for in the raw image, free clusters included."""
    import base64
    import shlex

    from ceil.features import jinja_env
    from tests.unit.test_secrets_scrub import REPO, render_network_config

    host = bare["host"]
    psk = 'p"w\\d \'q\' #$(id) `x` \\"tail-of-the-passphrase'
    network_config = render_network_config(bare["ssh"].known_hosts.parent, "Home", psk)
    written = network_config.split("password: ", 1)[1].splitlines()[0]  # the value as the file holds it (JSON-escaped)
    pieces = sorted({text[i:i + 6] for text in (psk, written) for i in range(len(text) - 5)})
    script = jinja_env(REPO / "firstboot" / "common").get_template("lib/steps/secrets.sh.j2").render(
        boot_mount="/mnt/ceil-fat")
    put = lambda path, text: f"echo {base64.b64encode(text.encode()).decode()} | base64 -d > {path}"  # noqa: E731
    # How many of the pieces the image's blocks hold, free clusters included (one grep per piece:
    # grep -o would count only matches that do not overlap).
    found = ("n=0; while IFS= read -r p; do grep -qaF -e \"$p\" /tmp/ceil-fat.img && n=$((n+1)); done"
             " < /tmp/ceil-pieces; echo $n")
    steps = [
        "umount /mnt/ceil-fat 2>/dev/null; rm -rf /tmp/ceil-fat.img /mnt/ceil-fat /tmp/ceil-dest",
        "truncate -s 8M /tmp/ceil-fat.img", "mkfs.vfat /tmp/ceil-fat.img >/dev/null", "mkdir -p /mnt/ceil-fat",
        put("/tmp/ceil-pieces", "\n".join(pieces) + "\n"),
        "mount -o loop /tmp/ceil-fat.img /mnt/ceil-fat", "mkdir -p /mnt/ceil-fat/ceil/secrets/wireguard",
        put("/mnt/ceil-fat/network-config", network_config),
        put("/mnt/ceil-fat/ceil/secrets/wireguard/wg0.conf", f"PrivateKey = {psk}-as-a-secret-file\n"),
        "umount /mnt/ceil-fat", f"echo before: $({found})",  # the scan finds them before the step
        "mount -o loop /tmp/ceil-fat.img /mnt/ceil-fat", put("/tmp/ceil-secrets.sh", script),
        "CEIL_SECRETS_DEST=/tmp/ceil-dest sh /tmp/ceil-secrets.sh", "cat /mnt/ceil-fat/network-config",
        "ls -a /mnt/ceil-fat", "umount /mnt/ceil-fat", f"echo after: $({found})"]
    cleanup = ("umount /mnt/ceil-fat 2>/dev/null; rm -rf /tmp/ceil-fat.img /tmp/ceil-dest /tmp/ceil-secrets.sh"
               " /tmp/ceil-pieces")
    done = host.run(f"sudo sh -c {shlex.quote(' && '.join(steps))}; rc=$?; sudo sh -c {shlex.quote(cleanup)}; exit $rc")
    assert done.rc == 0, done.stdout + done.stderr
    assert 'password: "REDACTED-by-ceil"' in done.stdout
    assert ".network-config.ceil" not in done.stdout  # the step left no file of its own
    before = int(done.stdout.split("before: ", 1)[1].split()[0])
    assert before >= len(pieces) // 2, done.stdout  # the passphrase was there, and the scan sees it
    after = int(done.stdout.split("after: ", 1)[1].split()[0])
    assert after == 0, f"{after} pieces of the passphrase left on the FAT"


def test_a_twin_has_no_memory_cgroup_unless_its_command_line_turns_it_on(bare):
    """Hostile twin (docs/testing.md): a Raspberry Pi kernel leaves the memory cgroup off; the
    bare seed does not turn it on, so systemd's MemoryMax= bounds nothing here, as on a Pi."""
    host = bare["host"]
    assert "cgroup_enable=memory" not in host.file(f"{_flavor(bare).partitions.boot.mount}/{_flavor(bare).cmdline}").content_string
    assert "memory" not in host.file("/sys/fs/cgroup/cgroup.controllers").content_string.split()


def test_the_pi_os_twin_renames_its_first_account_to_the_seeds_user(bare):
    """Hostile twin (issue 17): Raspberry Pi OS gives the seed's first user the image's uid-1000
    account, nologin shell included (the bare seed sets the shell back, as any seed must), with
    userconf-pi's rename banner and console dialog armed."""
    if "raspios" not in bare["testbed"].manifest["flavor"]:
        pytest.skip("only the Raspberry Pi OS twin has a built-in first account")
    host = bare["host"]
    user = host.user()
    assert user.uid == 1000 and user.home == f"/home/{user.name}", "the seed's user is not the renamed uid-1000 account"
    assert not host.user("pi").exists
    assert "renamed pi to" in host.check_output("sudo journalctl -b -u testbed-rename-first-user --no-pager")
    assert host.file("/etc/ssh/sshd_config.d/rename_user.conf").exists
    assert host.service("userconfig").is_enabled


def test_the_pi_os_twin_grows_its_root_and_reboots_before_cloud_init(bare):
    """Hostile twin (issue 17): `resize` on Raspberry Pi OS's command line grows the root file
    system at the first boot and reboots; cloud-init runs on the second boot."""
    if "raspios" not in bare["testbed"].manifest["flavor"]:
        pytest.skip("only Raspberry Pi OS resizes with a reboot")
    host, parts = bare["host"], _flavor(bare).partitions
    assert bare["guest"].boots >= 2, "the twin did not reboot during its first boot"
    assert "resize" not in host.file("/proc/cmdline").content_string.split()
    assert "resize" not in host.file(f"{parts.boot.mount}/cmdline.txt").content_string.split()
    size_gib = int(host.check_output("df --output=size -B1G / | tail -1"))
    assert size_gib >= 6, f"root is {size_gib} GiB: not grown to the 8 GiB disk"


def test_the_pi_os_twin_boots_as_a_pi5_does(bare):
    """Hostile twin (docs/hardware.md): a Pi 5's firmware boots Raspberry Pi OS's kernel_2712.img
    with its initramfs_2712, and that kernel uses 16K pages, where container images linked with a
    4K-page jemalloc abort. The twin's harness plays that firmware; on arm64 the kernel is a
    16K-page one (amd64 has 4K pages only)."""
    testbed = bare["testbed"]
    if testbed.manifest.get("twin", {}).get("board") != "pi5":
        pytest.skip(f"{testbed.manifest['flavor']} does not stand in for a Pi 5")
    host, assets = bare["host"], bare["guest"].assets
    assert (assets.kernel, assets.initrd) == ("kernel_2712.img", "initramfs_2712"), assets
    assert host.check_output("uname -r") == testbed.manifest["pi5_kernel"]
    pages = int(host.check_output("getconf PAGESIZE"))
    assert pages == (16384 if testbed.manifest["arch"] == "arm64" else 4096), pages


def test_a_host_key_the_seed_gives_is_kept_by_cloud_init_and_replaced_on_the_pi_os_twin(bare):
    """Hostile twin (docs/testing.md, "Hostile twins"): Raspberry Pi OS's cloud-init deletes and
    makes no host key (ssh_deletekeys false, ssh_genkeytypes []); its
    regenerate_ssh_host_keys.service runs once, after cloud-init's init stages and before sshd,
    and replaces every host key, the seed's too. Elsewhere cloud-init's key stays. The bare seed
    gives an ed25519 host key through ssh_keys (ceil_e2e.bare)."""
    host, flavor = bare["host"], bare["testbed"].manifest["flavor"]
    blob = lambda line: line.split()[1]  # noqa: E731  (the base64 key, not its comment)
    seed_key = blob(bare["seed_host_key"])
    machine_key = blob(host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string)
    # cloud-init put the seed's key in place (its init stage) on every flavor
    written = host.run("sudo grep -c 'Writing to /etc/ssh/ssh_host_ed25519_key.pub' /var/log/cloud-init.log")
    assert written.stdout.strip() == "1", f"cloud-init did not write the seed's host key: {written.stdout}"
    # the harness's known_hosts has what sshd showed at the first login
    known = bare["ssh"].known_hosts.read_text()
    assert machine_key in known, known
    if "raspios" not in flavor:
        assert machine_key == seed_key, "cloud-init's host key from the seed was replaced"
        return
    assert machine_key != seed_key, "the Pi OS twin kept the seed's host key: no regenerator ran after cloud-init"
    assert seed_key not in known
    # cloud-init's settings as the image ships them (its merged configuration of this boot)
    cfg = json.loads(host.check_output("sudo cat /run/cloud-init/combined-cloud-config.json"))
    assert (cfg.get("ssh_deletekeys"), cfg.get("ssh_genkeytypes")) == (False, []), \
        (cfg.get("ssh_deletekeys"), cfg.get("ssh_genkeytypes"))
    # once: it disabled itself; on this boot (the second: the resize reboot came first), after
    # cloud-init's network stage was done, and before sshd started
    unit = "regenerate_ssh_host_keys.service"
    assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "disabled"
    assert "regenerated the SSH host keys" in host.check_output(f"sudo journalctl -b -u {unit} --no-pager")
    # (the unit's own timestamps are gone: systemd unloads an inactive unit nothing refers to)
    ran = [int(json.loads(e)["__MONOTONIC_TIMESTAMP"]) for e in host.check_output(
        f"sudo journalctl -b -u {unit} -o json --output-fields=MESSAGE --no-pager").splitlines()]
    usec = lambda u, prop: int(host.check_output(f"systemctl show -P {prop} {u}"))  # noqa: E731
    assert min(ran) >= usec("cloud-init-network.service", "ActiveEnterTimestampMonotonic") > 0
    assert max(ran) <= usec("ssh.service", "ExecMainStartTimestampMonotonic")
