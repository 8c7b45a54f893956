"""The test-bed builder's shaping of a root file system (testbed/rootfs.py), on a bare directory:
no mmdebstrap, no image, no VM. The booted twin is checked by tests/e2e/test_testbed.py."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest
import yaml

from testbed import rootfs

needs_systemctl = pytest.mark.skipif(shutil.which("systemctl") is None,
                                     reason="needs systemctl (enables the unit in the tree, as the build does)")


@needs_systemctl
def test_the_pi_os_twin_leaves_host_keys_to_a_regenerator_that_runs_after_cloud_init(tmp_path):
    """Raspberry Pi OS (docs/testing.md, "Hostile twins"): cloud-init deletes and makes no host key,
    and regenerate_ssh_host_keys.service, enabled, with default dependencies (so after cloud-init's
    init stages, which are ordered before sysinit.target), before sshd."""
    root = tmp_path / "root"
    confd = root / "etc/cloud/cloud.cfg.d"
    confd.mkdir(parents=True)
    (confd / "99-ceil-testbed.cfg").write_text("datasource_list: [ NoCloud, None ]\n")
    rootfs.regenerate_host_keys(root)

    # cloud-init reads cloud.cfg.d in name order, a later file's keys winning: nothing after
    # Raspberry Pi OS's file, whose name sorts after the twin's own.
    files = sorted(confd.glob("*.cfg"))
    assert [f.name for f in files] == ["99-ceil-testbed.cfg", "99_raspberry-pi.cfg"]
    merged = {}
    for f in files:
        merged.update(yaml.safe_load(f.read_text()))
    assert merged["ssh_deletekeys"] is False and merged["ssh_genkeytypes"] == []

    unit_path = root / "usr/lib/systemd/system/regenerate_ssh_host_keys.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(unit_path.read_text())
    assert unit["Unit"]["Before"] == "ssh.service"
    assert "DefaultDependencies" not in unit["Unit"] and "After" not in unit["Unit"]  # after basic.target
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    script = root / unit["Service"]["ExecStart"].lstrip("/")
    assert script == root / "usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys"
    assert os.access(script, os.X_OK)
    wants = root / "etc/systemd/system/multi-user.target.wants/regenerate_ssh_host_keys.service"
    assert wants.is_symlink() and wants.resolve().name == unit_path.name


@needs_systemctl
def test_the_pi_os_twins_regenerator_replaces_a_seeds_host_key_and_disables_itself(tmp_path):
    """The script, with /etc/ssh moved into tmp_path and ssh-keygen and systemctl stubbed."""
    root = tmp_path / "root"
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    rootfs.regenerate_host_keys(root)
    ssh_dir, bin_dir, calls = tmp_path / "etc-ssh", tmp_path / "bin", tmp_path / "calls"
    ssh_dir.mkdir()
    bin_dir.mkdir()
    seed_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISEEDKEY seed\n"
    for name, text in (("ssh_host_ed25519_key", "private\n"), ("ssh_host_ed25519_key.pub", seed_key),
                       ("ssh_host_ed25519_key-cert.pub", "cert\n"), ("sshd_config", "Port 22\n")):
        (ssh_dir / name).write_text(text)
    for tool, action in (("ssh-keygen", f'echo "ssh-ed25519 AAAAnew twin" > {ssh_dir}/ssh_host_ed25519_key.pub; '
                                        f'touch {ssh_dir}/ssh_host_ed25519_key'),
                         ("systemctl", ":")):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n{action}\n')
        (bin_dir / tool).chmod(0o755)
    text = (root / "usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys").read_text()
    assert "rm -f /etc/ssh/ssh_host_*_key*" in text and "/dev/hwrng" in text
    script = tmp_path / "regenerate"
    script.write_text(text.replace("/etc/ssh", str(ssh_dir)).replace("/dev/hwrng", str(tmp_path / "no-hwrng")))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines() == ["ssh-keygen -A", "systemctl -q disable regenerate_ssh_host_keys"]
    assert sorted(p.name for p in ssh_dir.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"]
    assert (ssh_dir / "ssh_host_ed25519_key.pub").read_text() != seed_key
    assert "regenerated the SSH host keys: ssh_host_ed25519_key.pub" in out.stdout
