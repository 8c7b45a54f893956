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
from pathlib import Path

import pytest

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
    units = {p.name: p for p in (dest / "units").iterdir()}
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
