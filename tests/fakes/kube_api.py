"""A stand-in for the Kubernetes API server, on 127.0.0.1, for testing the add-on job.

It is NOT Kubernetes: it speaks just enough of the API's HTTP surface for the job's calls
(discovery, GET/DELETE of objects, server-side apply PATCHes) and plays the controllers the
job waits for, in a deterministic way counted in requests rather than seconds:

- nodes become Ready after a given number of GETs (or never register);
- applying a HelmChart or a HelmChartConfig makes a helm-controller pass (after `delay` more
  requests), as k3s's helm-controller v0.17 does (pkg/controllers/chart/chart.go): the values
  go to the Secret chart-values-<chart>, the chart content to the ConfigMap chart-content-<chart>,
  and the install Job is replaced when its pod template's config hash differs; the HelmChart
  gets `status.jobName`, and after `delay` more requests the Job succeeds (or fails) and what
  the chart makes appears: its CRDs (Established, their API group served) and Deployments;
- applied Deployments become available after one more request.

What each chart makes comes from CHART_FACTS, written from the charts' own templates at the
versions the catalog pins, never from the plan under test: an add-on that waits for a name its
chart does not make times out here as it would on a Pi.

Every request is recorded (method, path, query, content type, parsed body) and faults can be
injected: HTTP errors or dropped connections for the next N matching requests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "stand-in-token"


def _res(name: str, kind: str, namespaced: bool) -> dict:
    return {"name": name, "kind": kind, "namespaced": namespaced, "verbs": ["get", "patch", "delete"]}


BUILTIN = {
    "v1": [_res("nodes", "Node", False), _res("namespaces", "Namespace", False),
           _res("secrets", "Secret", True), _res("configmaps", "ConfigMap", True),
           _res("services", "Service", True), _res("serviceaccounts", "ServiceAccount", True),
           _res("nodes/status", "Node", False)],
    "apps/v1": [_res("deployments", "Deployment", True), _res("deployments/status", "Deployment", True)],
    "batch/v1": [_res("jobs", "Job", True)],
    "networking.k8s.io/v1": [_res("ingresses", "Ingress", True), _res("networkpolicies", "NetworkPolicy", True)],
    "autoscaling/v2": [_res("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "rbac.authorization.k8s.io/v1": [_res("clusterrolebindings", "ClusterRoleBinding", False)],
    "apiextensions.k8s.io/v1": [_res("customresourcedefinitions", "CustomResourceDefinition", False)],
    # k3s serves these from boot: its helm-controller is built in.
    "helm.cattle.io/v1": [_res("helmcharts", "HelmChart", True),
                          _res("helmchartconfigs", "HelmChartConfig", True)],
}


@dataclass
class Chart:
    """What installing one chart makes appear (release name = the HelmChart's name)."""

    crds: list[tuple[str, str, str, str]] = field(default_factory=list)  # (crd name, apiVersion, plural, kind)
    deployments: list[str] = field(default_factory=list)  # names, in the HelmChart's targetNamespace
    delay: int = 2
    fail: bool = False


def _plural(kind: str) -> str:
    """The plural the CRDs use: Prometheus -> prometheuses, Community -> communities."""
    k = kind.lower()
    return k + "es" if k.endswith("s") else k[:-1] + "ies" if k.endswith("y") else k + "s"


def _crds(group: str, version: str, *kinds: str) -> list[tuple[str, str, str, str]]:
    return [(f"{_plural(k)}.{group}", f"{group}/{version}", _plural(k), k) for k in kinds]


# From each chart's templates at the catalog's pinned version (crds/ and the Deployment names its
# fullname helpers produce for a release named like the HelmChart). Kept apart from addons/ on
# purpose: the catalog's wait_for lists are checked against these, not copied into them.
CHART_FACTS: dict[str, Chart] = {
    # metallb 0.15.3: charts/metallb/charts/crds/templates/crds.yaml; templates/controller.yaml
    # names its Deployment "<fullname>-controller".
    "metallb": Chart(crds=_crds("metallb.io", "v1beta1", "IPAddressPool", "L2Advertisement", "BGPAdvertisement",
                                "BFDProfile", "Community", "ServiceL2Status") + _crds("metallb.io", "v1beta2", "BGPPeer"),
                     deployments=["metallb-controller"]),
    # kube-prometheus-stack 79.5.0: charts/crds (prometheus-operator's CRDs); the operator is
    # "<fullname>-operator", Grafana and kube-state-metrics come from subcharts ("<release>-<name>").
    "kube-prometheus-stack": Chart(
        crds=_crds("monitoring.coreos.com", "v1", "Prometheus", "ServiceMonitor", "PodMonitor", "PrometheusRule",
                   "Alertmanager", "Probe", "ThanosRuler")
        + _crds("monitoring.coreos.com", "v1alpha1", "AlertmanagerConfig", "PrometheusAgent", "ScrapeConfig"),
        deployments=["kube-prometheus-stack-operator", "kube-prometheus-stack-grafana",
                     "kube-prometheus-stack-kube-state-metrics"]),
    # longhorn 1.11.3: templates/crds.yaml; deployment-driver.yaml and deployment-ui.yaml.
    "longhorn": Chart(crds=_crds("longhorn.io", "v1beta2", "Volume", "Node", "Engine", "Replica", "Setting",
                                 "EngineImage", "InstanceManager", "Backup", "BackupTarget"),
                      deployments=["longhorn-driver-deployer", "longhorn-ui"]),
    # kubernetes-dashboard 7.14.0: templates/deployments/{api,auth,web,metrics-scraper}.yaml are
    # "<fullname>-<part>"; the kong subchart's proxy is "<release>-kong".
    "kubernetes-dashboard": Chart(deployments=[
        "kubernetes-dashboard-api", "kubernetes-dashboard-auth", "kubernetes-dashboard-web",
        "kubernetes-dashboard-metrics-scraper", "kubernetes-dashboard-kong"]),
    # robusta kubewatch 3.5.0: templates/deployment.yaml, common.names.fullname (= release name).
    "kubewatch": Chart(deployments=["kubewatch"]),
    # k3s's bundled traefik chart: templates/deployment.yaml names it after the release.
    "traefik": Chart(deployments=["traefik"], delay=1),
    # k3s's bundled traefik-crd chart (installed before traefik): Traefik's CRDs, group traefik.io.
    "traefik-crd": Chart(crds=_crds("traefik.io", "v1alpha1", "IngressRoute", "IngressRouteTCP", "IngressRouteUDP",
                                    "Middleware", "MiddlewareTCP", "ServersTransport", "ServersTransportTCP",
                                    "TLSOption", "TLSStore", "TraefikService")),
}
# k3s's own /var/lib/rancher/k3s/server/manifests/traefik.yaml (its values, abridged).
K3S_TRAEFIK_VALUES = "deployment:\n  podAnnotations:\n    prometheus.io/port: \"8082\"\n"


def helm_controller_hash(content: dict, secret: dict) -> str:
    """hashObjects in helm-controller's chart.go: sha256 over the `data` of the content ConfigMap
    then the values Secret, each key then value in key order (Secret values base64-encoded)."""
    h = hashlib.sha256()
    for obj in (content, secret):
        data = obj.get("data") or {}
        for key in sorted(data):
            h.update(key.encode() + data[key].encode())
    return "SHA256=" + h.hexdigest().upper()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    status: int = 0


@dataclass
class Fault:
    match: Callable[[str, str], bool]
    count: int
    status: int | None  # None: drop the connection without answering


class KubeApiStandIn:
    def __init__(self):
        self.lock = threading.RLock()
        self.served = {gv: list(rs) for gv, rs in BUILTIN.items()}
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.charts: dict[str, Chart] = copy.deepcopy(CHART_FACTS)
        # False: a helm-controller that never reacts to HelmChartConfig changes (a broken one).
        self.react_to_configs = True
        self.node_ready_after: dict[str, int] = {}
        self._pending: list[tuple[int, Callable[[], None]]] = []
        self._ticks = 0
        for ns in ("default", "kube-system"):
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.server = _Server(("127.0.0.1", 0), _handler(self))

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> KubeApiStandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in", "user": {"token": TOKEN}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
        }))
        return path

    # ---- scenario set-up ---------------------------------------------------------------

    def add_node(self, name: str, ready_after: int = 0) -> None:
        self.node_ready_after[name] = ready_after
        self.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                  "status": {"conditions": [{"type": "Ready", "status": "False"}]}})

    def fail_next(self, count: int, status: int | None = 503,
                  match: Callable[[str, str], bool] = lambda method, path: True) -> None:
        self.faults.append(Fault(match, count, status))

    # ---- object store ------------------------------------------------------------------

    def key(self, api_version: str, kind: str, name: str, namespace: str = "") -> tuple:
        return (api_version, kind, namespace, name)

    def put(self, obj: dict) -> None:
        meta = obj["metadata"]
        self.objects[self.key(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace", ""))] = obj

    def find(self, api_version: str, kind: str, name: str, namespace: str = "") -> dict | None:
        return self.objects.get(self.key(api_version, kind, name, namespace))

    def applies(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    def applied_names(self) -> list[str]:
        return [f"{r.body['kind']}/{r.body['metadata']['name']}" for r in self.applies() if r.status < 300]

    # ---- simulated controllers ---------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        due = [a for t, a in self._pending if t <= self._ticks]
        self._pending = [(t, a) for t, a in self._pending if t > self._ticks]
        for action in due:
            action()

    def later(self, delay: int, action: Callable[[], None]) -> None:
        self._pending.append((self._ticks + delay, action))

    def on_applied(self, obj: dict) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "HelmChart" or (kind == "HelmChartConfig" and self.react_to_configs):
            delay = self.charts.get(meta["name"], Chart()).delay
            self.later(delay, lambda: self._helm_controller(meta["namespace"], meta["name"]))
        elif kind == "Deployment":
            self.later(1, lambda: self._make_available(meta["namespace"], meta["name"]))

    def k3s_boot(self) -> None:
        """What a fresh k3s server already has: its own traefik-crd and traefik HelmCharts, installed."""
        self.put({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
                  "metadata": {"name": "traefik-crd", "namespace": "kube-system"},
                  "spec": {"chart": "https://%{KUBERNETES_API}%/static/charts/traefik-crd.tgz",
                           "targetNamespace": "kube-system"}})
        self._helm_controller("kube-system", "traefik-crd", settle=True)
        self.put({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
                  "metadata": {"name": "traefik", "namespace": "kube-system"},
                  "spec": {"chart": "https://%{KUBERNETES_API}%/static/charts/traefik.tgz",
                           "targetNamespace": "kube-system", "valuesContent": K3S_TRAEFIK_VALUES}})
        self._helm_controller("kube-system", "traefik", settle=True)

    def _helm_controller(self, namespace: str, name: str, settle: bool = False) -> None:
        """One pass of helm-controller's OnChange for HelmChart namespace/name."""
        hc = self.find("helm.cattle.io/v1", "HelmChart", name, namespace)
        if hc is None:
            return
        config = self.find("helm.cattle.io/v1", "HelmChartConfig", name, namespace)
        values = {}
        if hc.get("spec", {}).get("valuesContent"):
            values["HelmChartValuesContent"] = hc["spec"]["valuesContent"]
        if config and config.get("spec", {}).get("valuesContent"):
            values["HelmChartConfigValuesContent"] = config["spec"]["valuesContent"]
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "helmcharts.helm.cattle.io/values",
                  "metadata": {"name": f"chart-values-{name}", "namespace": namespace},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}
        content = {"apiVersion": "v1", "kind": "ConfigMap", "data": {},
                   "metadata": {"name": f"chart-content-{name}", "namespace": namespace}}
        if hc.get("spec", {}).get("chartContent"):
            content["data"][f"{name}.tgz.base64"] = hc["spec"]["chartContent"]
        self.put(secret)
        self.put(content)
        digest = helm_controller_hash(content, secret)
        job_name = f"helm-install-{name}"
        job = self.find("batch/v1", "Job", job_name, namespace)
        hc.setdefault("status", {})["jobName"] = job_name
        current = job and job["spec"]["template"]["metadata"]["annotations"].get("helmcharts.helm.cattle.io/configHash")
        chart = self.charts.get(name, Chart())
        target = hc.get("spec", {}).get("targetNamespace") or namespace
        if current == digest:
            # The template did not change: the Job stays (generic.ErrSkip). One that has not
            # succeeded keeps retrying its pod (helm-controller sets backoffLimit 1000).
            if not job["status"].get("succeeded"):
                self.later(chart.delay, lambda: self._install(namespace, job_name, target, chart))
            return
        # A changed template: the old Job is deleted and a new one made (its pod runs the install).
        self.put({"apiVersion": "batch/v1", "kind": "Job", "status": {},
                  "metadata": {"name": job_name, "namespace": namespace, "uid": f"{job_name}-{self._ticks}"},
                  "spec": {"template": {"metadata": {"annotations": {
                      "helmcharts.helm.cattle.io/configHash": digest}}}}})
        if settle:
            self._install(namespace, job_name, target, chart)
        else:
            self.later(chart.delay, lambda: self._install(namespace, job_name, target, chart))

    def _install(self, namespace: str, job_name: str, target: str, chart: Chart) -> None:
        """The install Job's pod ran helm: it failed, or the chart's objects now exist."""
        job = self.find("batch/v1", "Job", job_name, namespace)
        if job is None:
            return
        failed = job["status"].get("failed", 0)
        job["status"] = {"failed": failed + 1} if chart.fail else {"succeeded": 1, **({"failed": failed} if failed else {})}
        if chart.fail:
            return
        for crd_name, api_version, plural, kind in chart.crds:
            self.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                      "metadata": {"name": crd_name},
                      "status": {"conditions": [{"type": "Established", "status": "True"}]}})
            if not any(r["name"] == plural for r in self.served.get(api_version, [])):
                self.served.setdefault(api_version, []).append(_res(plural, kind, True))
        for dep in chart.deployments:
            self.put({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": dep, "namespace": target, "generation": 1}, "spec": {"replicas": 1},
                      "status": {"observedGeneration": 1, "availableReplicas": 1}})

    def _make_available(self, namespace: str, name: str) -> None:
        dep = self.find("apps/v1", "Deployment", name, namespace)
        if dep:
            dep["status"] = {"observedGeneration": dep["metadata"].get("generation", 1),
                             "availableReplicas": dep.get("spec", {}).get("replicas", 1)}

    def node_seen(self, name: str) -> None:
        left = self.node_ready_after.get(name)
        if left is None or self.find("v1", "Node", name) is None:
            return
        if left <= 0:
            self.find("v1", "Node", name)["status"]["conditions"][0]["status"] = "True"
        self.node_ready_after[name] = left - 1


class _Server(ThreadingHTTPServer):
    # Clients keep connections alive in their pools: closing must not wait for them.
    daemon_threads = True
    block_on_close = False


def _parse_path(path: str) -> tuple[str, str | None, str, str | None] | None:
    """(apiVersion, namespace, plural, name) of an object or collection path, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        return None
    return gv, namespace, rest[0], rest[1] if len(rest) == 2 else None


def _handler(api: KubeApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type")
            rec = Recorded(method, url.path, parse_qs(url.query), ctype,
                           yaml.safe_load(raw) if raw else None)
            with api.lock:
                api.requests.append(rec)
                api.tick()
                fault = next((f for f in api.faults if f.count > 0 and f.match(method, url.path)), None)
                if fault:
                    fault.count -= 1
                    if fault.status is None:
                        self.close_connection = True
                        return  # no answer at all: the client sees the connection drop
                    rec.status, answer = fault.status, _status(fault.status, "injected fault")
                elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    rec.status, answer = 401, _status(401, "Unauthorized")
                else:
                    rec.status, answer = self._route(method, url.path, rec)
            data = json.dumps(answer).encode()
            self.send_response(rec.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str, path: str, rec: Recorded) -> tuple[int, dict]:
            if method == "POST":
                # Only TokenRequest (serviceaccounts/NAME/token); the real one is proven against
                # kube-apiserver in tests/apiserver. 404 while the account does not exist.
                head, _, sub = path.rpartition("/")
                parsed = _parse_path(head)
                if sub != "token" or not parsed or parsed[2] != "serviceaccounts":
                    return 405, _status(405, f"stand-in takes POST only for TokenRequest, not {path}")
                if not api.find("v1", "ServiceAccount", parsed[3], parsed[1] or ""):
                    return 404, _status(404, f'serviceaccounts "{parsed[3]}" not found')
                seconds = (rec.body or {}).get("spec", {}).get("expirationSeconds", 3600)
                return 201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                             "status": {"token": f"stand-in-sa-token-{seconds}",
                                        "expirationTimestamp": "2099-01-01T00:00:00Z"}}
            if method == "GET" and (path == "/api/v1" or path.count("/") == 3 and path.startswith("/apis/")):
                gv = "v1" if path == "/api/v1" else path[len("/apis/"):]
                if gv not in api.served:
                    return 404, _status(404, f"the server could not find {path}")
                return 200, {"kind": "APIResourceList", "groupVersion": gv, "resources": api.served[gv]}
            parsed = _parse_path(path)
            res = parsed and next((r for r in api.served.get(parsed[0], []) if r["name"] == parsed[2]), None)
            if not res or parsed[3] is None:
                return 404, _status(404, f"no such resource: {path}")
            gv, ns, _, name = parsed
            if method == "GET":
                return self._get(gv, res["kind"], name, ns or "")
            if method == "DELETE":
                obj = api.objects.pop(api.key(gv, res["kind"], name, ns or ""), None)
                return (200, obj) if obj else (404, _status(404, f"{name} not found"))
            return self._apply(gv, res, name, ns, rec)

        def _get(self, gv: str, kind: str, name: str, ns: str) -> tuple[int, dict]:
            if kind == "Node":
                api.node_seen(name)
            obj = api.find(gv, kind, name, ns)
            return (200, obj) if obj else (404, _status(404, f'{kind.lower()}s "{name}" not found'))

        def _apply(self, gv: str, res: dict, name: str, ns: str | None, rec: Recorded) -> tuple[int, dict]:
            body, q = rec.body, rec.query
            if rec.content_type != "application/apply-patch+yaml":
                return 415, _status(415, f"stand-in only takes server-side apply, got {rec.content_type}")
            if not q.get("fieldManager"):
                return 400, _status(400, "fieldManager is required for apply patch")
            if not isinstance(body, dict) or body.get("kind") != res["kind"] or body.get("apiVersion") != gv \
                    or body.get("metadata", {}).get("name") != name:
                return 400, _status(400, "body does not match the path (kind, apiVersion or name)")
            if ns and not api.find("v1", "Namespace", ns):
                return 404, _status(404, f'namespaces "{ns}" not found')
            old = api.find(gv, res["kind"], name, ns or "")
            obj = _merge(old or {}, body)
            meta = obj["metadata"]
            meta["generation"] = (old or {}).get("metadata", {}).get("generation", 0) + 1
            meta["managedFields"] = [{"manager": q["fieldManager"][0], "operation": "Apply"}]
            if ns:
                meta["namespace"] = ns
            api.put(obj)
            api.on_applied(obj)
            return (200 if old else 201), obj

    return Handler


def _merge(old: dict, new: dict) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(old[k], v) if isinstance(v, dict) and isinstance(old.get(k), dict) else v
    return out


def _status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
