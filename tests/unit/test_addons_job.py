"""The post-join add-on job against a local Kubernetes API stand-in on 127.0.0.1.

The stand-in (tests/fakes/kube_api.py) is not Kubernetes: it answers the job's calls and
plays the controllers (helm-controller passes, what each chart makes, Deployments, node
readiness) step by step, with its own table of what each pinned chart makes. It serves where a
real control plane cannot (charts finishing their installs, nodes turning Ready); the job's
applies, CRD waits, install Jobs and re-runs meet a real kube-apiserver and helm-controller in
tests/apiserver (`make test-apiserver`). The job talks to the stand-in through the real
`kubernetes` client (kubeconfig loading, bearer token, urllib3 pool).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.kube_api import CHART_FACTS, KubeApiStandIn  # noqa: E402

from ceil.addons.job import __main__ as job_main  # noqa: E402
from ceil.addons.job.apply import Applier  # noqa: E402
from ceil.addons.job.kube import ApiError, Backoff, KubeApi, KubeconfigTransport  # noqa: E402
from ceil.addons.job.status import StatusFile  # noqa: E402
from ceil.addons.render import build_plan  # noqa: E402
from ceil.config import parse_cluster  # noqa: E402

NODES = ["ceil-one", "ceil-two", "ceil-three", "ceil-four"]
PASSWORD = b"s3cret-grafana-pw"


def cluster(extra_nodes: str = ""):
    return parse_cluster(f"""
ssh: {{authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"]}}
nodes:
  - {{name: one, role: server}}
  - {{name: two{extra_nodes}}}
  - {{name: three}}
  - {{name: four}}
""")


class FakeTime:
    """Clock and sleep for the job: sleeping advances the clock instantly and is recorded."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def plan():
    return build_plan(cluster())


@pytest.fixture
def stand_in(plan):
    with KubeApiStandIn() as api:
        api.k3s_boot()
        for n in NODES:
            api.add_node(n)
        yield api


UI_HTPASSWD = b"admin:$2a$05$abcdefghijklmnopqrstuu5Vq3Dk6fTtF4VJkbv2g9U7zQ1Xx7t7Ka\n"


def server_secrets(folder: Path) -> None:
    """What ceil-secrets leaves on the server for the job: the add-ons' secret files."""
    folder.mkdir(exist_ok=True)
    (folder / "grafana-admin-password").write_bytes(PASSWORD + b"\n")
    (folder / "ui-htpasswd").write_bytes(UI_HTPASSWD)
    (folder / "kubewatch-values").write_bytes(b'webhook:\n  url: "http://10.42.0.1:8080/kubewatch?token=t0k"\n')


def make_applier(api: KubeApiStandIn, tmp_path: Path, t: FakeTime, logs: list[str] | None = None):
    logs = [] if logs is None else logs
    transport = KubeconfigTransport(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    kube = KubeApi(transport, Backoff(attempts=5, sleep=t.sleep), log=logs.append)
    server_secrets(tmp_path / "secrets")
    return Applier(kube, secret_reader=lambda n: (tmp_path / "secrets" / n).read_bytes(),
                   status=StatusFile(tmp_path / "addons.json"), poll_seconds=5,
                   clock=t.clock, sleep=t.sleep, log=logs.append)


def first_index(api: KubeApiStandIn, pred) -> int:
    return next(i for i, r in enumerate(api.requests) if pred(r))


def patch_of(kind: str, name: str):
    return lambda r: r.method == "PATCH" and r.body["kind"] == kind and r.body["metadata"]["name"] == name


def test_whole_plan_applies_in_dependency_order_with_server_side_apply(stand_in, plan, tmp_path):
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.ok, report.messages
    assert not report.missing_nodes
    for r in stand_in.applies():
        assert r.content_type == "application/apply-patch+yaml"
        assert r.query["fieldManager"] == ["ceil"] and r.query["force"] == ["true"]
    idx = {n: first_index(stand_in, patch_of(*n.split("/"))) for n in (
        "HelmChart/metallb", "IPAddressPool/ingress", "HelmChartConfig/traefik",
        "HelmChart/kube-prometheus-stack", "HelmChart/kubernetes-dashboard", "Deployment/httpd")}
    crd_ready = first_index(stand_in, lambda r: r.method == "GET" and r.status == 200
                            and r.path.endswith("/customresourcedefinitions/ipaddresspools.metallb.io"))
    job_done = first_index(stand_in, lambda r: r.status == 200 and r.path.endswith("/jobs/helm-install-metallb"))
    assert idx["HelmChart/metallb"] < crd_ready < idx["IPAddressPool/ingress"]
    assert job_done < idx["IPAddressPool/ingress"] < idx["HelmChartConfig/traefik"]
    assert idx["HelmChartConfig/traefik"] < min(idx["HelmChart/kube-prometheus-stack"],
                                                idx["HelmChart/kubernetes-dashboard"], idx["Deployment/httpd"])
    status = json.loads((tmp_path / "addons.json").read_text())
    assert {n: a["state"] for n, a in status["addons"].items()} == {a["name"]: "ready" for a in plan["addons"]}
    assert status["nodes"]["ready"] == NODES and status["nodes"]["missing"] == []


def test_namespace_and_secret_come_before_the_chart_and_the_password_is_never_logged(stand_in, plan, tmp_path):
    logs: list[str] = []
    make_applier(stand_in, tmp_path, FakeTime(), logs).run(plan, node_timeout=600)
    order = stand_in.applied_names()
    assert order.index("Namespace/monitoring") < order.index("Secret/grafana-admin") \
        < order.index("HelmChart/kube-prometheus-stack")
    secret = stand_in.find("v1", "Secret", "grafana-admin", "monitoring")
    assert base64.b64decode(secret["data"]["admin-password"]) == PASSWORD
    assert base64.b64decode(secret["data"]["admin-user"]) == b"admin"
    assert not any(PASSWORD.decode() in line for line in logs)
    assert PASSWORD.decode() not in (tmp_path / "addons.json").read_text()


def test_waits_until_every_node_is_ready_before_applying(stand_in, plan, tmp_path):
    stand_in.add_node("ceil-three", ready_after=3)
    t = FakeTime()
    report = make_applier(stand_in, tmp_path, t).run(plan, node_timeout=600)
    assert report.ready_nodes == NODES
    last_node_get = max(i for i, r in enumerate(stand_in.requests) if r.path == "/api/v1/nodes/ceil-three")
    assert last_node_get < first_index(stand_in, lambda r: r.method == "PATCH")
    assert t.sleeps[:3] == [5, 5, 5]


def test_node_timeout_applies_anyway_and_reports_the_missing_nodes(stand_in, plan, tmp_path):
    del stand_in.objects[stand_in.key("v1", "Node", "ceil-four")]  # it never joined
    t = FakeTime()
    report = make_applier(stand_in, tmp_path, t).run(plan, node_timeout=60)
    assert report.missing_nodes == ["ceil-four"]
    assert report.ok
    assert 60 <= t.now
    status = json.loads((tmp_path / "addons.json").read_text())
    assert status["nodes"]["missing"] == ["ceil-four"]


def test_retries_dropped_connections_and_5xx_with_backoff(stand_in, plan, tmp_path):
    stand_in.fail_next(2, None, lambda m, p: m == "PATCH" and p.endswith("/helmcharts/metallb"))
    stand_in.fail_next(3, 503, lambda m, p: p == "/apis/metallb.io/v1beta1")
    # MetalLB's webhook answers 500 until its controller serves it.
    stand_in.fail_next(1, 500, lambda m, p: m == "PATCH" and "/ipaddresspools/" in p)
    t = FakeTime()
    report = make_applier(stand_in, tmp_path, t).run(plan, node_timeout=600)
    assert report.ok, report.messages
    assert [1.0, 2.0] == t.sleeps[:2]  # two dropped connections: 1 s, then 2 s
    assert 4.0 in t.sleeps  # the third 503 in a row waited 4 s
    patches = [r for r in stand_in.requests if r.method == "PATCH" and r.path.endswith("/helmcharts/metallb")]
    assert len(patches) == 3


def test_gives_up_after_the_retries_and_skips_dependants(stand_in, plan, tmp_path):
    stand_in.fail_next(100, 503, lambda m, p: m == "PATCH" and p.endswith("/helmcharts/metallb"))
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["metallb"] == "failed"
    assert "HTTP 503" in report.messages["metallb"]
    for dependant in ("traefik", "monitoring", "dashboard", "demo"):  # (storage does not wait for traefik)
        assert report.states[dependant] == "skipped"
    assert report.states["kubewatch"] == "ready" and report.states["storage"] == "ready"


def test_missing_crd_times_out_with_a_clear_message(stand_in, plan, tmp_path):
    stand_in.charts["metallb"].crds = []
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["metallb"] == "failed"
    assert report.messages["metallb"] == (
        "timed out waiting for CRD ipaddresspools.metallb.io established (not created yet)")
    assert not any(r.method == "PATCH" and "ipaddresspools" in r.path for r in stand_in.requests)


def test_failing_helm_job_is_reported(stand_in, plan, tmp_path):
    stand_in.charts["kube-prometheus-stack"].fail = True
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["monitoring"] == "failed"
    assert "HelmChart kube-system/kube-prometheus-stack installed" in report.messages["monitoring"]
    assert "1 failed attempt(s)" in report.messages["monitoring"]


def test_rerun_converges_without_errors_or_duplicates(stand_in, plan, tmp_path):
    stand_in.charts["kube-prometheus-stack"].fail = True  # the first boot is cut short here
    first = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert not first.ok
    objects_after_first = set(stand_in.objects)
    stand_in.charts["kube-prometheus-stack"].fail = False
    stand_in.requests.clear()
    second = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert second.ok, second.messages
    assert all(r.status < 400 for r in stand_in.requests)
    rerun = set(stand_in.applied_names())
    third_requests_start = len(stand_in.requests)
    third = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert third.ok
    assert set(stand_in.applied_names()) == rerun
    assert all(r.status == 200 for r in stand_in.requests[third_requests_start:] if r.method == "PATCH")
    assert objects_after_first <= set(stand_in.objects)


def test_storage_labels_only_nodes_that_joined(tmp_path):
    plan = build_plan(cluster(", storage_device: /dev/sda"))
    storage = next(a for a in plan["addons"] if a["name"] == "storage")
    assert [m["metadata"]["name"] for m in storage["steps"][0]["manifests"] if m["kind"] == "Node"] == ["ceil-two"]
    with KubeApiStandIn() as api:
        api.k3s_boot()
        for n in ("ceil-one", "ceil-three", "ceil-four"):
            api.add_node(n)
        report = make_applier(api, tmp_path, FakeTime()).run(plan, node_timeout=30)
        assert report.missing_nodes == ["ceil-two"]
        assert report.states["storage"] == "ready"
        assert "Node ceil-two has not joined" in report.messages["storage"]
        assert api.find("v1", "Node", "ceil-two") is None


def test_delete_removes_in_reverse_and_never_touches_nodes(stand_in, tmp_path):
    plan = build_plan(cluster(", storage_device: /dev/sda"))
    applier = make_applier(stand_in, tmp_path, FakeTime())
    applier.run(plan, node_timeout=60)
    storage = next(a for a in plan["addons"] if a["name"] == "storage")
    deleted = applier.delete_addon(storage)
    assert deleted == ["HelmChart kube-system/longhorn", "Namespace longhorn-system"]
    assert stand_in.find("v1", "Node", "ceil-two") is not None
    assert all(r.body is None or r.body.get("kind") == "DeleteOptions"
               for r in stand_in.requests if r.method == "DELETE")


def test_unreachable_api_server_is_a_transient_error(tmp_path):
    with KubeApiStandIn() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    t = FakeTime()  # the stand-in is gone: connections are refused
    kube = KubeApi(KubeconfigTransport(str(kubeconfig)), Backoff(attempts=4, sleep=t.sleep), log=lambda m: None)
    with pytest.raises(ApiError) as e:
        kube.get("v1", "Node", "ceil-one")
    assert e.value.transient and t.sleeps == [1.0, 2.0, 4.0]


def test_runner_exit_codes_and_status_file(stand_in, plan, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    server_secrets(tmp_path / "secrets")
    args = ["--plan", str(tmp_path / "plan.json"), "--status", str(tmp_path / "status.json"),
            "--kubeconfig", str(stand_in.write_kubeconfig(tmp_path / "kubeconfig")),
            "--secrets-dir", str(tmp_path / "secrets"), "--poll-seconds", "0.001", "--node-timeout", "5"]
    assert job_main.main(args) == job_main.EXIT_OK
    assert json.loads((tmp_path / "status.json").read_text())["addons"]["demo"]["state"] == "ready"
    assert job_main.main([*args, "--only", "kubewatch"]) == job_main.EXIT_OK  # a re-run converges
    kubewatch = next(a for a in plan["addons"] if a["name"] == "kubewatch")
    kubewatch["steps"][0]["wait_for"]["timeout_seconds"] = 0.2
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    stand_in.objects.pop(stand_in.key("batch/v1", "Job", "helm-install-kubewatch", "kube-system"))
    stand_in.charts["kubewatch"].fail = True
    assert job_main.main([*args, "--only", "kubewatch"]) == job_main.EXIT_RETRY
    assert "kubewatch" in capsys.readouterr().err
    (tmp_path / "plan.json").write_text("{}")
    assert job_main.main(args) == job_main.EXIT_PERMANENT


def test_a_wait_for_name_the_chart_does_not_make_fails(stand_in, plan, tmp_path):
    """The stand-in's charts come from CHART_FACTS, not from the plan: a misspelt name times out."""
    metallb = next(a for a in plan["addons"] if a["name"] == "metallb")
    metallb["steps"][0]["wait_for"]["deployments"] = ["metallb-system/metallb-controler"]
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["metallb"] == "failed"
    assert "Deployment metallb-system/metallb-controler available (not created yet)" in report.messages["metallb"]


def test_every_catalog_wait_names_what_its_chart_makes():
    """Each step that waits for a HelmChart waits only for CRDs and Deployments that chart makes."""
    plan = build_plan(cluster(", storage_device: /dev/sda"))
    for addon in plan["addons"]:
        for step in addon["steps"]:
            w = step["wait_for"]
            if not w["helmcharts"]:
                continue
            made = [CHART_FACTS[ref.split("/")[1]] for ref in w["helmcharts"]]
            crds = {c[0] for chart in made for c in chart.crds}
            deployments = {d for chart in made for d in chart.deployments}
            assert set(w["crds"]) <= crds, addon["name"]
            assert {d.split("/")[1] for d in w["deployments"]} <= deployments, addon["name"]


def test_the_traefik_wait_sees_the_reinstall_its_own_config_caused(stand_in, plan, tmp_path):
    """k3s installed Traefik at boot; applying our HelmChartConfig makes helm-controller replace
    the install Job. The wait must see the new Job, not the old one that already succeeded."""
    boot_job = stand_in.find("batch/v1", "Job", "helm-install-traefik", "kube-system")
    assert boot_job["status"] == {"succeeded": 1}
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["traefik"] == "ready", report.messages
    job = stand_in.find("batch/v1", "Job", "helm-install-traefik", "kube-system")
    assert job["metadata"]["uid"] != boot_job["metadata"]["uid"]


def test_a_helm_controller_that_ignores_the_config_is_not_taken_for_ready(stand_in, plan, tmp_path):
    stand_in.react_to_configs = False
    traefik = next(a for a in plan["addons"] if a["name"] == "traefik")
    traefik["steps"][0]["wait_for"]["timeout_seconds"] = 60
    report = make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    assert report.states["traefik"] == "failed"
    assert "has not taken the values just applied yet" in report.messages["traefik"]


def test_every_applied_object_but_nodes_carries_the_managed_by_label(stand_in, plan, tmp_path):
    """An apply must own a field, or the next apply bumps the object (tests/apiserver found it)."""
    make_applier(stand_in, tmp_path, FakeTime()).run(plan, node_timeout=600)
    for r in stand_in.applies():
        labels = r.body["metadata"].get("labels") or {}
        if r.body["kind"] == "Node":
            assert "app.kubernetes.io/managed-by" not in labels
        else:
            assert labels["app.kubernetes.io/managed-by"] == "ceil", r.body["metadata"]["name"]
