"""install.sh turns the WiFi radio on for a router whose uplink is WiFi: Raspberry Pi OS trixie's
image keeps NetworkManager's WiFi off and the chip may be rfkill-blocked. The rendered script's
own `wifi_radio_on` runs with dash against recording stand-ins for rfkill, nmcli and systemctl."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from router_lan_render import cluster_from

from ceil.features import FIRSTBOOT_DIR, jinja_env


def rendered(role: str, uplink: dict | None = None) -> str:
    cluster = cluster_from({"router": {"uplink": uplink}} if uplink else None)
    return jinja_env(FIRSTBOOT_DIR).get_template("install.sh.j2").render(
        cluster=cluster, role=role, boot_mount="/boot/firmware")


def stubs(tmp_path: Path, tools: dict[str, int]) -> Path:
    """Stand-ins that log their arguments and exit with the given code."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(parents=True)
    for name, code in tools.items():
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {code}\n')
        (bin_dir / name).chmod(0o755)
    return log


def wifi_radio_on(tmp_path: Path, tools: dict[str, int]) -> tuple[list[str], str]:
    (function,) = re.findall(r"^wifi_radio_on\(\) \{\n.*?^\}\n", rendered("router"), re.M | re.S)
    log = stubs(tmp_path, tools)
    dash = shutil.which("dash")  # found here; the function's own PATH holds only the stand-ins
    done = subprocess.run([dash, "-c", f"set -eu\n{function}wifi_radio_on\n"], capture_output=True, text=True,
                          timeout=30, env={"PATH": f"{tmp_path / 'bin'}:/nonexistent"})
    assert done.returncode == 0, done.stderr
    return (log.read_text().splitlines() if log.exists() else []), done.stderr


def test_a_wifi_router_unblocks_the_chip_and_turns_networkmanagers_wifi_on(tmp_path):
    calls, _ = wifi_radio_on(tmp_path, {"rfkill": 0, "nmcli": 0, "systemctl": 0})
    assert calls == ["rfkill unblock wifi", "systemctl -q is-active NetworkManager", "nmcli radio wifi on"]


def test_without_networkmanager_only_the_chip_is_unblocked_and_failures_are_said_not_fatal(tmp_path):
    calls, _ = wifi_radio_on(tmp_path, {"rfkill": 0, "nmcli": 0, "systemctl": 3})  # Ubuntu: networkd
    assert calls == ["rfkill unblock wifi", "systemctl -q is-active NetworkManager"]
    calls, said = wifi_radio_on(tmp_path / "x", {"rfkill": 1, "nmcli": 8, "systemctl": 0})
    assert "rfkill unblock wifi failed" in said and "nmcli radio wifi on failed" in said


@pytest.mark.parametrize("role, uplink", [("router", {"type": "ethernet"}), ("one", None)])
def test_nothing_of_it_without_a_wifi_uplink(role, uplink):
    text = rendered(role, uplink)
    assert "wifi_radio_on" not in text and "nmcli" not in text
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0


def test_the_radio_is_on_before_the_first_boot_steps_start():
    text = rendered("router")
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    assert text.count("\nwifi_radio_on\n") == 1
    assert text.index("\nwifi_radio_on\n") < text.index("systemctl start --no-block ceil-firstboot.target")
