"""ceil-admin-account (install.sh): the admin account whole on Raspberry Pi OS, whose cloud-init
renames the image's uid-1000 `pi` (nologin shell) to the card's user (issue 17). Run for real
with dash, `getent`, `usermod` and `systemctl` replaced by stubs that record their calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/common/lib/ceil-admin-account"


def run(tmp_path: Path, passwd_line: str | None, has_userconfig: bool):
    stubs, log = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir(exist_ok=True)
    getent = f"printf '%s\\n' '{passwd_line}'" if passwd_line else "exit 2"
    stub = {
        "getent": f"#!/bin/sh\n{getent}\n",
        "usermod": f'#!/bin/sh\necho "usermod $*" >> {log}\n',
        "systemctl": f'#!/bin/sh\necho "systemctl $*" >> {log}\n'
                     f'[ "$1" = cat ] && exit {0 if has_userconfig else 1}\nexit 0\n',
    }
    for name, text in stub.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    done = subprocess.run(["dash", str(SCRIPT), "ceil"], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{stubs}:{os.environ['PATH']}", "ROOT": str(tmp_path)})
    return done, (log.read_text().splitlines() if log.exists() else [])


def test_a_renamed_pi_account_gets_bash_its_groups_and_loses_the_rename_prompt(tmp_path):
    banner = tmp_path / "etc/ssh/sshd_config.d/rename_user.conf"
    banner.parent.mkdir(parents=True)
    banner.write_text("Banner /usr/share/userconf-pi/sshd_banner\n")
    done, calls = run(tmp_path, "ceil:x:1000:1000:,,,:/home/ceil:/usr/sbin/nologin", has_userconfig=True)
    assert done.returncode == 0, done.stderr
    assert "usermod -s /bin/bash ceil" in calls and "usermod -a -G adm,sudo ceil" in calls
    assert "systemctl disable --no-reload --now userconfig.service" in calls
    assert not banner.exists()
    assert "had the shell /usr/sbin/nologin" in done.stdout


def test_an_account_cloud_init_made_is_left_as_it_is(tmp_path):
    done, calls = run(tmp_path, "ceil:x:1001:1001:ceil administrator:/home/ceil:/bin/bash", has_userconfig=False)
    assert done.returncode == 0, done.stderr
    assert calls == ["usermod -a -G adm,sudo ceil", "systemctl cat userconfig.service"]


def test_a_missing_account_is_reported_not_fatal(tmp_path):
    done, _ = run(tmp_path, None, has_userconfig=False)
    assert done.returncode == 0 and "no account ceil" in done.stderr


@pytest.mark.parametrize("name", ["install.sh.j2"])
def test_install_runs_it_before_sshd_is_reloaded(name):
    text = (REPO / "firstboot" / name).read_text()
    assert text.index("ceil-admin-account {{ cluster.ssh.user | sh }}") < text.index("systemctl reload ssh")
