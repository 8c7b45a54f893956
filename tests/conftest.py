"""Shared fixtures: a valid cluster.yaml with a throwaway SSH key, and synthetic base images."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `registries`: the router's registries as baked, on loopback (registry and app-delivery tests).
pytest_plugins = ["tests.registry_lab"]


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
        defaults = [
            f"flavor: {flavor}\n",
            f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n",
            "router: {uplink: {type: ethernet, interface: eth1}}\n",
            "nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, ip: 10.42.0.12}]\n",
        ]
        # A top-level key in `extra` replaces the default's line: a key written twice is refused.
        own = set(re.findall(r"^([a-z_]+):", extra, re.M))
        path.write_text("".join(line for line in defaults if line.split(":", 1)[0] not in own) + extra)
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, offline_wheels):
    # Never touch the user's ~/.cache/ceil from tests.
    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(offline_wheels))
    # The placeholder wheels' own pins (the shipped lock pins PyPI's real wheels).
    monkeypatch.setenv("CEIL_PIWATCH_LOCK", str(offline_wheels / "wheels.lock.json"))


@pytest.fixture(scope="session")
def offline_wheels(tmp_path_factory) -> Path:
    """A stand-in for the PiWatch wheel cache (normally filled by `pip download` at bake time),
    so that bakes in tests never reach PyPI: one tiny placeholder wheel per bundled target, and a
    lock (CEIL_PIWATCH_LOCK) that pins it, so the cache's digest check passes."""
    import hashlib
    import json

    from piwatch.bundle import cache_key, catalog_targets, requirement_lines, target_name

    root = tmp_path_factory.mktemp("xdg-cache")
    placeholder, data = "placeholder-0-py3-none-any.whl", b"not a real wheel: test stand-in"
    lock = {}
    for python_tag, platforms in catalog_targets():
        wheels = {placeholder: hashlib.sha256(data).hexdigest()}
        lock[target_name(python_tag, platforms)] = wheels
        entry = root / "ceil" / "wheels" / cache_key(python_tag, platforms, requirement_lines(wheels))
        entry.mkdir(parents=True, exist_ok=True)
        (entry / placeholder).write_bytes(data)
        (entry / ".complete").write_text(placeholder + "\n")
    (root / "wheels.lock.json").write_text(json.dumps({"targets": lock}))
    return root
