"""Issue 5 proof on real hardware (`make verify`): the cluster formed by itself.

k3s cannot run in this project's QEMU test bed: no k3s binary or container images can be had
from the package registries the CI machine reaches, so the test bed installs a stand-in binary
and these checks skip there, saying so. Against real Pis they need the workstation's secrets/
(the admin kubeconfig is made from the baked client CA, nothing is fetched from the server).

Fixtures (tests/infra/conftest.py): `nodes` (name -> testinfra host), `cluster`. The secrets
directory is CEIL_SECRETS, else secrets/ next to CEIL_CONFIG (default ./cluster.yaml).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ceil.k3s.kubeconfig import admin_kubeconfig
from ceil.secrets import SecretStore

pytestmark = pytest.mark.e2e

SYSTEM_DEPLOYMENTS = ("coredns", "local-path-provisioner", "metrics-server")


@pytest.fixture(scope="module")
def real_hardware(nodes):
    for name, host in nodes.items():
        virt = host.run("systemd-detect-virt").stdout.strip()
        if virt and virt != "none":
            pytest.skip(
                f"{name} is a {virt} virtual machine: k3s cannot run in the test bed (no k3s binary"
                " or images in the reachable registries); these checks run on real hardware"
                " (make verify)"
            )


@pytest.fixture(scope="module")
def api(real_hardware, cluster, tmp_path_factory):
    kubernetes = pytest.importorskip("kubernetes", reason="pip install 'ceil[cluster]' for make verify")
    config = Path(os.environ.get("CEIL_CONFIG", "cluster.yaml")).resolve()
    store = SecretStore(Path(os.environ.get("CEIL_SECRETS") or config.parent / "secrets"))
    if not store.exists("k3s/tls/client-ca.key"):
        pytest.skip(f"no k3s CA in {store.root}: point CEIL_SECRETS at the secrets/ the images were baked with")
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(admin_kubeconfig(cluster, store))
    return kubernetes.config.new_client_from_config(str(path)), kubernetes.client


def wait_for(what: str, check, timeout: float = 600, every: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def test_kubeconfig_from_the_workstation_works(api):
    client, k8s = api
    version = k8s.VersionApi(client).get_code()
    assert "+k3s" in version.git_version


def test_every_node_registered_once_and_ready(api, cluster):
    client, k8s = api
    core = k8s.CoreV1Api(client)
    want = {cluster.hostname(n.name) for n in cluster.nodes}

    def ready() -> bool:
        items = core.list_node().items
        states = {n.metadata.name: any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
                  for n in items}
        return set(states) == want and all(states.values())

    wait_for(f"nodes {sorted(want)} Ready", ready)
    names = [n.metadata.name for n in core.list_node().items]
    assert sorted(names) == sorted(want), "a node registered twice or under another name"


def test_system_pods_running(api):
    client, k8s = api
    apps, core = k8s.AppsV1Api(client), k8s.CoreV1Api(client)

    def deployments_ready() -> bool:
        by_name = {d.metadata.name: d for d in apps.list_namespaced_deployment("kube-system").items}
        return all(name in by_name and (by_name[name].status.ready_replicas or 0) >= 1 for name in SYSTEM_DEPLOYMENTS)

    wait_for(f"kube-system deployments {SYSTEM_DEPLOYMENTS}", deployments_ready)
    bad = [f"{p.metadata.name}: {p.status.phase}" for p in core.list_namespaced_pod("kube-system").items
           if p.status.phase not in ("Running", "Succeeded")]
    assert bad == [], bad


def test_secrets_encryption_is_on(real_hardware, nodes, cluster):
    server = nodes[cluster.server.name]
    with server.sudo():
        status = server.check_output("k3s secrets-encrypt status")
    assert "Encryption Status: Enabled" in status, status


def test_servicelb_is_off_when_metallb_is_on(api, cluster):
    from ceil.k3s.node_config import metallb_enabled

    if not metallb_enabled(cluster):
        pytest.skip("MetalLB is off: k3s's servicelb stays")
    client, k8s = api
    pods = k8s.CoreV1Api(client).list_namespaced_pod("kube-system").items
    assert not [p.metadata.name for p in pods if p.metadata.name.startswith("svclb-")]
