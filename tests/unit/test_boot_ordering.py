"""Ordering rules that keep every boot of an unfinished first boot (after a power cut) healthy.

multi-user.target is ordered after every unit it wants (systemd's default dependencies for
targets), and cloud-init's final stage after multi-user.target. So a unit enabled into
multi-user.target must not be ordered after a first-boot step, and ceil-firstboot.target must
opt out of the default dependencies; otherwise `cloud-init status --wait` and everything after
multi-user.target wait for the whole first boot. Found by tests/e2e/test_power_cut_firstboot.py;
checked here statically on every role's rendered payload, all features on.
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


@pytest.fixture(scope="module")
def payloads(tmp_path_factory, offline_wheels, ssh_pubkey):
    import os

    d = tmp_path_factory.mktemp("ordering")
    os.environ["XDG_CACHE_HOME"] = str(offline_wheels)  # module scope: set before the autouse fixture
    os.environ["CEIL_PIWATCH_LOCK"] = str(offline_wheels / "wheels.lock.json")
    template = (Path(__file__).resolve().parents[1] / "e2e/cluster.yaml").read_text()
    path = d / "cluster.yaml"
    path.write_text(
        template.replace("authorized_keys: []", f'authorized_keys: ["{ssh_pubkey}"]')
        .replace("flavor: testbed-ubuntu", "flavor: ubuntu-24.04-raspi")
        .replace("addons: {enabled: false}", "addons: {enabled: true}")
        + "ddns: {enabled: true, api_token: tok, zone: example.org, record: home.example.org}\n"
    )
    cluster = load_cluster(path)
    store = SecretStore(d / "secrets")
    out = {}
    for role in ["router", *(n.name for n in cluster.nodes)]:
        ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), store)
        out[role] = build_payload(ctx, d / role)
    return out


def parse(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(path.read_text())
    return cp


def words(cp, section: str, key: str) -> set[str]:
    return set(cp.get(section, key, fallback="").split())


def test_the_firstboot_target_does_not_hold_back_multi_user(payloads):
    for role, p in payloads.items():
        target = parse(p.root / "units" / "ceil-firstboot.target")
        assert target.get("Unit", "DefaultDependencies") == "no", role
        assert "shutdown.target" in words(target, "Unit", "Conflicts"), role


def test_units_in_multi_user_are_not_ordered_after_a_step(payloads):
    checked = 0
    for role, p in payloads.items():
        steps = set(p.steps)
        for unit in sorted(u for u in (p.root / "units").iterdir() if u.is_file()):  # not drop-in folders
            text = unit.read_text()
            if ENABLED_BY_STEP in text or not unit.name.endswith((".service", ".timer", ".path")):
                continue
            cp = parse(unit)
            if "multi-user.target" not in words(cp, "Install", "WantedBy") | words(cp, "Install", "RequiredBy"):
                continue
            checked += 1
            waits_for = (words(cp, "Unit", "After") | words(cp, "Unit", "Requires")) & steps
            assert not waits_for, f"{role}: {unit.name} is enabled into multi-user.target but ordered after {waits_for}"
    assert checked >= 2  # status board, k3s cache, ...


def test_units_enabled_by_their_step_are_enabled_there(payloads):
    """A unit install.sh skips must be enabled by some step script, or it would never start."""
    for role, p in payloads.items():
        scripts = "".join(f.read_text() for f in (p.root / "lib").rglob("*") if f.is_file())
        for unit in (u for u in (p.root / "units").iterdir() if u.is_file()):
            if ENABLED_BY_STEP in unit.read_text():
                # by name, or through a variable set to it (k3s-node.sh: UNIT=k3s.service); ceil_enable
                # (ceil-lib.sh) is `systemctl enable --no-reload` where not enabled yet
                names = [re.escape(unit.name)] + [re.escape(f"${var}") for var in
                                                  re.findall(rf"\b(\w+)={re.escape(unit.name)}\b", scripts)]
                assert re.search(rf"(systemctl enable|ceil_enable)[^\n]*({'|'.join(names)})", scripts), \
                    f"{role}: {unit.name}"


def test_steps_never_reload_systemd_just_to_enable_a_unit(payloads):
    """Each `systemctl enable` (disable, mask, ...) reloads systemd unless told not to: up to a minute each on a
    starved machine, and they queue behind each other when steps run in parallel (the router's
    first boot spent minutes on them in the QEMU suite). Steps only add symlinks for units
    systemd already knows, and start those units themselves, so no reload is needed."""
    seen = 0
    for role, p in payloads.items():
        for script in (p.root / "lib").rglob("*"):
            if not script.is_file():
                continue
            for line in script.read_text().splitlines():
                if re.search(r"(systemctl|SYSTEMCTL\}?) +(enable|disable|mask|unmask|reenable)\b", line) \
                        and not line.lstrip().startswith("#"):
                    seen += 1
                    assert "--no-reload" in line, f"{role}: {script.relative_to(p.root)}: {line.strip()}"
    assert seen >= 8
