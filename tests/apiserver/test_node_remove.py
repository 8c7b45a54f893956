"""`bake.py node remove` against the real API server (issue 19, day two): cordon, evict, delete
the Node and k3s's node-password Secret. No kubelet runs here, so the node and its pod are made
by hand; kube-controller-manager's pod GC removes the evicted pod once its node is gone."""

from __future__ import annotations

import json
import time

from ceil.addons.job.kube import KubeApi, KubeconfigTransport
from ceil.config import load_cluster
from ceil.nodes import drain_and_delete

from .conftest import kubectl


def test_a_removed_node_leaves_no_node_object_and_no_node_password(lab, kubeconfig, workstation, tmp_path):
    cluster = load_cluster(workstation / "cluster.yaml")
    agent = next(n for n in cluster.nodes if n.role == "agent")
    name = cluster.hostname(agent.name)
    objects = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": f"{name}.node-password.k3s", "namespace": "kube-system"},
         "stringData": {"hash": "$1:not-a-real-hash"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-on-agent", "namespace": "drain-test"},
         "spec": {"nodeName": name, "containers": [{"name": "web", "image": "example.invalid/web:1"}]}},
    ]
    # The pod needs its namespace's "default" ServiceAccount: the lab's controller manager makes it
    # (soon, or, under load, later); made by hand if it has not appeared within a few seconds.
    kubectl(kubeconfig, "create", "namespace", "drain-test")
    deadline = time.monotonic() + 10
    while kubectl(kubeconfig, "-n", "drain-test", "get", "serviceaccount", "default", check=False).returncode != 0:
        if time.monotonic() > deadline:
            made = kubectl(kubeconfig, "-n", "drain-test", "create", "serviceaccount", "default", check=False)
            assert made.returncode == 0 or "AlreadyExists" in made.stderr, made.stderr
            break
        time.sleep(0.5)
    (tmp_path / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl(kubeconfig, "create", "-f", str(tmp_path / "objects.json"))
    api = KubeApi(KubeconfigTransport(str(kubeconfig)), log=lambda m: None)
    logged = []
    done = drain_and_delete(api, name, log=logged.append, timeout=60, poll=1)
    # Outside "default": the drain once listed that namespace only and evicted nothing here.
    assert logged == ["evicting drain-test/web-on-agent"], logged
    assert done == [f"Node {name}: cordoned", f"Node {name}: drained", f"Node {name}: deleted",
                    f"Secret kube-system/{name}.node-password.k3s: deleted"]
    assert kubectl(kubeconfig, "get", "node", name, check=False).returncode != 0
    assert kubectl(kubeconfig, "-n", "kube-system", "get", "secret", f"{name}.node-password.k3s",
                   check=False).returncode != 0
    # A second run finds nothing left to do, and says so.
    assert drain_and_delete(api, name, log=lambda m: None) == [
        f"Node {name}: not in the cluster", f"Secret kube-system/{name}.node-password.k3s: not there"]


def test_a_node_held_by_a_finalizer_is_waited_for_and_named(lab, kubeconfig, tmp_path):
    """A server's Node in an HA cluster goes only once k3s removed its etcd member (a finalizer):
    the real API server keeps a deleted Node with a finalizer, and `node remove` waits for it."""
    import pytest

    from ceil.errors import CeilError
    from ceil.nodes import wait_gone

    name = "ceil-held"
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "finalizers": ["example.invalid/etcd-member"]}}
    (tmp_path / "node.json").write_text(json.dumps(node))
    kubectl(kubeconfig, "create", "-f", str(tmp_path / "node.json"))
    api = KubeApi(KubeconfigTransport(str(kubeconfig)), log=lambda m: None)
    api.delete_named("v1", "Node", name)
    with pytest.raises(CeilError, match="held by example.invalid/etcd-member"):
        wait_gone(api, name, timeout=2, poll=0.5)
    kubectl(kubeconfig, "patch", "node", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_gone(api, name, timeout=30, poll=0.5)
    assert kubectl(kubeconfig, "get", "node", name, check=False).returncode != 0
