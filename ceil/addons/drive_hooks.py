"""Hooks of the first-boot feature `storage-drive`: whether Longhorn is in use, and where."""

from __future__ import annotations

from ..config import Cluster
from ..secrets import SecretStore
from .render import storage_facts


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"storage": storage_facts(cluster)}
