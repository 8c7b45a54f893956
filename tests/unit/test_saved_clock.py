"""The saved clock (issue 17): a Pi has no real-time clock, so every machine keeps its time in
/usr/lib/clock-epoch, which systemd applies at boot. Run here on a scratch file; the units are
checked by systemd-analyze, and the e2e suite's stale-clock twin (QEMU `-rtc base=` months back)
power-cuts the router and checks the nodes still take its time (tests/e2e/test_lifecycle.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/common/lib/ceil-clock-save"
UNITS = REPO / "firstboot/common/units"


def save(epoch: Path) -> None:
    subprocess.run(["sh", str(SCRIPT)], env={**os.environ, "CEIL_CLOCK_EPOCH": str(epoch)}, check=True)


def test_the_clock_is_saved_and_only_ever_moves_forward(tmp_path):
    epoch = tmp_path / "clock-epoch"
    save(epoch)
    assert abs(epoch.stat().st_mtime - time.time()) < 5  # made when missing
    baked = time.time() - 86400 * 150
    os.utime(epoch, (baked, baked))
    save(epoch)
    assert abs(epoch.stat().st_mtime - time.time()) < 5  # an old saved time moves up to now
    ahead = time.time() + 3600
    os.utime(epoch, (ahead, ahead))
    save(epoch)
    assert epoch.stat().st_mtime == pytest.approx(ahead)  # never back: the floor stays


def test_saved_at_boot_every_few_minutes_and_at_shutdown():
    service = (UNITS / "ceil-clock-save.service").read_text()
    timer = (UNITS / "ceil-clock-save.timer").read_text()
    assert "ExecStop=/usr/local/lib/ceil/ceil-clock-save" in service and "Conflicts=shutdown.target" in service
    assert "OnUnitActiveSec=5min" in timer and "Unit=ceil-clock-save-now.service" in timer
    install = (REPO / "firstboot/install.sh.j2").read_text()
    assert "systemctl start --no-block ceil-clock-save.service ceil-clock-save.timer" in install


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_units_pass_systemd_analyze_verify():
    units = sorted(str(p) for p in UNITS.glob("ceil-clock-save*"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, "\n".join(problems)
