"""Apply a rendered add-on plan to the cluster: nodes first, then add-ons in dependency order.

Each add-on's steps are server-side applied in order; after each step the job waits for what
the step names (CRDs established, HelmChart install jobs complete, Deployments available)
before the next step or any dependant starts. Everything is idempotent: a re-run, or a re-run
after a power cut halfway, applies the same objects again and converges.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .kube import ApiError, KubeApi, NotServed
from .status import StatusFile

PROTECTED_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


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
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # ---- one add-on --------------------------------------------------------------------

    def apply_addon(self, addon: dict[str, Any]) -> list[str]:
        """Apply every step and wait for it; returns notes worth reporting (skipped nodes)."""
        notes: list[str] = []
        if not addon["steps"]:
            return ["nothing to apply"]
        for step in addon["steps"]:
            deadline = self.clock() + step["wait_for"].get("timeout_seconds", 900)
            # Namespaces, then the step's Secrets (charts may name them), then the rest.
            namespaces = [m for m in step["manifests"] if m["kind"] == "Namespace"]
            secrets = [self._secret_manifest(s) for s in step.get("secrets", [])]
            rest = [m for m in step["manifests"] if m["kind"] != "Namespace"]
            for obj in namespaces + secrets + rest:
                note = self.apply_object(obj, deadline)
                if note:
                    notes.append(note)
            self.wait(step["wait_for"], deadline)
        return notes

    def apply_object(self, obj: dict[str, Any], deadline: float) -> str | None:
        what = f"{obj['kind']} {_ref(obj)}"
        if obj["kind"] == "Node":
            # Partial Node objects carry labels only: never create a node that has not joined.
            if self.api.get("v1", "Node", obj["metadata"]["name"]) is None:
                return f"{what} has not joined: labels not applied"
        self._until(deadline, what, lambda: self._try_apply(obj))
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

    def wait(self, wait_for: dict[str, Any], deadline: float) -> None:
        # The install job first: when it fails, its story beats "CRD not created yet".
        for ref in wait_for.get("helmcharts", []):
            self._until(deadline, f"HelmChart {ref} installed", lambda r=ref: self._helmchart_done(r))
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

    def _helmchart_done(self, ref: str) -> tuple[bool, str]:
        namespace, name = ref.split("/", 1)
        chart = self.api.get("helm.cattle.io/v1", "HelmChart", name, namespace)
        if chart is None:
            return False, "HelmChart not found"
        for c in chart.get("status", {}).get("conditions", []):
            if c.get("type") == "Failed" and c.get("status") == "True":
                raise StepFailed(f"HelmChart {ref} failed: {c.get('message') or c.get('reason')}")
        job_name = chart.get("status", {}).get("jobName")
        if not job_name:
            return False, "no install job yet"
        job = self.api.get("batch/v1", "Job", job_name, namespace)
        if job is None:
            return False, f"job {job_name} not found yet"
        if job.get("status", {}).get("succeeded", 0) >= 1:
            return True, ""
        failed = job.get("status", {}).get("failed", 0)
        return False, f"job {job_name} running" + (f", {failed} failed attempt(s)" if failed else "")

    def _deployment_ready(self, ref: str) -> tuple[bool, str]:
        namespace, name = ref.split("/", 1)
        dep = self.api.get("apps/v1", "Deployment", name, namespace)
        if dep is None:
            return False, "not created yet"
        want = dep.get("spec", {}).get("replicas", 1)
        status = dep.get("status", {})
        available = status.get("availableReplicas", 0)
        current = status.get("observedGeneration", 0) >= dep.get("metadata", {}).get("generation", 0)
        return current and available >= want, f"{available}/{want} available"

    # ---- removal (workstation) ---------------------------------------------------------

    def delete_addon(self, addon: dict[str, Any]) -> list[str]:
        """Delete what the add-on applied, dependants' objects first; nodes are never deleted."""
        deleted = []
        objects = [m for s in addon["steps"] for m in s["manifests"]]
        objects += [self._secret_ref(s) for st in addon["steps"] for s in st.get("secrets", [])]
        for obj in reversed(objects):
            if obj["kind"] == "Node" or (
                obj["kind"] == "Namespace" and obj["metadata"]["name"] in PROTECTED_NAMESPACES
            ):
                continue
            try:
                if self.api.delete(obj):
                    deleted.append(f"{obj['kind']} {_ref(obj)}")
            except NotServed:
                pass  # its CRD is gone already, and with it every object of that kind
        return deleted

    @staticmethod
    def _secret_ref(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": spec["name"], "namespace": spec["namespace"]}}


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in obj.get("status", {}).get("conditions", []))
