"""The custom-metrics add-on's loop with the real pieces (issue 20 #2): requests per second through
prometheus-adapter to the demo's HorizontalPodAutoscaler, which scales podinfo.

Real here: prometheus-adapter v0.12.0 (the appVersion of the chart the add-on installs), built from
its Go module (testbed/addon_controllers.py) and run in the lab's namespace with the rule ceil's
HelmChart values give it, registered as custom.metrics.k8s.io through the real kube-apiserver's
aggregation layer; kube-controller-manager's HPA controller, as the HPA's service account;
podinfo's Deployment, Service and HPA as the demo add-on renders them with custom-metrics on.

Standing in: Prometheus, by tests/fakes/prometheus.py, which holds the Traefik series as the
monitoring add-on's PodMonitor relabels them (scenario data written here) and answers the rates
the test sets; the chart's install (its APIService, Service, RBAC and config file, written below
from the chart's templates as cited); the pods' nodes (none runs: the Deployment's replica count
is what the HPA moves).
"""

from __future__ import annotations

import json

import pytest
import yaml

from ceil.addons.render import build_plan
from ceil.config import load_cluster
from testbed import addon_controllers
from tests.fakes.prometheus import FakePrometheus
from tests.infra.ceil_infra import helpers

from .conftest import apply_objects, kubectl
from .lab import HOST_SIDE

BUILT = addon_controllers.lookup()  # captured at import, before the unit tests' CEIL_CACHE fixture
ADAPTER_PORT = 6444  # the chart's is 6443, which the lab's kube-apiserver holds in the same namespace
METRIC = "traefik_requests_per_second"
TIMEOUT = 150

# traefik_service_requests_total as Prometheus stores it: Traefik's own labels (its `service` is
# <namespace>-<name>-<port>@kubernetes), the scrape's pod labels, and the two the PodMonitor adds.
SERIES = [
    {"__name__": "traefik_service_requests_total", "service": "demo-podinfo-9898@kubernetes", "code": "200",
     "method": "GET", "protocol": "http", "namespace": "kube-system", "pod": "traefik-6d9c7b8f4-x2x7q",
     "ingress_namespace": "demo", "ingress_service": "podinfo"},
    {"__name__": "traefik_service_requests_total", "service": "demo-podinfo-9898@kubernetes", "code": "404",
     "method": "GET", "protocol": "http", "namespace": "kube-system", "pod": "traefik-6d9c7b8f4-x2x7q",
     "ingress_namespace": "demo", "ingress_service": "podinfo"},
    {"__name__": "traefik_service_requests_total", "service": "demo-httpd-80@kubernetes", "code": "200",
     "method": "GET", "protocol": "http", "namespace": "kube-system", "pod": "traefik-6d9c7b8f4-x2x7q",
     "ingress_namespace": "demo", "ingress_service": "httpd"},
    # Traefik's own dashboard: no ingress labels, so the rule's series query leaves it out.
    {"__name__": "traefik_service_requests_total", "service": "api@internal", "code": "200", "method": "GET",
     "protocol": "http", "namespace": "kube-system", "pod": "traefik-6d9c7b8f4-x2x7q"},
]


@pytest.fixture(scope="module")
def plan(workstation) -> dict:
    cluster = load_cluster(workstation / "cluster.yaml")
    cluster = cluster.model_copy(update={"addons": cluster.addons.model_copy(update={"enable": ["custom-metrics"]})})
    return {a["name"]: [m for s in a["steps"] for m in s["manifests"]] for a in build_plan(cluster)["addons"]}


@pytest.fixture(scope="module")
def prometheus(lab):
    """On this machine's end of the lab's link: 25 + 5 requests/s for podinfo, 3 for httpd."""
    with FakePrometheus(SERIES, rates=[25.0, 5.0, 3.0, 100.0], host=HOST_SIDE) as prom:
        yield prom


def adapter_values(plan: dict) -> dict:
    (chart,) = [m for m in plan["custom-metrics"] if m["kind"] == "HelmChart"]
    return yaml.safe_load(chart["spec"]["valuesContent"])


def chart_install(values: dict, ip: str) -> list[dict]:
    """What chart prometheus-adapter 5.3.0 installs around the adapter's pod (templates
    custom-metrics-apiservice.yaml, custom-metrics-cluster-role.yaml,
    hpa-custom-metrics-cluster-role-binding.yaml, service.yaml), the Service's endpoints pointing
    at the process in the lab instead of a pod."""
    ns = "monitoring"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus-adapter", "namespace": ns},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ADAPTER_PORT}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "prometheus-adapter", "namespace": ns},
         "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": ADAPTER_PORT}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
         "spec": {"service": {"name": "prometheus-adapter", "namespace": ns}, "group": "custom.metrics.k8s.io",
                  "version": "v1beta1", "insecureSkipTLSVerify": True, "groupPriorityMinimum": 100,
                  "versionPriority": 100}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "prometheus-adapter-server-resources"},
         "rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "prometheus-adapter-hpa-controller"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "prometheus-adapter-server-resources"},
         "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}]},
    ]


@pytest.fixture(scope="module")
def adapter(lab, kubeconfig, plan, prometheus, tmp_path_factory):
    if BUILT is None:
        pytest.fail("no add-on controllers for the fast layer: run `make addon-controllers` first")
    values = adapter_values(plan)
    # The chart's configmap.yaml: `rules:` holds rules.custom (rules.default is off in ceil's values).
    assert values["rules"]["default"] is False
    config = tmp_path_factory.mktemp("adapter") / "config.yaml"
    config.write_text(yaml.safe_dump({"rules": values["rules"]["custom"]}))
    apply_objects(kubeconfig, chart_install(values, lab.ip))
    admin = str(lab.kubeconfig("prometheus-adapter", "system:masters"))
    # The chart's deployment.yaml arguments; the Prometheus URL the fake's instead of the values'.
    assert values["prometheus"]["url"].startswith("http://") and values["prometheus"]["port"] == 9090
    lab.spawn("prometheus-adapter", [
        str(BUILT / "prometheus-adapter"), f"--secure-port={ADAPTER_PORT}", f"--bind-address={lab.ip}",
        f"--cert-dir={lab.dir / 'adapter-certs'}", f"--prometheus-url={prometheus.url}/",
        "--metrics-relist-interval=1m", "--v=4", f"--config={config}", f"--lister-kubeconfig={admin}",
        f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}"])
    yield lab
    lab.kill("prometheus-adapter")
    # An aggregated API with nothing behind it breaks discovery for every later client of the
    # session's lab (kubectl, controllers, the garbage collector): it goes with the adapter.
    kubectl(kubeconfig, "delete", "apiservice", "v1beta1.custom.metrics.k8s.io", "--ignore-not-found")
    kubectl(kubeconfig, "delete", "hpa", "-n", "demo", "podinfo", "--ignore-not-found")


def wait_for(what: str, check, lab):
    return helpers.wait_for(what, check, timeout=TIMEOUT, every=2,
                            explain=lambda: lab.tails("prometheus-adapter", "kube-controller-manager"))


def custom_metric(kubeconfig, service: str):
    done = kubectl(kubeconfig, "get", "--raw",
                   f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/demo/services/{service}/{METRIC}", check=False)
    return json.loads(done.stdout)["items"] if done.returncode == 0 else done.stderr.strip()[-300:]


def test_the_adapter_serves_the_request_rate_of_a_service_through_the_api_server(adapter, kubeconfig, lab,
                                                                                 prometheus):
    def served() -> list | None:  # custom_metric's items, not its refusal (a str)
        answer = custom_metric(kubeconfig, "podinfo")
        return answer if isinstance(answer, list) and answer else None

    items = wait_for("custom.metrics.k8s.io answering for demo/podinfo", served, lab)
    (item,) = items
    assert item["metricName"] == METRIC
    assert item["describedObject"] == {"kind": "Service", "namespace": "demo", "name": "podinfo",
                                       "apiVersion": "/v1"}
    assert float(item["value"]) == pytest.approx(30.0)  # both of podinfo's series, not httpd's
    assert float(custom_metric(kubeconfig, "httpd")[0]["value"]) == pytest.approx(3.0)
    # The rule's own query reached Prometheus: series restricted to the ingress labels, the rate
    # summed over podinfo's series by the service label.
    asked = " ".join(prometheus.queries)
    assert 'traefik_service_requests_total{ingress_namespace!="",ingress_service!=""}' in asked
    assert 'ingress_service="podinfo"' in asked and "[2m]" in asked


def test_the_demos_hpa_scales_podinfo_on_requests_per_second(adapter, kubeconfig, plan, lab, prometheus,
                                                             tmp_path_factory):
    """10 requests/s per pod (ceil's HPA target): 30 requests/s asks for 3 replicas, 200 for more
    than the HPA's maximum, which holds."""
    demo = [m for m in plan["demo"] if m["kind"] in ("Namespace", "Deployment", "Service", "HorizontalPodAutoscaler")
            and m["metadata"]["name"] in ("demo", "podinfo")]
    hpa = next(m for m in demo if m["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["type"] == "Object"  # custom-metrics on: the request rate, not CPU
    apply_objects(kubeconfig, demo)

    def replicas() -> int:
        return json.loads(kubectl(kubeconfig, "get", "deployment", "-n", "demo", "podinfo", "-o", "json").stdout
                          )["spec"]["replicas"]

    def hpa_status() -> dict:
        return json.loads(kubectl(kubeconfig, "get", "hpa", "-n", "demo", "podinfo", "-o", "json").stdout
                          ).get("status") or {}

    wait_for("podinfo scaled to 3 replicas on 30 requests/s", lambda: replicas() == 3, lab)
    metric = hpa_status()["currentMetrics"][0]["object"]
    assert metric["metric"]["name"] == METRIC and metric["describedObject"]["name"] == "podinfo"

    prometheus.rates[:2] = [180.0, 20.0]
    most = hpa["spec"]["maxReplicas"]
    wait_for(f"podinfo scaled to the HPA's maximum ({most}) on 200 requests/s", lambda: replicas() == most, lab)
    conditions = {c["type"]: c for c in hpa_status()["conditions"]}
    assert conditions["ScalingLimited"]["status"] == "True", conditions
