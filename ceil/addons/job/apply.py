"""Apply a rendered add-on plan to the cluster: nodes first, then add-ons in dependency order.

Each add-on's steps are server-side applied in order; after each step the job waits for what
the step names (CRDs established, HelmChart install jobs complete, Deployments available)
before the next step or any dependant starts. Everything is idempotent: a re-run, or a re-run
after a power cut halfway, applies the same objects again and converges.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import charts
from .kube import ApiError, KubeApi, NotServed
from .status import StatusFile

PROTECTED_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
# k3s's helm-controller (pkg/controllers/chart/chart.go, v0.17): the chart's values go to the
# Secret chart-values-<chart> under these keys, its content to the ConfigMap chart-content-<chart>,
# and the install Job's pod template carries a hash of both: a Job whose hash differs was made
# from other values and is about to be replaced.
VALUES_KEYS = {"HelmChart": "HelmChartValuesContent", "HelmChartConfig": "HelmChartConfigValuesContent"}
CONFIG_HASH = "helmcharts.helm.cattle.io/configHash"
# Every object the job applies carries this label, so that the apply owns at least one field: a
# server-side apply that sets no field (a bare Namespace) records no managedFields, and the next
# apply then hands the object's fields to "before-first-apply" and bumps its resourceVersion
# (seen on kube-apiserver 1.36 in tests/apiserver). It also lets `kubectl get -l` find them.
MANAGED_BY = ("app.kubernetes.io/managed-by", "ceil")


class StepFailed(Exception):
    """An add-on could not be applied or did not become ready in time."""


@dataclass
class Report:
    ready_nodes: list[str] = field(default_factory=list)
    missing_nodes: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s == "ready" for s in self.states.values())


class Applier:
    def __init__(self, api: KubeApi, *, secret_reader: Callable[[str], bytes] | None = None,
                 status: StatusFile | None = None, poll_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] = print):
        self.api = api
        self.secret_reader = secret_reader
        self.status = status or StatusFile(None)
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.sleep = sleep
        self.log = log

    # ---- the whole plan ----------------------------------------------------------------

    def run(self, plan: dict[str, Any], node_timeout: float) -> Report:
        report = Report()
        report.ready_nodes, report.missing_nodes = self.wait_for_nodes(plan["nodes"], node_timeout)
        for addon in plan["addons"]:
            name = addon["name"]
            broken = [d for d in addon["depends_on"] if report.states.get(d, "ready") != "ready"]
            if broken:
                msg = f"not applied: it needs {', '.join(broken)}, which did not become ready"
                self._record(report, name, "skipped", msg)
                continue
            self.status.addon(name, "applying")
            try:
                notes = self.apply_addon(addon)
                self._record(report, name, "ready", "; ".join(notes))
            except (StepFailed, ApiError) as e:
                self._record(report, name, "failed", str(e))
        return report

    def _record(self, report: Report, name: str, state: str, message: str) -> None:
        report.states[name], report.messages[name] = state, message
        self.status.addon(name, state, message)
        self.log(f"{name}: {state}{': ' + message if message else ''}")

    # ---- nodes -------------------------------------------------------------------------

    def wait_for_nodes(self, names: list[str], timeout: float) -> tuple[list[str], list[str]]:
        """(ready, missing): waits until every named node is Ready or `timeout` has passed."""
        deadline = self.clock() + timeout
        while True:
            ready = [n for n in names if self._node_ready(n)]
            missing = [n for n in names if n not in ready]
            if not missing or self.clock() >= deadline:
                break
            self.log(f"waiting for nodes to be Ready: {', '.join(missing)}")
            self.sleep(self.poll_seconds)
        if missing:
            self.log(f"nodes still not Ready after {timeout:g}s: {', '.join(missing)}; applying anyway")
        self.status.nodes(ready, missing)
        return ready, missing

    def _node_ready(self, name: str) -> bool:
        node = self.api.get("v1", "Node", name)
        conditions = _dig(node, "status", "conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # ---- one add-on --------------------------------------------------------------------

    def apply_addon(self, addon: dict[str, Any]) -> list[str]:
        """Apply every step and wait for it; returns notes worth reporting (skipped nodes)."""
        notes: list[str] = []
        if not addon["steps"]:
            return ["nothing to apply"]
        for step in addon["steps"]:
            # Pinned charts fetched and checked before anything of the step is applied, and
            # before its wait starts (a big repository index takes a while on a Pi).
            try:
                rest = [charts.pinned_chart(m) for m in step["manifests"] if m["kind"] != "Namespace"]
            except charts.ChartRefused as e:
                raise StepFailed(str(e)) from None
            deadline = self.clock() + step["wait_for"].get("timeout_seconds", 900)
            # Namespaces, then the step's Secrets (charts may name them), then the rest.
            namespaces = [m for m in step["manifests"] if m["kind"] == "Namespace"]
            secrets = [self._secret_manifest(s) for s in step.get("secrets", [])]
            for obj in namespaces + secrets + rest:
                note = self.apply_object(obj, deadline)
                if note:
                    notes.append(note)
            self.wait(step["wait_for"], deadline, step["manifests"])
        return notes

    def apply_object(self, obj: dict[str, Any], deadline: float) -> str | None:
        what = f"{obj['kind']} {_ref(obj)}"
        if obj["kind"] == "Node":
            # Partial Node objects carry labels only: never create a node that has not joined.
            if self.api.get("v1", "Node", obj["metadata"]["name"]) is None:
                return f"{what} has not joined: labels not applied"
            self._until(deadline, what, lambda: self._try_apply(obj))
        else:
            self._until(deadline, what, lambda: self._try_apply(labelled(obj)))
        self.log(f"applied {what}")
        return None

    def _try_apply(self, obj: dict[str, Any]) -> tuple[bool, str]:
        try:
            self.api.apply(obj)
            return True, ""
        except NotServed as e:  # its CRD comes with a chart that is still installing
            return False, str(e)

    def _secret_manifest(self, spec: dict[str, Any]) -> dict[str, Any]:
        data = {}
        for key, source in spec["data"].items():
            if "value" in source:
                raw = source["value"].encode()
            else:
                raw = self._read_secret(source["secret"])
            data[key] = base64.b64encode(raw).decode()
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                "metadata": {"name": spec["name"], "namespace": spec["namespace"]}}

    def _read_secret(self, name: str) -> bytes:
        if self.secret_reader is None:
            raise StepFailed(f"secret {name!r} is needed but no secrets directory was given")
        try:
            return self.secret_reader(name).strip()
        except OSError as e:
            raise StepFailed(f"secret {name!r} cannot be read: {e}") from None

    # ---- waiting -----------------------------------------------------------------------

    def wait(self, wait_for: dict[str, Any], deadline: float, applied: list[dict[str, Any]] = ()) -> None:
        # The install job first: when it fails, its story beats "CRD not created yet".
        for ref in wait_for.get("helmcharts", []):
            values = applied_values(ref, applied)
            self._until(deadline, f"HelmChart {ref} installed", lambda r=ref, v=values: self._helmchart_done(r, v))
        for crd in wait_for.get("crds", []):
            self._until(deadline, f"CRD {crd} established", lambda c=crd: self._crd_established(c))
        for ref in wait_for.get("deployments", []):
            self._until(deadline, f"Deployment {ref} available", lambda r=ref: self._deployment_ready(r))

    def _until(self, deadline: float, what: str, check: Callable[[], tuple[bool, str]]) -> None:
        while True:
            done, detail = check()
            if done:
                return
            if self.clock() >= deadline:
                raise StepFailed(f"timed out waiting for {what}" + (f" ({detail})" if detail else ""))
            self.sleep(self.poll_seconds)

    def _crd_established(self, name: str) -> tuple[bool, str]:
        crd = self.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        if crd is None:
            return False, "not created yet"
        return _condition(crd, "Established"), "not established yet"

    def _helmchart_done(self, ref: str, values: dict[str, str] | None = None) -> tuple[bool, str]:
        """Installed with the values this run applied: helm-controller has taken them (its values
        Secret holds them), the install Job was made from them (its hash), and it succeeded. A
        Job that succeeded before this run's HelmChartConfig was applied does not count."""
        namespace, name = ref.split("/", 1)
        chart = self.api.get("helm.cattle.io/v1", "HelmChart", name, namespace)
        if chart is None:
            return False, "HelmChart not found"
        for c in _dig(chart, "status", "conditions") or []:
            if c.get("type") == "Failed" and c.get("status") == "True":
                raise StepFailed(f"HelmChart {ref} failed: {c.get('message') or c.get('reason')}")
        job_name = _dig(chart, "status", "jobName")
        if not job_name:
            return False, "no install job yet"
        secret = self.api.get("v1", "Secret", f"chart-values-{name}", namespace)
        content = self.api.get("v1", "ConfigMap", f"chart-content-{name}", namespace)
        if secret is None or content is None:
            return False, "helm-controller has not written the chart's values yet"
        held = secret.get("data") or {}
        for key, want in (values or {}).items():
            if base64.b64decode(held.get(key, "")).decode(errors="replace") != want:
                return False, "helm-controller has not taken the values just applied yet"
        job = self.api.get("batch/v1", "Job", job_name, namespace)
        if job is None:
            return False, f"job {job_name} not found yet"
        made_from = _dig(job, "spec", "template", "metadata", "annotations", CONFIG_HASH)
        if made_from != config_hash(content, secret):
            return False, f"job {job_name} was made from older values; waiting for its replacement"
        if (_dig(job, "status", "succeeded") or 0) >= 1:
            return True, ""
        failed = _dig(job, "status", "failed") or 0
        return False, f"job {job_name} running" + (f", {failed} failed attempt(s)" if failed else "")

    def _deployment_ready(self, ref: str) -> tuple[bool, str]:
        namespace, name = ref.split("/", 1)
        dep = self.api.get("apps/v1", "Deployment", name, namespace)
        if dep is None:
            return False, "not created yet"
        want = _dig(dep, "spec", "replicas")
        want = 1 if want is None else want
        available = _dig(dep, "status", "availableReplicas") or 0
        current = (_dig(dep, "status", "observedGeneration") or 0) >= (_dig(dep, "metadata", "generation") or 0)
        return current and available >= want, f"{available}/{want} available"

    # ---- removal (workstation) ---------------------------------------------------------

    def delete_addon(self, addon: dict[str, Any], only_ours: bool = False) -> list[str]:
        """Delete what the add-on applied, dependants' objects first; nodes are never deleted.
        `only_ours`: only objects that carry ceil's managed-by label (an add-on not enabled now:
        an object of that name may be the user's own, e.g. a HelmChartConfig for k3s's Traefik)."""
        deleted = []
        objects = [m for s in addon["steps"] for m in s["manifests"]]
        objects += [self._secret_ref(s) for st in addon["steps"] for s in st.get("secrets", [])]
        for obj in reversed(objects):
            if obj["kind"] == "Node" or (
                obj["kind"] == "Namespace" and obj["metadata"]["name"] in PROTECTED_NAMESPACES
            ):
                continue
            try:
                if only_ours and not self._ours(obj):
                    continue
                if self.api.delete(obj):
                    deleted.append(f"{obj['kind']} {_ref(obj)}")
            except NotServed:
                pass  # its CRD is gone already, and with it every object of that kind
        return deleted

    def _ours(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        live = self.api.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        return live is not None and (live["metadata"].get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]

    @staticmethod
    def _secret_ref(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": spec["name"], "namespace": spec["namespace"]}}


def labelled(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with the managed-by label added (a copy; an explicit value is kept)."""
    labels = {MANAGED_BY[0]: MANAGED_BY[1], **(obj["metadata"].get("labels") or {})}
    return {**obj, "metadata": {**obj["metadata"], "labels": labels}}


def applied_values(ref: str, manifests: list[dict[str, Any]]) -> dict[str, str]:
    """{values key: text} that HelmChart `ref`'s values Secret must hold after this step: the
    valuesContent of the HelmChart and of its HelmChartConfig, where the step applied them."""
    namespace, name = ref.split("/", 1)
    out = {}
    for m in manifests:
        meta = m.get("metadata", {})
        if m.get("kind") in VALUES_KEYS and meta.get("name") == name and meta.get("namespace") == namespace:
            content = m.get("spec", {}).get("valuesContent")
            if content:
                out[VALUES_KEYS[m["kind"]]] = content
    return out


def config_hash(content: dict[str, Any], secret: dict[str, Any]) -> str:
    """helm-controller's hashObjects over the chart's content ConfigMap and values Secret, as the
    API serves them: for each, its `data` keys in order, key then value (a Secret's values are
    base64, as they are in the controller's unstructured copy)."""
    h = hashlib.sha256()
    for obj in (content, secret):
        data = obj.get("data") or {}
        for key in sorted(data):
            h.update(key.encode())
            h.update(data[key].encode())
    return f"SHA256={h.hexdigest().upper()}"


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in _dig(obj, "status", "conditions") or [])


def _dig(obj: dict[str, Any] | None, *keys: str) -> Any:
    """obj[k1][k2]..., or None where a level is missing or null (a real API server sends
    `"conditions": null` on a CRD it has not yet looked at)."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
