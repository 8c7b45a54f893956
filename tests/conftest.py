"""Shared fixtures: a valid cluster.yaml with a throwaway SSH key, and synthetic base images."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ssh_pubkey(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("sshkey")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id")], check=True)
    return (d / "id.pub").read_text().strip()


@pytest.fixture
def cluster_yaml(tmp_path, ssh_pubkey):
    """Write a cluster.yaml (a small valid one, plus `extra` YAML text) and return its path."""

    def write(extra: str = "", flavor: str = "ubuntu-24.04-raspi") -> Path:
        path = tmp_path / "cluster.yaml"
        path.write_text(
            f"flavor: {flavor}\n"
            f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
            "router: {uplink: {type: ethernet, interface: eth1}}\n"
            "nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, ip: 10.42.0.12}]\n" + extra
        )
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, offline_wheels):
    # Never touch the user's ~/.cache/ceil from tests.
    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(offline_wheels))


@pytest.fixture(scope="session")
def offline_wheels(tmp_path_factory) -> Path:
    """A stand-in for the PiWatch wheel cache (normally filled by `pip download` at bake time),
    so that bakes in tests never reach PyPI: one tiny placeholder wheel per bundled target."""
    from ceil.catalog import available, load_flavor
    from piwatch.bundle import REQUIREMENTS, TOOLS, cache_key

    root = tmp_path_factory.mktemp("xdg-cache")
    for name in available():
        flavor = load_flavor(name)
        if not flavor.python_tag:
            continue
        entry = root / "ceil" / "wheels" / cache_key(flavor.python_tag, flavor.wheel_platforms, REQUIREMENTS + TOOLS)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "placeholder-0-py3-none-any.whl").write_bytes(b"not a real wheel: test stand-in")
        (entry / ".complete").write_text("placeholder-0-py3-none-any.whl\n")
    return root
