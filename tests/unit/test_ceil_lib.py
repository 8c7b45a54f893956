"""firstboot/common/lib/ceil-lib.sh: the shell functions every first-boot step shares.

Run for real with sh (and dash, the shell /bin/sh is on Debian and Ubuntu), on scratch files,
with a stub systemctl. Plus the rule that keeps it the one way: no step hand-rolls its own.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "firstboot" / "common" / "lib" / "ceil-lib.sh"
SHELLS = [s for s in ("sh", "dash") if shutil.which(s)]


def sh(shell: str, script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "CEIL_LIB": str(LIB.parent), **env}
    return subprocess.run([shell, "-c", f'set -eu\n. "$CEIL_LIB/ceil-lib.sh"\n{script}'], cwd=tmp_path,
                          env=full, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
def test_replace_writes_only_when_different_and_says_so(shell, tmp_path):
    (tmp_path / "src").write_text("a = 1\n")
    dst = tmp_path / "conf.d" / "ceil.conf"  # its directory is made
    run = 'CEIL_CHANGED=""; ceil_replace src conf.d/ceil.conf 0640; echo "changed=$CEIL_CHANGED"'

    first = sh(shell, run, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "changed=yes"
    assert dst.read_text() == "a = 1\n" and stat.S_IMODE(dst.stat().st_mode) == 0o640
    inode = dst.stat().st_ino

    again = sh(shell, run, tmp_path)
    assert again.stdout.strip() == "changed=", "an identical file was written again"
    assert dst.stat().st_ino == inode

    (tmp_path / "src").write_text("a = 2\n")
    third = sh(shell, run, tmp_path)
    assert third.stdout.strip() == "changed=yes" and dst.read_text() == "a = 2\n"
    assert dst.stat().st_ino != inode, "replaced in place, not by a rename"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["ceil.conf"], "a temporary file was left"


@pytest.mark.parametrize("shell", SHELLS)
def test_replace_after_a_power_cut_mid_copy_converges(shell, tmp_path):
    """A cut between cp and mv leaves a half-written dot-file temp, never a half-written DST."""
    (tmp_path / "src").write_text("complete\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / ".ceil.conf.ceil-tmp").write_text("compl")
    (tmp_path / "conf.d" / "ceil.conf").write_text("old\n")
    proc = sh(shell, "ceil_replace src conf.d/ceil.conf", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "conf.d" / "ceil.conf").read_text() == "complete\n"
    assert not (tmp_path / "conf.d" / ".ceil.conf.ceil-tmp").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_replace_failing_stops_the_step(shell, tmp_path):
    proc = sh(shell, "ceil_replace missing-src dst; echo not-reached", tmp_path)
    assert proc.returncode != 0 and "not-reached" not in proc.stdout
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_enable_asks_systemd_only_when_needed_and_never_reloads(tmp_path, enabled):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls"
    (stubs / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = is-enabled ] && exit {0 if enabled else 1}\nexit 0\n')
    (stubs / "systemctl").chmod(0o755)
    proc = sh(SHELLS[0], "ceil_enable chrony.service", tmp_path, PATH=f"{stubs}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "is-enabled --quiet chrony.service"
    assert calls[1:] == ([] if enabled else ["enable --no-reload chrony.service"])


@pytest.mark.parametrize("shell", SHELLS)
def test_need_stops_for_good_at_the_first_missing_file_and_says_so_in_the_status(shell, tmp_path):
    """A payload file the image was baked with is gone or empty: no retry mends it (exit 3), and
    `bake.py status` shows which file (ceil_why), not only the journal."""
    (tmp_path / "a.conf").write_text("a\n")
    (tmp_path / "empty.conf").write_text("")
    why = tmp_path / "why"
    ok = sh(shell, "ceil_need a.conf; echo went-on", tmp_path, CEIL_STEP_WHY=str(why))
    assert ok.returncode == 0 and ok.stdout == "went-on\n" and not why.exists()
    for missing in ("gone.conf", "empty.conf"):
        proc = sh(shell, f"ceil_need a.conf {missing} later.conf; echo went-on", tmp_path, CEIL_STEP_WHY=str(why))
        assert proc.returncode == 3 and "went-on" not in proc.stdout
        said = f"{missing} is missing: the payload is incomplete; re-bake this image"
        assert said in proc.stderr and "later.conf" not in proc.stderr
        assert why.read_text() == said + "\n"


def test_a_step_that_gives_up_an_attempt_says_why_on_stderr_and_in_its_status(tmp_path):
    """ceil_retry: the reason on stderr and in $CEIL_STEP_WHY (what `bake.py status` shows), exit 1."""
    why = tmp_path / "why"
    proc = sh("dash", 'ceil_retry "router.usb_drive /dev/sda is not present:" "plug the drive in"\necho never',
              tmp_path, CEIL_STEP_WHY=str(why))
    assert proc.returncode == 1 and "never" not in proc.stdout
    assert proc.stderr.endswith(": router.usb_drive /dev/sda is not present: plug the drive in; retrying\n")
    assert why.read_text() == "router.usb_drive /dev/sda is not present: plug the drive in\n"


STEPS = sorted(REPO.glob("firstboot/*/lib/steps/*"))
# router-resolver.sh writes printf output (not a file copy) and must replace a symlink by a file.
OWN_WRITER = {"router-resolver.sh"}


@pytest.mark.parametrize("step", STEPS, ids=lambda p: p.name)
def test_steps_use_the_shared_functions(step):
    text = step.read_text()
    uses = re.search(r"\bceil_(replace|enable|need)\b", text)
    sourced = '. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"' in text
    if uses:
        assert sourced, f"{step.name} calls ceil-lib.sh's functions without sourcing it"
    assert "is-enabled" not in text, f"{step.name}: use ceil_enable (ceil-lib.sh)"
    if step.name not in OWN_WRITER:
        rolled = re.search(r"cmp -s[^\n]*\n(?:[^\n]*\n){0,6}?[^\n]*mv -f", text)
        assert not rolled, f"{step.name} hand-rolls an atomic replace: use ceil_replace (ceil-lib.sh)"
    assert "payload is incomplete" not in text, f"{step.name}: use ceil_need (ceil-lib.sh)"
    # Found in review: steps that retried with a bare `exit 1` left no reason, and the status
    # board showed "busy: registry" while the README promised "router.usb_drive ... is not present".
    if text.startswith("#!/bin/sh"):
        assert not re.search(r"\bexit 1\b", text), f"{step.name}: give up an attempt with ceil_retry (ceil-lib.sh)"
        if "ceil_retry" in text:
            assert sourced, f"{step.name} calls ceil_retry without sourcing ceil-lib.sh"
