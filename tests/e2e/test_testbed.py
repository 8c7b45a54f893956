"""The test bed itself, without the bake: does a bare test-bed image boot like the real flavor?

Boots the cached test bed with a hand-made NoCloud seed (ceil_e2e.bare) and checks what the rest
of the suite takes for granted, so that a test-bed problem is told apart from a bake problem:
seed found the flavor's way, SSH with the key only, cloud-init clean, the flavor's partitions and
mounts, no identity baked in, root grown to the disk, and packages from the local repository.
"""

from __future__ import annotations

import pytest

from ceil_e2e import session

# Its own guest: it runs with the other own-guest tests, before the shared cluster boots, and
# the session boots it while the broken-image test runs (tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.own_cluster, pytest.mark.bare_testbed]


@pytest.fixture(scope="module")
def bare():
    try:
        yield session.bare().wait()
    finally:
        session.close_bare()


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
