"""The keda add-on's scale to zero and back with the real pieces (issue 20 #2).

Real here: KEDA's operator v2.21.0 and the HTTP add-on's interceptor and external scaler v0.15.0
(the versions of the charts the add-on installs), built from their Go modules
(testbed/addon_controllers.py), run in the lab's namespace against its real API server; the
demo's sleepy Deployment, Service, InterceptorRoute and ScaledObject as the add-on renders them.
The operator scales sleepy to zero while no request waits; a request to the interceptor for
sleepy's host wakes it (the interceptor counts it, the scaler streams that to the operator, the
operator scales the Deployment to one).

Standing in for the charts' installs: the CRDs from the same modules, the interceptor admin
Service's endpoints pointing at the process, the scaler's Service name resolved by the namespace's
hosts file (no cluster DNS here), and the operator's gRPC certificates made here. No pod runs, so
the woken request is never answered: what is observed is the replica count.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ceil.addons.catalog import Catalog
from ceil.addons.render import build_plan
from ceil.config import load_cluster
from ceil.k3s import pki
from testbed import addon_controllers
from tests.infra.ceil_infra import helpers

from .conftest import apply_objects, install_crds, kubectl

BUILT = addon_controllers.lookup()  # captured at import, before the unit tests' CEIL_CACHE fixture
SCALER = "keda-add-ons-http-external-scaler.keda"
# The charts' pods each have a network namespace; these processes share the lab's, so the ports
# the pods use alike (8080, the metrics exporter's 2223) are moved apart here.
PROXY_PORT, ADMIN_PORT, SCALER_PORT = 8085, 9091, 9090
TIMEOUT = 150


@pytest.fixture(scope="module")
def cluster(workstation):
    base = load_cluster(workstation / "cluster.yaml")
    return base.model_copy(update={"addons": base.addons.model_copy(update={"enable": ["keda"]})})


@pytest.fixture(scope="module")
def sleepy(cluster) -> list[dict]:
    (keda,) = [a for a in build_plan(cluster)["addons"] if a["name"] == "keda"]
    return [m for s in keda["steps"] for m in s["manifests"]
            if m["metadata"]["name"] == "sleepy" and m["kind"] in ("Deployment", "Service", "InterceptorRoute",
                                                                   "ScaledObject")]


@pytest.fixture(scope="module")
def keda(lab, kubeconfig, sleepy, tmp_path_factory, request):
    if BUILT is None:
        pytest.fail("no add-on controllers for the fast layer: run `make addon-controllers` first")
    tmp = tmp_path_factory.mktemp("keda")
    install_crds(kubeconfig, Catalog().get("keda").crds)
    scaler_address = next(t["metadata"]["scalerAddress"] for m in sleepy if m["kind"] == "ScaledObject"
                       for t in m["spec"]["triggers"]).rsplit(":", 1)
    assert scaler_address == [SCALER, str(SCALER_PORT)]
    apply_objects(kubeconfig, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "keda-add-ons-http-interceptor-admin",
                                                             "namespace": "keda"},
         "spec": {"ports": [{"name": "admin", "port": ADMIN_PORT, "targetPort": ADMIN_PORT}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "keda-add-ons-http-interceptor-admin",
                                                               "namespace": "keda"},
         "subsets": [{"addresses": [{"ip": lab.ip, "targetRef": {"kind": "Pod", "namespace": "keda",
                                                                  "name": "keda-add-ons-http-interceptor-0"}}],
                      "ports": [{"name": "admin", "port": ADMIN_PORT}]}]},
    ])
    # The scaler's Service name, as cluster DNS would answer it: `ip netns exec` mounts this file
    # over /etc/hosts for the processes in the namespace.
    etc = Path("/etc/netns") / lab.ns
    request.addfinalizer(lambda: shutil.rmtree(etc, ignore_errors=True))  # also when a step below fails
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{lab.ip} {SCALER} {SCALER}.svc.cluster.local\n")
    certs = tmp / "certs"
    certs.mkdir()
    ca = pki.make_ca("keda test CA")
    server = pki.issue_server_cert(ca, "keda-operator", ["keda-operator", "keda-operator.keda", "localhost"],
                                   ["127.0.0.1"])
    (certs / "ca.crt").write_bytes(ca.cert_pem)
    (certs / "tls.crt").write_bytes(server.cert_pem)
    (certs / "tls.key").write_bytes(server.key_pem)
    admin = str(lab.kubeconfig("keda", "system:masters"))
    common = {"KUBECONFIG": admin}
    lab.spawn("keda-interceptor", [str(BUILT / "interceptor")], {
        **common, "KEDA_HTTP_PROXY_PORT": str(PROXY_PORT), "KEDA_HTTP_ADMIN_PORT": str(ADMIN_PORT),
        "KEDA_HTTP_WATCH_NAMESPACE": "", "OTEL_PROM_EXPORTER_PORT": "2224"})
    lab.spawn("keda-scaler", [str(BUILT / "scaler")], {
        **common, "KEDA_HTTP_SCALER_PORT": str(SCALER_PORT), "KEDA_HTTP_SCALER_TARGET_ADMIN_NAMESPACE": "keda",
        "KEDA_HTTP_SCALER_TARGET_ADMIN_SERVICE": "keda-add-ons-http-interceptor-admin",
        "KEDA_HTTP_SCALER_TARGET_ADMIN_DEPLOYMENT": "keda-add-ons-http-interceptor",
        "KEDA_HTTP_SCALER_TARGET_ADMIN_PORT": str(ADMIN_PORT)})
    lab.spawn("keda-operator", [str(BUILT / "keda-operator"), "--metrics-bind-address=127.0.0.1:9801",
                                "--health-probe-bind-address=127.0.0.1:9802",
                                "--metrics-service-bind-address=127.0.0.1:9666", f"--cert-dir={certs}",
                                f"--ca-dir={certs}", "--enable-webhook-patching=false",
                                "--enable-apiservice-patching=false", "--zap-log-level=debug"],
              {**common, "WATCH_NAMESPACE": "", "POD_NAMESPACE": "keda", "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda"})
    for name in ("keda-operator", "keda-scaler", "keda-interceptor"):
        request.addfinalizer(lambda name=name: lab.kill(name))
    apply_objects(kubeconfig, sleepy)
    yield lab


def replicas(kubeconfig) -> int | None:
    done = kubectl(kubeconfig, "get", "deployment", "-n", "demo", "sleepy", "-o", "json", check=False)
    return json.loads(done.stdout)["spec"].get("replicas") if done.returncode == 0 else None


def wait_for(what: str, check, lab):
    return helpers.wait_for(what, check, timeout=TIMEOUT, every=2,
                            explain=lambda: lab.tails("keda-operator", "keda-scaler", "keda-interceptor", chars=2000))


def scaled_object(kubeconfig) -> dict:
    so = json.loads(kubectl(kubeconfig, "get", "scaledobject", "-n", "demo", "sleepy", "-o", "json").stdout)
    return {c["type"]: c["status"] for c in (so.get("status") or {}).get("conditions", [])}


def test_keda_scales_the_idle_app_to_zero(keda, kubeconfig):
    """From the one replica the Deployment starts with to zero, the ScaledObject Ready: KEDA leaves
    the replicas alone (and sets Ready False) while its scaler fails, so reaching zero shows the
    chain (operator, scaler, interceptor's counts) answered "inactive"."""
    wait_for("sleepy at zero replicas, its ScaledObject Ready and not Active",
             lambda: replicas(kubeconfig) == 0 and scaled_object(kubeconfig).get("Active") == "False", keda)
    assert scaled_object(kubeconfig).get("Ready") == "True"


def test_the_first_request_wakes_it(keda, kubeconfig, cluster):
    wait_for("sleepy at zero replicas with no request waiting", lambda: replicas(kubeconfig) == 0, keda)
    host = f"sleepy.{cluster.domain}"
    request = subprocess.Popen(["ip", "netns", "exec", keda.ns, "curl", "-s", "-o", "/dev/null", "-m", "100",
                                "-H", f"Host: {host}", f"http://127.0.0.1:{PROXY_PORT}/"])
    try:
        wait_for(f"sleepy woken to one replica by a request for {host}", lambda: replicas(kubeconfig) == 1, keda)
    finally:
        request.kill()
        request.wait()
