"""Issue 5 proof: the cluster formed by itself, from the keys and configs baked into the cards.

On real Pis (`make verify`) k3s runs. In the QEMU test bed no k3s can be had (docs/testing.md),
so the nodes run the stand-in testbed/kubenode.py builds: upstream Kubernetes (kube-apiserver,
the kubelet, containerd...) started from the same config.yaml, CA files and tokens ceil baked,
where an agent joins only with a token whose CA hash matches the server's CA. The checks that need
k3s itself (its packaged system pods, `k3s secrets-encrypt`) skip there, saying so; the rest run
on both. The admin kubeconfig is made from the baked client CA (nothing is fetched from the
server): against real Pis it needs the workstation's secrets/; in the test bed the API is reached
through an SSH tunnel via the router (as `bake.py k8s-proxy` does).

Fixtures (tests/infra/conftest.py): `targets`, `nodes` (name -> testinfra host), `cluster`. The
secrets directory is CEIL_SECRETS, else secrets/ next to CEIL_CONFIG (default ./cluster.yaml).
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from ceil_e2e.cluster import free_port
from ceil_infra.helpers import or_none, wait_for

from ceil.k3s.kubeconfig import API_PORT, admin_kubeconfig
from ceil.secrets import SecretStore

pytestmark = pytest.mark.e2e

SYSTEM_DEPLOYMENTS = ("coredns", "local-path-provisioner", "metrics-server")
STAND_IN = "k3s stand-in"


def k3s_itself(nodes) -> bool:
    """Whether the nodes run k3s, not the test bed's stand-in (which says so in --version)."""
    host = next(iter(nodes.values()))
    return "stand-in" not in host.run("/usr/local/bin/k3s --version").stdout


@pytest.fixture(scope="module")
def real_hardware(nodes):
    if not k3s_itself(nodes):
        pytest.skip(f"the test bed runs the {STAND_IN} (upstream Kubernetes, without k3s's packaged"
                    " system pods and subcommands); this check runs on real hardware (make verify)")


@pytest.fixture(scope="module")
def api(targets, nodes, cluster, tmp_path_factory):
    kubernetes = pytest.importorskip("kubernetes", reason="pip install 'ceil[cluster]' for make verify")
    # The e2e run's secrets/, or for make verify CEIL_SECRETS, else secrets/ beside cluster.yaml.
    store = SecretStore(targets.secrets_dir) if targets.secrets_dir else None
    if store is None or not store.exists("k3s/tls/client-ca.key"):
        pytest.skip(f"no k3s CA in {targets.secrets_dir or 'secrets/'}: point CEIL_SECRETS at the secrets/ the"
                    " images were baked with")
    tunnel, port = None, None
    if targets.mode == "e2e":
        # The host is beside the router's uplink, not on the cluster LAN: through the router's SSH.
        port = free_port()
        # Its own connection (no ControlMaster): the forward lives and ends with this process.
        tunnel = subprocess.Popen(targets.ssh.command("router", None, "-N", "-o", "ControlMaster=no", "-o",
                                                      "ControlPath=none", "-o", "ExitOnForwardFailure=yes", "-L",
                                                      f"127.0.0.1:{port}:{cluster.server.ip}:{API_PORT}"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for("the SSH tunnel to the API", lambda: _connects(port) or tunnel.poll() is not None, 60, 1)
        if tunnel.poll() is not None:
            raise AssertionError(f"ssh -L through the router failed: {tunnel.stderr.read()}")
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(admin_kubeconfig(cluster, store, tunnel_port=port))
    try:
        yield kubernetes.config.new_client_from_config(str(path)), kubernetes.client
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait(timeout=30)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_kubeconfig_from_the_workstation_works(api, cluster):
    """The baked admin kubeconfig (client CA, server CA) is accepted, and the server runs the
    k3s release cluster.yaml names."""
    client, k8s = api
    version = wait_for("the API server", lambda: or_none(lambda: k8s.VersionApi(client).get_code()), 900, 10)
    assert version.git_version == cluster.kubernetes.k3s_version


def test_every_node_registered_once_and_ready(api, cluster):
    client, k8s = api
    core = k8s.CoreV1Api(client)
    want = {cluster.hostname(n.name) for n in cluster.nodes}

    def ready() -> bool:
        items = core.list_node().items
        states = {n.metadata.name: any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
                  for n in items}
        return set(states) == want and all(states.values())

    wait_for(f"nodes {sorted(want)} Ready", lambda: or_none(ready), 1200, 10)
    items = core.list_node().items
    assert sorted(n.metadata.name for n in items) == sorted(want), "a node registered twice or under another name"
    # Each under the address its DHCP reservation gives (config.yaml's node-ip), running the
    # kubelet of the k3s release cluster.yaml names (the skew and upgrade checks read this).
    by_name = {n.metadata.name: n for n in items}
    for node in cluster.nodes:
        got = by_name[cluster.hostname(node.name)]
        internal = [a.address for a in got.status.addresses if a.type == "InternalIP"]
        assert internal == [str(node.ip)], (node.name, internal)
        assert got.status.node_info.kubelet_version == cluster.kubernetes.k3s_version, node.name


def test_every_kubelet_runs_with_the_memory_eviction_threshold_ceil_sets(api, cluster):
    """config.yaml's kubelet-arg reached each kubelet and was parsed by it: its live configuration
    (read through the API server's node proxy) evicts pods before memory runs out."""
    import json

    from ceil.k3s.node_config import KUBELET_EVICTION_HARD

    client, _ = api
    want = dict(part.split("<", 1) for part in KUBELET_EVICTION_HARD.split("=", 1)[1].split(","))
    for node in cluster.nodes:
        name = cluster.hostname(node.name)
        raw = wait_for(f"{name}'s kubelet configuration", lambda: or_none(lambda: client.call_api(
            f"/api/v1/nodes/{name}/proxy/configz", "GET", auth_settings=["BearerToken"], _preload_content=False,
            response_type="object")[0].data), 600, 10)
        hard = json.loads(raw)["kubeletconfig"]["evictionHard"]
        assert hard == want, (name, hard)


def test_system_pods_running(real_hardware, api):
    client, k8s = api
    apps, core = k8s.AppsV1Api(client), k8s.CoreV1Api(client)

    def deployments_ready() -> bool:
        by_name = {d.metadata.name: d for d in apps.list_namespaced_deployment("kube-system").items}
        return all(name in by_name and (by_name[name].status.ready_replicas or 0) >= 1 for name in SYSTEM_DEPLOYMENTS)

    wait_for(f"kube-system deployments {SYSTEM_DEPLOYMENTS}", deployments_ready, 600, 10)
    bad = [f"{p.metadata.name}: {p.status.phase}" for p in core.list_namespaced_pod("kube-system").items
           if p.status.phase not in ("Running", "Succeeded")]
    assert bad == [], bad


def test_secrets_encryption_is_on(real_hardware, nodes, cluster):
    server = nodes[cluster.server.name]
    with server.sudo():
        status = server.check_output("k3s secrets-encrypt status")
    assert "Encryption Status: Enabled" in status, status


def test_pod_traffic_between_nodes_goes_the_way_cluster_yaml_chose(real_hardware, nodes, cluster):
    """kubernetes.flannel_backend: with wireguard-native every node has flannel's WireGuard link
    (a LAN device posing as a node has no key it accepts) and no VXLAN one; with vxlan the other
    way round. Read with iproute2 (the nodes have no wireguard-tools)."""
    wireguard = cluster.kubernetes.flannel_backend == "wireguard-native"
    for name, node in nodes.items():
        links = node.check_output("ip -o -d link show").split("\n")
        kind = {link: next((line for line in links if f": {link}:" in line), "") for link in ("flannel-wg", "flannel.1")}
        assert ("wireguard" in kind["flannel-wg"], "vxlan" in kind["flannel.1"]) == (wireguard, not wireguard), (name, kind)


def test_servicelb_is_off_when_metallb_is_on(real_hardware, api, cluster):
    from ceil.k3s.node_config import metallb_enabled

    if not metallb_enabled(cluster):
        pytest.skip("MetalLB is off: k3s's servicelb stays")
    client, k8s = api
    pods = k8s.CoreV1Api(client).list_namespaced_pod("kube-system").items
    assert not [p.metadata.name for p in pods if p.metadata.name.startswith("svclb-")]


# k3s's sandbox image: on a Pi pulled (through the router's mirror) or already there from the
# system pods; in the test bed the k3s stand-in imports its own build of it at start.
PAUSE = "rancher/mirrored-pause:3.6"


def test_a_pod_runs_on_every_node(api, cluster):
    """The container runtime works on each node: a pod pinned to it runs (its sandbox and one
    container started by containerd and runc, an address from the node's pod network)."""
    import ipaddress

    client, k8s = api
    core = k8s.CoreV1Api(client)
    names = {cluster.hostname(n.name): f"ceil-verify-{n.name}" for n in cluster.nodes}
    try:
        for node, pod in names.items():
            core.create_namespaced_pod("default", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {"app": "ceil-verify"}},
                "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}], "automountServiceAccountToken": False,
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "pause", "image": PAUSE, "imagePullPolicy": "IfNotPresent"}]}})

        def running() -> dict | None:
            pods = {p.metadata.name: p for p in core.list_namespaced_pod("default", label_selector="app=ceil-verify").items}
            if all(pods.get(pod) is not None and pods[pod].status.phase == "Running" for pod in names.values()):
                return pods
            return None

        pods = wait_for(f"pods {sorted(names.values())} Running", lambda: or_none(running), 600, 5)
        cidr = ipaddress.ip_network(str(cluster.kubernetes.cluster_cidr))
        for node, pod in names.items():
            assert pods[pod].spec.node_name == node
            assert ipaddress.ip_address(pods[pod].status.pod_ip) in cidr, (pod, pods[pod].status.pod_ip)
    finally:
        for pod in names.values():
            or_none(lambda: core.delete_namespaced_pod(pod, "default", grace_period_seconds=0))
