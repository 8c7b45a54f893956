"""ceil-host-key puts the machine's baked SSH host key in /etc/ssh, run with dash as on a card,
against a stand-in `systemctl` that plays Raspberry Pi OS's regenerate_ssh_host_keys.service:
when started it deletes every host key and makes new ones with the real ssh-keygen, then disables
itself (raspberrypi-sys-mods' script). On a real first boot that unit runs after cloud-init's
early stages, so a key placed there (bootcmd) is replaced; the second call, from install.sh,
runs the unit first if it is still pending and then places the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ceil.host_keys import host_key, new_key, pinned_keys, public_line, secret_name
from ceil.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/common/lib/ceil-host-key"

SYSTEMCTL = '''#!{python}
import subprocess, sys
from pathlib import Path
state, etc = Path({state!r}), Path({etc!r})
with open(state / "calls", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
verb, *units = [a for a in sys.argv[1:] if not a.startswith("-")]
unit = units[0] if units else ""
enabled = state / "enabled" / unit
if verb == "is-enabled":
    sys.exit(0 if enabled.exists() else 1)
if verb == "disable":
    enabled.unlink(missing_ok=True)
    sys.exit(0)
if verb == "start" and unit == "regenerate_ssh_host_keys.service":
    if (state / "regen-fails").exists():  # fails before disabling itself, as the real script would
        for key in etc.glob("ssh_host_*_key*"):
            key.unlink()
        sys.exit(1)
    for key in etc.glob("ssh_host_*_key*"):
        key.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "ssh_host_ed25519_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(etc / "ssh_host_ecdsa_key")], check=True)
    enabled.unlink(missing_ok=True)
    sys.exit(0)
sys.exit(5)
'''


@pytest.fixture
def card(tmp_path):
    """/etc/ssh of a booting card, the key's copy on its FAT, and a PATH with the stand-in."""
    etc, state, bin_ = tmp_path / "etc-ssh", tmp_path / "state", tmp_path / "bin"
    for d in (etc, state / "enabled", bin_):
        d.mkdir(parents=True)
    (bin_ / "systemctl").write_text(SYSTEMCTL.format(python=sys.executable, state=str(state), etc=str(etc)))
    (bin_ / "systemctl").chmod(0o755)
    key = tmp_path / "fat" / "ssh_host_ed25519_key"
    key.parent.mkdir()
    key.write_bytes(new_key())
    key.chmod(0o755)  # every file on a FAT partition shows so, and ssh-keygen refuses such a key (run ci-art71)

    class Card:
        pass

    c = Card()
    c.etc, c.state, c.key, c.path = etc, state, key, f"{bin_}:{os.environ['PATH']}"
    c.pinned = public_line(key.read_bytes())

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dash", str(SCRIPT), str(key), *args], capture_output=True, text=True,
                              env={**os.environ, "PATH": c.path, "CEIL_SSH_ETC": str(etc)})

    def served() -> str:
        return " ".join((etc / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def regenerate_at_boot() -> None:
        """systemd starting the unit on its own, after cloud-init's early stages."""
        subprocess.run(["systemctl", "start", "regenerate_ssh_host_keys.service"], check=True, env={"PATH": c.path})

    c.run, c.served, c.regenerate_at_boot = run, served, regenerate_at_boot
    return c


def pi_os(card) -> None:
    (card.state / "enabled" / "regenerate_ssh_host_keys.service").touch()


def test_on_ubuntu_the_early_call_places_the_key_before_sshd_and_the_second_changes_nothing(card):
    (card.etc / "ssh_host_rsa_key").write_text("a key the image or cloud-init made\n")
    r = card.run("--early")
    assert r.returncode == 0, r.stderr
    assert card.served() == card.pinned
    assert (card.etc / "ssh_host_ed25519_key").read_bytes() == card.key.read_bytes()
    assert sorted(p.name for p in card.etc.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert oct((card.etc / "ssh_host_ed25519_key.pub").stat().st_mode & 0o777) == "0o644"
    assert oct((card.etc / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
    before = (card.etc / "ssh_host_ed25519_key.pub").stat().st_mtime_ns
    r = card.run()
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    assert (card.etc / "ssh_host_ed25519_key.pub").stat().st_mtime_ns == before


def test_on_raspberry_pi_os_the_key_survives_the_images_own_regeneration(card):
    """The bite: placed early, the key would be deleted by the regeneration that follows; the
    early call leaves it, and install.sh's call places it after the unit has run."""
    pi_os(card)
    r = card.run("--early")
    assert r.returncode == 0 and "still to run" in r.stdout, r.stdout + r.stderr
    card.regenerate_at_boot()
    assert card.served() != card.pinned
    r = card.run()
    assert r.returncode == 0, r.stderr
    assert card.served() == card.pinned
    assert sorted(p.name for p in card.etc.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    # It ran once, at boot: install.sh's call found it done (it disables itself) and did not run it again.
    assert (card.state / "calls").read_text().count("start regenerate_ssh_host_keys.service") == 1


def test_a_regeneration_still_pending_when_install_runs_is_run_first_not_after(card):
    pi_os(card)
    r = card.run()
    assert r.returncode == 0, r.stderr
    assert "start regenerate_ssh_host_keys.service" in (card.state / "calls").read_text()
    assert not (card.state / "enabled" / "regenerate_ssh_host_keys.service").exists()
    assert card.served() == card.pinned


def test_a_failed_regeneration_is_disabled_and_the_key_placed_anyway(card):
    """Left enabled, it would delete the baked key at the next boot, with no install.sh after it."""
    pi_os(card)
    (card.state / "regen-fails").touch()
    r = card.run()
    assert r.returncode == 0 and "failed: placing the baked key anyway" in r.stderr, r.stdout + r.stderr
    assert not (card.state / "enabled" / "regenerate_ssh_host_keys.service").exists()
    assert card.served() == card.pinned


def test_other_host_keys_go_even_when_the_baked_key_is_already_in_place(card):
    """A power cut between placing the key and removing the others: the next run removes them."""
    card.run()
    (card.etc / "ssh_host_rsa_key").write_text("left over\n")
    assert card.run().returncode == 0
    assert sorted(p.name for p in card.etc.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]


def test_a_scrubbed_or_missing_copy_leaves_the_key_in_place(card):
    card.run()
    card.key.write_bytes(b"\0" * card.key.stat().st_size)  # zeroed by the secrets step, not yet removed
    assert card.run().returncode == 0 and card.served() == card.pinned
    card.key.unlink()
    assert card.run("--early").returncode == 0 and card.served() == card.pinned


def test_a_copy_that_is_not_a_key_fails_loudly_and_touches_nothing(card):
    card.run()
    card.key.write_text("not a key\n")
    r = card.run()
    assert r.returncode != 0
    assert card.served() == card.pinned
    assert sorted(p.name for p in card.etc.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]


def test_a_damaged_key_in_secrets_is_refused_before_an_image_carries_it(tmp_path):
    from ceil.errors import CeilError

    store = SecretStore(tmp_path / "secrets")
    host_key(store, "one")
    (tmp_path / "secrets" / secret_name("one")).write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(CeilError, match=r"ssh-host/one is not an unencrypted OpenSSH private key.*bake the machine again"):
        host_key(store, "one")


def test_each_machine_has_its_own_key_and_every_bake_reuses_it(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    one, again, two = host_key(store, "one"), host_key(store, "one"), host_key(store, "two")
    assert one == again != two
    assert oct((tmp_path / "secrets" / secret_name("one")).stat().st_mode & 0o777) == "0o600"
    key = tmp_path / "k"
    key.write_bytes(one)
    key.chmod(0o600)
    by_ssh_keygen = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout
    assert public_line(one) == " ".join(by_ssh_keygen.split()[:2])
    assert pinned_keys(SecretStore(tmp_path / "secrets", make_new=False), ["router", "one", "two"]) == {
        "one": public_line(one), "two": public_line(two)}
