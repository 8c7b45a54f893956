"""The test bed itself, without the bake: does a bare test-bed image boot like the real flavor?

Boots the cached test bed with a hand-made NoCloud seed (ceil_e2e.seed) and checks what the rest
of the suite takes for granted, so that a test-bed problem is told apart from a bake problem:
seed found the flavor's way, SSH with the key only, cloud-init clean, the flavor's partitions and
mounts, no identity baked in, root grown to the disk, and packages from the local repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from ceil_e2e import readiness, seed, session
from ceil_e2e.cluster import free_port, log, log_to
from ceil_e2e.fakes import APT_ADDR, standard_internet
from ceil_e2e.vm import Guest, Uplink
from ceil_infra.ssh import Endpoint, SshConfig, generate_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bare():
    s = settings = session.settings()
    tb = session.testbed(s["arch"], s["flavor"])
    art = settings["artifacts"] / "testbed"
    art.mkdir(parents=True, exist_ok=True)
    log_to(art.parent / "progress.log")
    work = Path(tempfile.mkdtemp(prefix="ceil-e2e-testbed-", dir=settings["workdir"]))
    (work / "pid").write_text(str(os.getpid()))  # stale-run cleanup (session.remove_stale_workdirs)
    net = standard_internet(tb.repo, art / "fakes.log")
    guest = None
    try:
        key = generate_key(work / "id_ed25519")
        img = work / "disk.img"
        seed.copy_sparse(tb.image, img)
        os.truncate(img, 8 << 30)
        seed.seed_testbed(img, "bare", Path(f"{key}.pub").read_text(),
                          apt_mirror=f"http://{APT_ADDR[0]}/debian")
        port = free_port()
        ssh = SshConfig(art / "ssh_config", "ceil", key, [Endpoint("bare", "127.0.0.1", port)], art / "known_hosts")
        guest = Guest("bare", img, s["arch"], art, lan=None, uplink=Uplink(port, net.guestfwds()),
                      cpus=int(os.environ.get("CEIL_E2E_CPUS", 1)))
        guest.start()
        t = readiness.wait_ssh(ssh, "bare", 1200, [guest])
        readiness.wait_cloud_init(ssh, "bare", 900)
        log(f"bare test bed: SSH after {t:.0f}s, cloud-init done after {time.monotonic() - guest.started_at:.0f}s")
        yield {"host": ssh.testinfra_host("bare"), "testbed": tb, "ssh": ssh}
    except BaseException:
        if guest is not None:
            readiness.collect(ssh, "bare", art / "diagnostics")
        raise
    finally:
        if guest is not None:
            guest.cleanup()
        net.close()
        shutil.rmtree(work, ignore_errors=True)


def test_seed_found_and_cloud_init_clean(bare):
    host = bare["host"]
    res = host.run("cloud-init status --long")
    assert res.rc == 0, res.stdout
    assert "DataSourceNoCloud" in res.stdout
    assert host.run("hostname").stdout.strip() == "bare"


def test_flavor_layout(bare):
    host, flavor = bare["host"], bare["testbed"].manifest["flavor"]
    import yaml

    facts = yaml.safe_load((session.REPO / "images" / f"{flavor}.yaml").read_text())["partitions"]
    boot = host.mount_point(facts["boot"]["mount"])
    assert boot.exists and boot.filesystem == "vfat"
    assert host.run(f"lsblk -no LABEL {boot.device}").stdout.strip() == facts["boot"]["label"]
    root = host.mount_point("/")
    assert root.filesystem == "ext4"
    assert host.run(f"lsblk -no LABEL {root.device}").stdout.strip() == facts["root"]["label"]
    # growpart + resizefs on first boot, as on a Pi with a bigger card than the image
    size = int(host.check_output("df --output=size -B1 / | tail -1"))
    assert size > 6 << 30, f"root file system not grown: {size} bytes"


def test_no_identity_baked_in(bare):
    host = bare["host"]
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32
    # host keys exist now, made on this boot (after the image was built)
    built = bare["testbed"].dir.joinpath("manifest.json").stat().st_mtime
    for key in host.run("ls /etc/ssh/ssh_host_*_key").stdout.split():
        assert host.file(key).mtime.timestamp() > built, f"{key} predates this boot"
    assert host.run("sudo grep -c '^root:[*!]' /etc/shadow").stdout.strip() == "1"


def test_packages_install_from_the_local_repository(bare):
    host = bare["host"]
    out = host.run("sudo apt-get update 2>&1 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y "
                   "--no-install-recommends wireguard-tools 2>&1")
    assert out.rc == 0, out.stdout[-2000:]
    assert host.run("wg --version").rc == 0


def test_ping_works_for_the_admin_user(bare):
    """As on Ubuntu and Pi OS: network checks run ping without sudo."""
    assert bare["host"].run("ping -c1 -W5 127.0.0.1").rc == 0
