"""The payload's systemd units start in the first boot, not only from the second.

install.sh runs inside cloud-init, after systemd has already started multi-user.target for this
boot: a unit it enables there with only `WantedBy=multi-user.target` starts on the next boot. A
card that is never rebooted (the normal case) would go without it. Found in CI's QEMU run once
the power-cut test (which rebooted the router three times) had moved out of it: the router's
k3s release cache on :8088 never started, and every node's k3s-install retried for ever.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest
from router_lan_render import cluster_from  # tests/unit/router_lan_render.py

from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.features import RoleContext
from ceil.payload import build_payload
from ceil.secrets import SecretStore

ENABLED_BY_STEP = "# ceil: enabled by its first-boot step"


def _wanted_by(unit: Path) -> set[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, allow_no_value=True)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    return set(parser.get("Install", "WantedBy", fallback="").split())


@pytest.mark.parametrize("flavor", ["ubuntu-24.04-raspi", "raspios-trixie"])
@pytest.mark.parametrize("role", ["router", "one", "two"])
def test_every_unit_install_sh_enables_also_starts_in_the_first_boot(cluster_yaml, tmp_path, role, flavor):
    cluster = load_cluster(cluster_yaml(flavor=flavor))
    ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), SecretStore(tmp_path / "secrets"))
    dest = tmp_path / role
    build_payload(ctx, dest)
    install_sh = (dest / "install.sh").read_text()
    started_by_install = set(re.findall(r"systemctl start [^\n]*", install_sh))
    units = {p.name: p for p in (dest / "units").iterdir() if p.is_file()}  # not drop-in folders
    late = []
    for name, unit in sorted(units.items()):
        if ENABLED_BY_STEP in unit.read_text() or "multi-user.target" not in _wanted_by(unit):
            continue
        stem = name.rsplit(".", 1)[0]
        triggered = f"{stem}.path" in units or f"{stem}.timer" in units
        started = any(name in line for line in started_by_install)
        if "ceil-firstboot.target" not in _wanted_by(unit) and not triggered and not started:
            late.append(name)
    assert not late, (f"{role}: enabled by install.sh for multi-user.target only, so they start on the second boot, "
                      f"not the first: {late} (add ceil-firstboot.target to WantedBy=)")


@pytest.mark.parametrize("role", ["router", "one", "two"])
def test_the_bake_says_as_many_features_as_it_names(cluster_yaml, tmp_path, role):
    """It printed "8 steps:" and then 7 feature names: the count was of first-boot units."""
    from ceil.bakery import payload_summary

    cluster = load_cluster(cluster_yaml())
    payload = build_payload(RoleContext(cluster, role, load_flavor(cluster.flavor), SecretStore(tmp_path / "secrets")),
                            tmp_path / role)
    said = payload_summary(payload)
    counted, named = said.split(": ", 1)
    assert named.split(", ") == payload.features
    assert counted == f"{len(payload.steps)} first-boot steps from {len(payload.features)} features"
    assert len(payload.steps) == len((tmp_path / role / "units" / "ceil-firstboot.target").read_text()
                                     .split("Requires=")[1].split("\n")[0].split())


def test_the_installer_places_drop_ins_and_hook_units_before_its_one_daemon_reload(tmp_path):
    """Issue 21: after the packages, the router's mdns step reloaded systemd for avahi-daemon's
    drop-in and the piwatch step for PiWatch's unit, 7-20 s each under TCG (run ci-art38's
    journal). Both now travel with ceil's units: install.sh's own `units_in_place`, run here on
    the rendered payload, puts them where systemd looks before its single daemon-reload, and the
    steps carry no reload but a guarded one."""
    cluster = cluster_from({"piwatch": {"enabled": True}, "router": {"trusted_networks": ["192.168.1.0/24"]}})
    dest = tmp_path / "ceil"
    build_payload(RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path / "secrets")), dest)
    install_sh = (dest / "install.sh").read_text()
    (function,) = re.findall(r"^units_in_place\(\) \{\n.*?^\}\n", install_sh, re.M | re.S)
    assert install_sh.index("\nunits_in_place\n") < install_sh.index("\nsystemctl daemon-reload\n")
    unit_dir = tmp_path / "etc-systemd-system"
    unit_dir.mkdir()
    done = subprocess.run(["dash", "-c", f"set -eu\n{function}SRC={dest}\nUNIT_DIR={unit_dir}\nunits_in_place\n"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Type=simple" in (unit_dir / "avahi-daemon.service.d" / "ceil.conf").read_text()
    piwatch = (unit_dir / "ceil-piwatch.service").read_text()
    assert piwatch == (Path(__file__).resolve().parents[2] / "piwatch/deploy/ceil-piwatch.service").read_text()
    # enabled by its step once the venv and its user exist, not by install.sh for every later boot
    assert ENABLED_BY_STEP in piwatch
    placed = {p.relative_to(unit_dir).as_posix() for p in unit_dir.rglob("*") if p.is_file()}
    assert placed == {p.relative_to(dest / "units").as_posix() for p in (dest / "units").rglob("*") if p.is_file()}
    piwatch_step = [line for line in (dest / "lib/steps/piwatch.sh").read_text().splitlines()
                    if not line.lstrip().startswith("#")]
    assert not [line for line in piwatch_step if "daemon-reload" in line]


def test_packaged_daemons_never_start_with_their_default_configs_before_ceils(tmp_path):
    """Found in review: a power cut between the packages step and the dnsmasq or registry step
    started Debian's dnsmasq (DNS on every interface) and docker-registry (every interface, no
    accounts) with their default configs at the next boot, before the router's firewall existed.
    Their drop-ins travel with ceil's units (in place before the packages' one reload)."""
    cluster = cluster_from({"registry": {"enabled": True}})
    dest = tmp_path / "ceil"
    build_payload(RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path / "secrets")), dest)
    dnsmasq = (dest / "units" / "dnsmasq.service.d" / "ceil.conf").read_text()
    step = (dest / "lib" / "steps" / "dnsmasq.sh").read_text()
    assert "dst=/etc/dnsmasq.d/ceil.conf" in step
    # nothing that waits for the uplink (ceil's steps are after network-online.target)
    settings = [line for line in dnsmasq.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Unit]", "ConditionPathExists=/etc/dnsmasq.d/ceil.conf"]
    registry = (dest / "units" / "docker-registry.service.d" / "ceil.conf").read_text()
    [never] = [line.split("=", 1)[1] for line in registry.splitlines() if line.startswith("ConditionPathExists=")]
    # nothing ceil ships makes that path
    assert not [p for p in dest.rglob("*") if p.is_file() and never in p.read_text(errors="replace")
                and p.name != "ceil.conf"]
