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


def test_a_secrets_folder_from_a_newer_ceil_is_refused_and_an_older_one_stamped(tmp_path):
    import pytest

    from ceil.errors import CeilError

    store = SecretStore(tmp_path / "secrets")
    store.token(SERVER_SECRET)  # an existing cluster, from before the format stamp
    compat.check_secrets_format(store)
    assert (tmp_path / "secrets/FORMAT").read_text() == f"{compat.SECRETS_FORMAT}\n"
    store.write(compat.FORMAT_FILE, b"99\n")
    with pytest.raises(CeilError, match="format 99.*newer ceil"):
        compat.check_secrets_format(store)
    compat.check_secrets_format(SecretStore(tmp_path / "none"))  # nothing yet: nothing to stamp
    assert not (tmp_path / "none").exists()


def test_a_node_is_never_rebaked_with_an_older_k3s(tmp_path):
    import pytest

    from ceil.errors import CeilError

    store = SecretStore(tmp_path)
    compat.check_no_k3s_downgrade(store, "two", "v1.35.4+k3s1")  # never baked: fine
    compat.node_baked(store, "two", "v1.36.1+k3s1")
    compat.check_no_k3s_downgrade(store, "two", "v1.36.1+k3s2")
    compat.check_no_k3s_downgrade(store, "two", "v1.37.0+k3s1")
    with pytest.raises(CeilError, match="older than the v1.36.1\\+k3s1 node two was last baked with"):
        compat.check_no_k3s_downgrade(store, "two", "v1.35.9+k3s1")


def test_the_first_server_baked_alone_after_the_others_is_warned_about(tmp_path):
    """Its card starts a cluster (cluster-init): as a replacement it would start a second one."""
    from ceil.config import parse_cluster

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
    ha = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                       "nodes: [{name: one, role: server}, {name: two, role: server}, {name: three, role: server},"
                       " {name: four}]\n")
    store = SecretStore(tmp_path / "secrets")
    assert compat.first_server_rebake_warning(ha, store, ["one"]) is None  # a new cluster: nothing baked
    for name in ("one", "two", "three", "four"):
        compat.node_baked(store, name, "v1.36.1+k3s1")
    warning = compat.first_server_rebake_warning(ha, store, ["one"])
    assert "one is the first server" in warning and "two, three were baked before" in warning
    assert "Move another server above one" in warning
    assert compat.first_server_rebake_warning(ha, store, ["one", "two", "three", "four"]) is None
    assert compat.first_server_rebake_warning(ha, store, ["two"]) is None  # joins the first: fine
