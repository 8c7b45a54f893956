"""A stand-in for the Kubernetes API server, on 127.0.0.1, for testing the add-on job.

It is NOT Kubernetes: it speaks just enough of the API's HTTP surface for the job's calls
(discovery, GET/DELETE of objects, server-side apply PATCHes) and plays the controllers the
job waits for, in a deterministic way counted in requests rather than seconds:

- nodes become Ready after a given number of GETs (or never register);
- applying a HelmChart schedules its "install": after `delay` more requests the HelmChart gets
  `status.jobName`, the Job succeeds (or fails), and the chart's CRDs (Established, and their
  API group now served) and Deployments (available) appear;
- applied Deployments become available after one more request.

Every request is recorded (method, path, query, content type, parsed body) and faults can be
injected: HTTP errors or dropped connections for the next N matching requests.
"""

from __future__ import annotations

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
    "networking.k8s.io/v1": [_res("ingresses", "Ingress", True)],
    "autoscaling/v2": [_res("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "rbac.authorization.k8s.io/v1": [_res("clusterrolebindings", "ClusterRoleBinding", False)],
    "apiextensions.k8s.io/v1": [_res("customresourcedefinitions", "CustomResourceDefinition", False)],
    # k3s serves these from boot: its helm-controller is built in.
    "helm.cattle.io/v1": [_res("helmcharts", "HelmChart", True),
                          _res("helmchartconfigs", "HelmChartConfig", True)],
}


@dataclass
class Chart:
    """What installing one HelmChart makes appear."""

    crds: list[tuple[str, str, str, str]] = field(default_factory=list)  # (crd name, apiVersion, plural, kind)
    deployments: list[str] = field(default_factory=list)  # namespace/name
    delay: int = 2
    fail: bool = False


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
        self.charts: dict[str, Chart] = {}
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
        if kind == "HelmChart":
            chart = self.charts.get(meta["name"], Chart())
            self.later(chart.delay, lambda: self._install(meta["namespace"], meta["name"], chart))
        elif kind == "Deployment":
            self.later(1, lambda: self._make_available(meta["namespace"], meta["name"]))

    def _install(self, namespace: str, name: str, chart: Chart) -> None:
        job = f"helm-install-{name}"
        hc = self.find("helm.cattle.io/v1", "HelmChart", name, namespace)
        hc.setdefault("status", {})["jobName"] = job
        status = {"failed": 1} if chart.fail else {"succeeded": 1}
        self.put({"apiVersion": "batch/v1", "kind": "Job", "status": status,
                  "metadata": {"name": job, "namespace": namespace}})
        if chart.fail:
            return
        for crd_name, api_version, plural, kind in chart.crds:
            self.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                      "metadata": {"name": crd_name},
                      "status": {"conditions": [{"type": "Established", "status": "True"}]}})
            self.served.setdefault(api_version, []).append(_res(plural, kind, True))
        for ref in chart.deployments:
            ns, dep = ref.split("/")
            self.put({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": dep, "namespace": ns, "generation": 1}, "spec": {"replicas": 1},
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
