"""`bake.py node remove`: what it refuses and what it asks of the router (the cluster side runs
against the real API server in tests/apiserver/test_node_remove.py)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from click.testing import CliRunner

from ceil import nodes, workstation
from ceil.config import parse_cluster
from ceil.errors import CeilError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
CLUSTER = f"""ssh: {{authorized_keys: ["{KEY}"]}}
router: {{uplink: {{type: ethernet}}}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}, {{name: two, ip: 10.42.0.12}}]
"""


def test_the_only_server_is_not_removed():
    with pytest.raises(CeilError, match="only server"):
        nodes.refuse_the_only_server(parse_cluster(CLUSTER), "one")
    nodes.refuse_the_only_server(parse_cluster(CLUSTER), "two")
    ha = CLUSTER.replace("{name: two, ip: 10.42.0.12}", "{name: two, role: server, ip: 10.42.0.12}")
    nodes.refuse_the_only_server(parse_cluster(ha), "two")  # not the only one, not the first


def test_the_router_forgets_the_nodes_lease_and_status(tmp_path):
    cmd = nodes.router_cleanup_command(parse_cluster(CLUSTER), "two")
    assert "rm -f /var/lib/ceil-status-board/two.json /var/lib/ceil-status-board/registered/two.json" in cmd
    subprocess.run(["sh", "-n", "-c", cmd], check=True)
    assert nodes.lease_edit(parse_cluster(CLUSTER), "two") in shlex.split(cmd)[-1]  # sudo sh -c '...'
    # The command's own lease edit, run on a lease file as dnsmasq writes it: node two's reserved
    # address and the pool address it leased under its name before it registered both go (the
    # pool lease stayed before); another host's lease on a similar address stays.
    leases = tmp_path / "leases"
    leases.write_text("1796 02:00:00:00:aa:01 10.42.0.11 ceil-one *\n"
                      "1796 02:00:00:00:aa:02 10.42.0.12 ceil-two *\n"
                      "1500 02:00:00:00:aa:02 10.42.0.150 ceil-two 01:02:00:00:00:aa:02\n"
                      "1796 02:00:00:00:bb:01 10.42.0.120 phone *\n")
    subprocess.run(["sh", "-c", nodes.lease_edit(parse_cluster(CLUSTER), "two", str(leases))], check=True)
    assert leases.read_text() == ("1796 02:00:00:00:aa:01 10.42.0.11 ceil-one *\n"
                                  "1796 02:00:00:00:bb:01 10.42.0.120 phone *\n")


def test_remove_refuses_before_touching_anything(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(workstation.subprocess, "run", lambda *a, **k: calls.append(a))
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(nodes.node_group, ["remove", "--config", str(tmp_path / "cluster.yaml"), "--yes", "one"])
    assert result.exit_code != 0 and "only server" in str(result.exception) and calls == []


def test_the_router_is_not_removed_and_the_message_says_what_to_do_instead(tmp_path, monkeypatch):
    """It said "role 'router' is not in the cluster: roles are router, ...", which contradicts itself."""
    calls = []
    monkeypatch.setattr(workstation.subprocess, "run", lambda *a, **k: calls.append(a))
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(nodes.node_group, ["remove", "--config", str(tmp_path / "cluster.yaml"), "--yes", "router"])
    said = str(result.exception)
    assert result.exit_code != 0 and isinstance(result.exception, CeilError)
    assert "the router cannot be removed" in said and "python bake.py --role router" in said
    assert "takes a node: one, two" in said and "not in the cluster" not in said
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]


HA = CLUSTER.replace("nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, ip: 10.42.0.12}]",
                     "nodes: [{name: one, role: server, ip: 10.42.0.11}, {name: two, role: server, ip: 10.42.0.12},"
                     " {name: three, role: server, ip: 10.42.0.13}, {name: four, ip: 10.42.0.14}]")


def test_after_removal_an_agent_is_dropped_or_replaced_and_an_ha_server_replaced():
    assert nodes.next_step(parse_cluster(HA), "four").startswith("done: remove four from cluster.yaml")
    two = nodes.next_step(parse_cluster(HA), "two")
    assert "2 servers run etcd, which tolerates 0 more lost server(s)" in two and "remove two from" not in two
    # The first server listed: the kubeconfig's, and baked with cluster-init (its replacement
    # would start a new cluster): refused until another server comes first.
    with pytest.raises(CeilError, match=r"one is the first server under nodes: .* first move another server \(e.g. two\) above it"):
        nodes.refuse_the_only_server(parse_cluster(HA), "one")
    nodes.refuse_the_only_server(parse_cluster(HA), "two")


class Finalized:
    """A Node whose finalizer is let go after `polls` looks (None: never), as k3s's etcd member
    removal lets a deleted server's Node go once its member is out."""

    def __init__(self, polls):
        self.polls, self.seen = polls, 0

    def get(self, version, kind, name, namespace=None):
        self.seen += 1
        if self.polls is not None and self.seen > self.polls:
            return None
        return {"metadata": {"name": name, "finalizers": ["example.invalid/etcd-member"],
                             "deletionTimestamp": "2026-12-01T00:00:00Z"}}


def test_the_removal_waits_for_the_node_to_be_let_go_and_names_what_holds_it():
    nodes.wait_gone(Finalized(2), "ceil-two", timeout=5, poll=0.01)
    with pytest.raises(CeilError, match=r"ceil-two was deleted but is still there .* held by example.invalid/etcd-member"):
        nodes.wait_gone(Finalized(None), "ceil-two", timeout=0.05, poll=0.01)
