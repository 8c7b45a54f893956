"""Render the router-LAN features (and a node) through the real feature pipeline, for the tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from ceil.catalog import load_flavor
from ceil.config import Cluster, parse_cluster
from ceil.features import RoleContext, render_features
from ceil.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly test@ceil"


def cluster_from(overrides: dict | None = None) -> Cluster:
    """cluster.example.yaml with `overrides` merged in (top-level keys replace, dicts merge)."""
    data = yaml.safe_load((REPO / "cluster.example.yaml").read_text())
    data["ssh"] = {"authorized_keys": [KEY]}
    data["router"]["uplink"]["wifi"]["psk"] = "correct-horse-battery"
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_cluster(yaml.safe_dump(data), "test cluster.yaml")


def render(cluster: Cluster, role: str, dest: Path) -> Path:
    """Render `role`'s payload into dest/<role> and return that folder."""
    out = dest / role
    store = SecretStore(dest / "secrets")
    render_features(RoleContext(cluster, role, load_flavor(cluster.flavor), store), out)
    return out
