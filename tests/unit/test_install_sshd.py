"""install.sh turns sshd on where the image ships it off (Raspberry Pi OS: Raspberry Pi Imager
turns it on for the cards it writes; a ceil card does it in install.sh) and only reloads it where
the image runs it (Ubuntu 24.04 from ssh.socket). The rendered script's own `sshd_on` is run with
dash against a stand-in `systemctl` that keeps each image's unit states in a scratch folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from router_lan_render import cluster_from

from ceil.features import FIRSTBOOT_DIR, jinja_env

# The stand-in answers as systemctl(1) does, not as install.sh expects: a unit name without a
# suffix means .service; `is-enabled` exits 0 only for an enabled unit; `reload` of a unit that is
# not running fails ("cannot be reloaded because it is inactive"); `enable`/`start` of a unit the
# image does not have fails; Debian's ssh.service has `Alias=sshd.service`, a link made by
# `enable`, so `sshd` names it only once enabled. Every call is logged to state/calls.
SYSTEMCTL = '''#!{python}
import sys
from pathlib import Path
state = Path({state!r})
with open(state / "calls", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
verb, *units = [a for a in sys.argv[1:] if not a.startswith("-")]
units = [u if "." in u else u + ".service" for u in units]
enabled, active = state / "enabled", state / "active"
def real(unit):
    if unit == "sshd.service" and (enabled / "ssh.service").exists():
        return "ssh.service"
    return unit if (state / "units" / unit).exists() else None
for unit in units:
    unit = real(unit)
    if verb == "is-enabled":
        sys.exit(0 if unit and (enabled / unit).exists() else 1)
    if unit is None:
        sys.exit(5 if verb in ("start", "reload") else 1)
    if verb == "enable":
        (enabled / unit).touch()
    elif verb == "start":
        (active / unit).touch()
    elif verb == "reload" and not (active / unit).exists():
        sys.exit(1)
'''


def rendered_install() -> str:
    env = jinja_env(FIRSTBOOT_DIR)  # as ceil.payload renders it
    return env.get_template("install.sh.j2").render(cluster=cluster_from(), role="router", boot_mount="/boot/firmware")


def image(tmp_path: Path, enabled: set[str], active: set[str]) -> Path:
    """A scratch image with ssh.service and ssh.socket (Debian's openssh-server ships both)."""
    state = tmp_path / "state"
    for folder, names in (("units", {"ssh.service", "ssh.socket"}), ("enabled", enabled), ("active", active)):
        (state / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (state / folder / name).touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(SYSTEMCTL.format(python=sys.executable, state=str(state)))
    (bin_dir / "systemctl").chmod(0o755)
    return state


def sshd_on(tmp_path: Path, state: Path) -> list[str]:
    """Run install.sh's sshd_on, taken whole from the rendered script, under its `set -eu`."""
    (function,) = re.findall(r"^sshd_on\(\) \{\n.*?^\}\n", rendered_install(), re.M | re.S)
    done = subprocess.run(["dash", "-c", f"set -eu\n{function}sshd_on\n"], capture_output=True, text=True,
                          timeout=30, env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    calls = (state / "calls").read_text().splitlines()
    (state / "calls").unlink()
    return calls


def states(state: Path) -> tuple[set[str], set[str]]:
    return ({p.name for p in (state / "enabled").iterdir()}, {p.name for p in (state / "active").iterdir()})


def test_raspberry_pi_os_with_sshd_off_gets_it_enabled_and_started(tmp_path):
    state = image(tmp_path, enabled=set(), active=set())
    calls = sshd_on(tmp_path, state)
    assert calls == ["-q is-enabled ssh.socket", "-q is-enabled ssh.service",
                     "--no-reload enable ssh.service", "start ssh.service"]
    assert states(state) == ({"ssh.service"}, {"ssh.service"})  # running now, and at every later boot
    # install.sh again (cloud-init after a power cut): sshd now runs, so it is only reloaded
    assert sshd_on(tmp_path, state) == ["-q is-enabled ssh.socket", "-q is-enabled ssh.service", "reload ssh"]
    assert states(state) == ({"ssh.service"}, {"ssh.service"})


@pytest.mark.parametrize("enabled, active", [
    ({"ssh.socket"}, {"ssh.socket"}),                    # Ubuntu 24.04: socket-activated, no sshd until a login
    ({"ssh.socket"}, {"ssh.socket", "ssh.service"}),     # ... and after one
    ({"ssh.service"}, {"ssh.service"}),                  # Raspberry Pi OS as Imager writes it, or Debian
])
def test_an_image_that_runs_sshd_is_only_reloaded(tmp_path, enabled, active):
    """Never ssh.service beside an enabled ssh.socket: both would want port 22."""
    state = image(tmp_path, enabled=enabled, active=active)
    calls = sshd_on(tmp_path, state)
    assert not [c for c in calls if c.startswith(("enable", "--no-reload enable", "start"))], calls
    assert any(c.startswith("reload") for c in calls)
    assert states(state) == (enabled, active)


def test_sshd_is_turned_on_after_its_hardening_and_the_daemon_reload():
    text = rendered_install()
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    order = ["/etc/ssh/sshd_config.d/10-ceil.conf", "ceil-admin-account", "systemctl daemon-reload\n", "\nsshd_on\n"]
    assert [text.index(s) for s in order] == sorted(text.index(s) for s in order)
    assert text.count("\nsshd_on\n") == 1
