"""`bake.py k3s upgrade`'s Kubernetes side against the real API server (issue 19, day two):
the node is drained (its pod evicted), stays cordoned while k3s restarts, is uncordoned only once
its Node reports Ready with the new kubelet. No kubelet runs here: the node's SSH side is a
recording stand-in whose "restart" reports the new kubelet on the Node's status, as k3s's does."""

from __future__ import annotations

import hashlib
import json

import pytest

from ceil.addons.job.kube import KubeApi, KubeconfigTransport
from ceil.config import load_cluster
from ceil.errors import CeilError
from ceil.k3s import upgrade as up
from ceil.secrets import SecretStore

from .conftest import kubectl

OLD, NEW = "v1.36.0+k3s1", "v1.36.1+k3s1"


def node_status(kubelet: str, ready: bool) -> dict:
    return {"status": {"nodeInfo": {"kubeletVersion": kubelet},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "KubeletReady", "message": "k3s is up"}]}}


def test_a_node_is_drained_swapped_and_uncordoned_only_when_ready_with_the_new_kubelet(
        lab, kubeconfig, workstation, tmp_path):
    cluster = load_cluster(workstation / "cluster.yaml")
    agent = next(n for n in cluster.nodes if n.role == "agent")
    name = cluster.hostname(agent.name)
    kubectl(kubeconfig, "create", "namespace", "upgrade-test")
    kubectl(kubeconfig, "-n", "upgrade-test", "create", "serviceaccount", "default", check=False)
    objects = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}},
               {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "upgrade-test"},
                "spec": {"nodeName": name, "containers": [{"name": "web", "image": "example.invalid/web:1"}]}}]
    (tmp_path / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl(kubeconfig, "create", "-f", str(tmp_path / "objects.json"))

    def set_status(kubelet: str, ready: bool) -> None:
        kubectl(kubeconfig, "patch", "node", name, "--subresource=status", "--type=merge",
                "-p", json.dumps(node_status(kubelet, ready)))

    set_status(OLD, True)
    seen = {}

    class Node:
        """The node's SSH side: at the swap, records what the cluster looked like, then
        "restarts": not Ready at first, then Ready with the new kubelet."""

        def run(self, host, command, stdin=None, timeout=120):
            if "sha256sum" in command:
                spec = json.loads(kubectl(kubeconfig, "get", "node", name, "-o", "json").stdout)["spec"]
                # Evicted: deleting (no kubelet here confirms the end, which drain does not wait for).
                items = json.loads(kubectl(kubeconfig, "-n", "upgrade-test", "get", "pods", "-o", "json").stdout)["items"]
                pods = [p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")]
                seen.update(cordoned=spec.get("unschedulable", False), pods=pods)
                set_status(NEW, False)
                set_status(NEW, True)
                return 0, f"k3s version {NEW} (abc)\n", ""
            return 0, f"k3s version {OLD} (abc)\n", ""

    binary = tmp_path / "k3s-arm64"
    binary.write_bytes(b"new k3s")
    release = up.Release(NEW, binary, hashlib.sha256(b"new k3s").hexdigest(), {})
    api = KubeApi(KubeconfigTransport(str(kubeconfig)), log=lambda m: None)
    logged = []
    remote = Node()
    line = up.upgrade_node(cluster, agent.name, release, up.running_version(remote, agent.name), remote, api,
                           log=logged.append)
    assert "evicting upgrade-test/web" in logged, logged
    assert line == f"{agent.name}: {OLD} -> {NEW}"
    assert seen == {"cordoned": True, "pods": []}, "the swap came before the drain finished"
    spec = json.loads(kubectl(kubeconfig, "get", "node", name, "-o", "json").stdout)["spec"]
    assert not spec.get("unschedulable"), "left cordoned"
    store = SecretStore(tmp_path / "secrets")
    assert not store.exists(f"nodes/{agent.name}.k3s-version")  # upgrade() records; upgrade_node does not
    # No kubelet ends the evicted pod: gone by force, with its node and namespace.
    kubectl(kubeconfig, "-n", "upgrade-test", "delete", "pod", "web", "--force", "--grace-period=0")
    kubectl(kubeconfig, "delete", "node", name)
    kubectl(kubeconfig, "delete", "namespace", "upgrade-test", "--wait=false")


def test_a_node_the_api_reports_not_ready_stops_the_upgrade_before_anything_changes(
        lab, kubeconfig, workstation, tmp_path):
    """The Ready check reads real Node objects: one agent whose kubelet stopped posting (the node
    lifecycle controller's NodeStatusUnknown) and one never joined are named, and no node and not
    the router's cache is touched."""
    cluster = load_cluster(workstation / "cluster.yaml")
    server, down = cluster.node("one"), cluster.node("two")  # three: no Node at all
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": cluster.hostname(n.name)}} for n in (server, down)]
    (tmp_path / "nodes.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    kubectl(kubeconfig, "create", "-f", str(tmp_path / "nodes.json"))
    try:
        kubectl(kubeconfig, "patch", "node", cluster.hostname(server.name), "--subresource=status", "--type=merge",
                "-p", json.dumps(node_status(OLD, True)))
        unknown = node_status(OLD, False)
        unknown["status"]["conditions"][0].update(status="Unknown", reason="NodeStatusUnknown",
                                                  message="Kubelet stopped posting node status.")
        kubectl(kubeconfig, "patch", "node", cluster.hostname(down.name), "--subresource=status", "--type=merge",
                "-p", json.dumps(unknown))

        calls = []

        class Nodes:
            def run(self, host, command, stdin=None, timeout=120):
                calls.append((host, command))
                return 0, f"k3s version {OLD} (abc)\n", ""

        binary = tmp_path / "k3s-arm64"
        binary.write_bytes(b"new k3s")
        release = up.Release(NEW, binary, hashlib.sha256(b"new k3s").hexdigest(), {"k3s-arm64": binary})
        api = KubeApi(KubeconfigTransport(str(kubeconfig)), log=lambda m: None)
        with pytest.raises(CeilError) as e:
            up.upgrade(cluster, SecretStore(tmp_path / "secrets"), release, Nodes(), api, log=lambda m: None)
        msg = str(e.value)
        assert (f"two: Node {cluster.hostname('two')} is not Ready (Ready=Unknown, NodeStatusUnknown: Kubelet"
                " stopped posting node status.)") in msg, msg
        assert f"three: the cluster has no Node {cluster.hostname('three')}" in msg and "one:" not in msg
        assert calls == [], "asked before any SSH"
        for n in (server, down):
            assert not json.loads(kubectl(kubeconfig, "get", "node", cluster.hostname(n.name), "-o", "json")
                                  .stdout)["spec"].get("unschedulable")
    finally:
        kubectl(kubeconfig, "delete", "node", cluster.hostname(server.name), cluster.hostname(down.name))
