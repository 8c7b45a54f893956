"""Hand-made NoCloud seeds for booting a bare test bed without the bake.

Used by the harness's own smoke test (does the test bed boot, take a seed, serve SSH, install
from the local apt repo?) so that a test-bed problem is told apart from a bake problem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from .vm import partition_offset


def copy_sparse(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], check=True)


def user_data(hostname: str, domain: str, user: str, pubkey: str, apt_mirror: str | None = None) -> str:
    lines = [
        "#cloud-config",
        f"hostname: {hostname}",
        f"fqdn: {hostname}.{domain}",
        "prefer_fqdn_over_hostname: false",
        "ssh_pwauth: false",
        "disable_root: true",
        "users:",
        f"  - name: {user}",
        "    shell: /bin/bash",
        "    lock_passwd: true",
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"',
        f"    ssh_authorized_keys: [{pubkey.strip()!r}]",
        # Raspberry Pi OS (and its twin) ship sshd disabled; Raspberry Pi Imager turns it on for
        # the cards it writes, and so does this seed. A no-op where sshd runs already.
        "runcmd:",
        # Raspberry Pi OS (and its twin) rename the image's uid-1000 account to this user, which
        # keeps that account's nologin shell: give it the shell asked for above (a no-op elsewhere),
        # before sshd starts.
        f"  - [usermod, -s, /bin/bash, {user}]",
        "  - [systemctl, enable, --now, ssh.service]",
    ]
    if apt_mirror:
        # Same effect as the bake's apt_mirror option: the deb822 source points at the mirror,
        # whose signature the test bed's own key (trusted.gpg.d) vouches for, not Debian's.
        lines += [
            "bootcmd:",
            f"  - [sed, -i, -e, 's|^URIs: .*|URIs: {apt_mirror}|', -e, '/^Signed-By:/d',"
            " /etc/apt/sources.list.d/debian.sources]",
        ]
    return "\n".join(lines) + "\n"


def network_config(dhcp: list[str], static: dict[str, str] | None = None) -> str:
    lines = ["version: 2", "ethernets:"]
    for nic in dhcp:
        lines += [f"  {nic}:", "    dhcp4: true"]
    for nic, cidr in (static or {}).items():
        lines += [f"  {nic}:", f"    addresses: [{cidr}]"]
    return "\n".join(lines) + "\n"


def write_seed(image: Path, files: dict[str, str], boot_index: int = 1) -> None:
    """Write seed files to the root of the image's boot FAT (what the bake does, minimally)."""
    off, _ = partition_offset(image, boot_index)
    tmp = image.parent / f".seed-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        subprocess.run(["mcopy", "-o", "-i", f"{image}@@{off}", *[str(tmp / n) for n in files], "::/"],
                       check=True, capture_output=True, env=env)
    finally:
        shutil.rmtree(tmp)


def seed_testbed(image: Path, hostname: str, pubkey: str, *, domain: str = "ceil.internal", user: str = "ceil",
                 dhcp: list[str] = ("eth0",), static: dict[str, str] | None = None,
                 apt_mirror: str | None = None, extra_user_data: str = "") -> str:
    """`extra_user_data`: cloud-config lines appended to user-data's (top-level keys)."""
    instance_id = f"ceil-smoke-{uuid.uuid4()}"
    write_seed(image, {
        "user-data": user_data(hostname, domain, user, pubkey, apt_mirror) + extra_user_data,
        "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n",
        "network-config": network_config(list(dhcp), static),
    })
    return instance_id


def add_to_boot(image: Path, files: dict[str, str], boot_index: int = 1) -> None:
    """Put files (path on the FAT -> text) into a baked image, creating directories as needed."""
    off, _ = partition_offset(image, boot_index)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    spec = f"{image}@@{off}"
    tmp = image.parent / f".add-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for i, (dest, text) in enumerate(files.items()):
            parts = dest.strip("/").split("/")
            for depth in range(1, len(parts)):
                subprocess.run(["mmd", "-i", spec, "::/" + "/".join(parts[:depth])], capture_output=True, env=env)
            src = tmp / str(i)
            src.write_text(text)
            subprocess.run(["mcopy", "-o", "-i", spec, str(src), "::/" + dest.strip("/")],
                           check=True, capture_output=True, env=env)
    finally:
        shutil.rmtree(tmp)
