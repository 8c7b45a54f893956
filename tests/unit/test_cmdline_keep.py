"""The hook that keeps the bake's kernel arguments on every boot slot through kernel and initramfs
updates (firstboot/common/etc/cmdline-keep.j2), on every role: installed by install.sh's own
`cmdline_keep_in_place`, run here on the rendered payload of a node and of the router."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from ceil.bakery import MEMCG_CMDLINE_FLAGS, cmdline_flags
from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.features import RoleContext
from ceil.payload import build_payload
from ceil.secrets import SecretStore

HOOKS = ("etc/kernel/postinst.d/zzz-ceil-cmdline", "etc/initramfs/post-update.d/zzz-ceil-cmdline")


def installed_hooks(tmp_path, cluster, role: str, flavor) -> tuple:
    """Build `role`'s payload, copy its etc/ where install.sh copies it, run install.sh's own
    cmdline_keep_in_place under a scratch root; the root and the installed hooks."""
    dest, root = tmp_path / f"payload-{role}", tmp_path / f"root-{role}"
    build_payload(RoleContext(cluster, role, flavor, SecretStore(tmp_path / "secrets")), dest)
    install_sh = (dest / "install.sh").read_text()
    (function,) = re.findall(r"^cmdline_keep_in_place\(\) \{\n.*?^\}\n", install_sh, re.M | re.S)
    # before anything install.sh starts (the packages step may install a kernel)
    assert install_sh.index("\ncmdline_keep_in_place\n") < install_sh.index("systemctl start")
    (root / "etc/ceil").mkdir(parents=True)
    subprocess.run(["cp", "-R", f"{dest}/etc/.", str(root / "etc/ceil")], check=True)
    done = subprocess.run(["dash", "-c", f"set -eu\n{function}ROOT={root}\ncmdline_keep_in_place\n"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    hooks = [root / h for h in HOOKS]
    assert all(stat.S_IMODE(h.stat().st_mode) == 0o755 and h.read_bytes() == hooks[0].read_bytes() for h in hooks)
    return root, hooks


@pytest.mark.parametrize("role", ["two", "router"])
def test_every_role_keeps_its_kernel_arguments_on_every_boot_slot_after_kernel_updates(cluster_yaml, tmp_path, role):
    """Issue 17: on Ubuntu 26.04 a kernel update writes a new/ boot slot, and nothing published
    says its cmdline.txt keeps the arguments the bake added. The hook runs after every kernel
    install and initramfs rebuild and puts them back, once. The router needs them too (issue 18):
    without the memory cgroup its services' memory bounds are ignored on a Pi."""
    cluster = load_cluster(cluster_yaml("router: {uplink: {type: wifi, wifi: {ssid: home, psk: secretpass, country: DE}}}\n"))
    flavor = load_flavor("ubuntu-26.04-raspi")
    root, hooks = installed_hooks(tmp_path, cluster, role, flavor)
    flags = cmdline_flags(cluster, role)
    assert all(f in flags for f in MEMCG_CMDLINE_FLAGS)
    assert ("cfg80211.ieee80211_regdom=DE" in flags) == (role == "router")

    boot = root / flavor.boot_mount.lstrip("/")
    base = "console=serial0,115200 root=LABEL=writable rootwait"
    flagged = " ".join([base, *flags]) + "\n"
    for slot, line in (("current", flagged), ("new", base + "\n")):  # the update's new/ without them
        (boot / slot).mkdir(parents=True)
        (boot / slot / "cmdline.txt").write_text(line)
    for _ in range(2):  # the kernel's hook, then the initramfs's: the second changes nothing
        for hook in hooks:
            done = subprocess.run(["sh", str(hook), "6.17.0-1-raspi"], env={**os.environ, "CEIL_ROOT": str(root)},
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
    assert (boot / "new/cmdline.txt").read_text() == flagged
    assert (boot / "current/cmdline.txt").read_text() == flagged
    assert not (boot / "old").exists() and not list(boot.rglob(".*ceil-tmp"))
