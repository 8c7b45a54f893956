"""Existing clusters keep working (issue 19 #5): nodes baked for a router an older ceil baked
are warned about, naming what changed and the fix."""

from __future__ import annotations

from ceil import compat
from ceil.k3s.token import SERVER_SECRET
from ceil.secrets import SecretStore


def test_a_new_cluster_and_a_current_router_need_no_warning(tmp_path):
    store = SecretStore(tmp_path)
    assert compat.stale_router_warning(store, ["one"]) is None  # nothing baked yet
    compat.router_baked(store)
    store.token(SERVER_SECRET)
    assert compat.stale_router_warning(store, ["one", "two"]) is None


def test_nodes_for_a_router_baked_before_the_registry_accounts_are_warned_about(tmp_path):
    store = SecretStore(tmp_path)
    store.token(SERVER_SECRET)  # a cluster baked by an older ceil: secrets, but no contract record
    warning = compat.stale_router_warning(store, ["one"])
    assert "contract 1, now 2" in warning and "private registry speaks TLS" in warning
    assert "python bake.py --role router" in warning
    assert compat.stale_router_warning(store, ["router", "one"]) is None  # the router comes along
    compat.router_baked(store)
    assert compat.stale_router_warning(store, ["one"]) is None
    assert (tmp_path / "router-contract").stat().st_mode & 0o777 == 0o600
