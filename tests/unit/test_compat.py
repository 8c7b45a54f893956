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


HA = ("nodes: [{name: one, role: server}, {name: two, role: server}, {name: three, role: server},"
      " {name: four}, {name: five}]\n")


def cluster_of(nodes: str):
    from ceil.config import parse_cluster

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
    return parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n" + nodes)


def running(tmp_path, **versions):
    store = SecretStore(tmp_path / "secrets")
    for name, version in versions.items():
        compat.node_baked(store, name, version)
    return store


def skew_refusal(cluster, store, roles, version) -> str | None:
    from ceil.errors import CeilError

    try:
        compat.check_version_skew(cluster, store, roles, version)
    except CeilError as e:
        return str(e)
    return None


def test_a_card_baked_with_a_newer_k3s_than_the_running_servers_is_refused_before_the_upgrade(tmp_path):
    """The README's upgrade is: set the new kubernetes.k3s_version, then `k3s upgrade`. A new or
    replacement card baked in between joined with a kubelet newer than the API server, and a card
    never baked before had no record to check at all."""
    cluster = cluster_of(HA)
    store = running(tmp_path, one="v1.36.1+k3s1", two="v1.36.1+k3s1", three="v1.36.1+k3s1", four="v1.36.1+k3s1")
    said = skew_refusal(cluster, store, ["five"], "v1.37.0+k3s1")  # five: a new agent, never baked
    assert said and "five with k3s v1.37.0+k3s1 would break Kubernetes' version skew policy" in said
    assert "one (server) runs v1.36.1+k3s1: the new agents' kubelets would be newer than its API server" in said
    assert "set kubernetes.k3s_version to v1.36.1+k3s1, what the oldest server runs" in said
    assert "python bake.py k3s upgrade" in said and "nothing was baked" in said
    assert "four (agent)" not in said  # an agent's kubelet does not constrain another's
    for same_line in ("v1.36.1+k3s1", "v1.36.3+k3s1", "v1.36.1+k3s2"):
        assert skew_refusal(cluster, store, ["five"], same_line) is None
    assert skew_refusal(cluster, store, ["five"], "v1.33.0+k3s1") is None  # three minor versions older: allowed
    said = skew_refusal(cluster, store, ["five"], "v1.32.9+k3s1")
    assert said and "more than three minor versions older than its API server" in said


def test_a_server_baked_into_a_running_cluster_keeps_the_servers_within_one_minor_version(tmp_path):
    cluster = cluster_of(HA)
    store = running(tmp_path, one="v1.35.2+k3s1", two="v1.35.2+k3s1", four="v1.35.2+k3s1", five="v1.34.0+k3s1")
    assert skew_refusal(cluster, store, ["three"], "v1.35.9+k3s1") is None
    said = skew_refusal(cluster, store, ["three"], "v1.37.0+k3s1")
    assert said and "one (server) runs v1.35.2+k3s1" in said
    assert "API servers must be within one minor version of each other" in said
    # a server older than a running kubelet: that kubelet would be newer than an API server
    said = skew_refusal(cluster, store, ["three"], "v1.34.5+k3s1")
    assert said and "four (agent) runs v1.35.2+k3s1: its kubelet would be newer than the new API server" in said
    assert "five (agent)" not in said
    said = skew_refusal(cluster, store, ["three"], "v1.38.0+k3s1")
    assert "five (agent) runs v1.34.0+k3s1: its kubelet would be more than three minor versions older" in said


def test_every_card_baked_at_once_is_a_cluster_of_one_version(tmp_path):
    cluster = cluster_of(HA)
    store = running(tmp_path, one="v1.33.0+k3s1", two="v1.33.0+k3s1", three="v1.33.0+k3s1", four="v1.33.0+k3s1",
                    five="v1.33.0+k3s1")
    assert skew_refusal(cluster, store, ["router", *cluster.roles[1:]], "v1.36.1+k3s1") is None
    assert skew_refusal(cluster, store, ["router"], "v1.37.0+k3s1") is None  # the router runs no k3s


def test_a_card_replaced_half_way_through_an_upgrade_joins_either_side_of_it(tmp_path):
    """`k3s upgrade` moves the servers first, one at a time, and can stop half-way (a node that did
    not come back). A server card lost then must be bakeable at either version; an agent only at
    what every server's API server serves."""
    cluster = cluster_of(HA)
    store = running(tmp_path, one="v1.36.1+k3s1", two="v1.35.2+k3s1", three="v1.35.2+k3s1",
                    four="v1.35.2+k3s1", five="v1.35.2+k3s1")
    for server in ("one", "two"):
        for version in ("v1.35.2+k3s1", "v1.36.1+k3s1"):
            assert skew_refusal(cluster, store, [server], version) is None, (server, version)
    said = skew_refusal(cluster, store, ["four"], "v1.36.1+k3s1")
    assert said and "two (server) runs v1.35.2+k3s1" in said and "one (server)" not in said
    assert "set kubernetes.k3s_version to v1.35.2+k3s1, what the oldest server runs" in said
    assert skew_refusal(cluster, store, ["four"], "v1.35.2+k3s1") is None


def test_an_unreadable_record_is_refused_with_the_file_and_the_fix(tmp_path):
    """Passed over, it would let a card of any version join; it crashed the check before."""
    cluster = cluster_of(HA)
    store = running(tmp_path, one="v1.36.1+k3s1")
    store.write("nodes/two.k3s-version", b"\n")
    said = skew_refusal(cluster, store, ["five"], "v1.36.1+k3s1")
    assert said and "two.k3s-version holds '', not a k3s version" in said and "`k3s --version`" in said


def test_a_damaged_format_or_contract_file_is_refused_by_name_not_with_a_traceback(tmp_path):
    import pytest

    from ceil.errors import CeilError

    store = SecretStore(tmp_path / "secrets")
    store.write(compat.FORMAT_FILE, b"garbage\n")
    with pytest.raises(CeilError, match=r"FORMAT holds 'garbage', not the layout's format.*damaged"):
        compat.check_secrets_format(store)
    store.write(compat.RECORD, b"two\n")
    with pytest.raises(CeilError, match=r"router-contract holds 'two', not the router's contract"):
        compat.router_contract(store)


def test_nodes_baked_from_a_folder_that_holds_no_cluster_are_warned_about(tmp_path):
    """A mistyped --secrets (or a fresh clone elsewhere) made node cards with a new cluster
    identity that can never join the running one, and the bake said nothing."""
    store = SecretStore(tmp_path / "secret")
    warning = compat.new_cluster_warning(store, ["two"])
    assert warning and str(tmp_path / "secret") in warning and "--secrets" in warning
    assert compat.new_cluster_warning(store, ["router", "one"]) is None  # a new cluster, router first
    store.token(SERVER_SECRET)
    assert compat.new_cluster_warning(store, ["two"]) is None  # the cluster's own folder


def test_whether_the_router_was_baked_is_told_apart_from_init_having_made_the_cluster(tmp_path):
    """init recorded the same router-contract as the router's bake, so `vpn-client` could not tell
    a router still to be baked (it will carry the new peer) from one running without it."""
    store = SecretStore(tmp_path / "new")
    assert not compat.router_was_baked(store)  # nothing yet
    store.token(SERVER_SECRET)
    compat.cluster_made(store)  # as init does
    assert not compat.router_was_baked(store) and compat.router_contract(store) == compat.ROUTER_CONTRACT
    compat.router_baked(store)
    assert compat.router_was_baked(store) and compat.router_contract(store) == compat.ROUTER_CONTRACT
    older = SecretStore(tmp_path / "older")
    older.token(SERVER_SECRET)  # baked before the contract record existed
    assert compat.router_was_baked(older)
