"""The post-join add-on job against a real control plane: kube-apiserver, kube-controller-manager
and k3s's helm-controller (lab.py). No node runs, so no pod starts: what is proven here is
everything up to the pods (apply order, CRDs established, the HelmChart's install Job, idempotent
re-runs, failure reports); the charts' installs finishing is proven only on hardware (`make verify`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ceil.addons.catalog import Catalog
from ceil.addons.render import build_plan
from ceil.config import load_cluster

from .conftest import install_crd_files, install_job, kubectl

TEST_CATALOG = Path(__file__).parent / "catalog"


@pytest.fixture(scope="module")
def plan(workstation) -> dict:
    return build_plan(load_cluster(workstation / "cluster.yaml"), Catalog(TEST_CATALOG))


def run_job(plan: dict, kubeconfig: Path, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The job as the server runs it (`python -m ceil.addons.job`), with no nodes to wait for."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "plan.json").write_text(json.dumps(plan))
    status = tmp / "status.json"
    done = subprocess.run([sys.executable, "-m", "ceil.addons.job", "--plan", str(tmp / "plan.json"),
                           "--kubeconfig", str(kubeconfig), "--status", str(status),
                           "--secrets-dir", str(tmp), "--node-timeout", "0", "--poll-seconds", "1", *extra],
                          capture_output=True, text=True, timeout=600)
    return done, json.loads(status.read_text()) if status.exists() else {}


def plan_objects(plan: dict) -> list[dict]:
    return [m for a in plan["addons"] for s in a["steps"] for m in s["manifests"]]


def resource_versions(kubeconfig: Path, objects: list[dict]) -> dict[str, str]:
    docs = yaml.safe_dump_all(objects)
    out = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "get", "-f", "-", "-o", "json"],
                         input=docs, capture_output=True, text=True, timeout=60, check=True).stdout
    found = json.loads(out)
    items = found.get("items", [found])
    return {f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for o in items}


@pytest.fixture(scope="module")
def first_run(lab, kubeconfig, plan, tmp_path_factory):
    return run_job(plan, kubeconfig, tmp_path_factory.mktemp("job-first"))


def test_the_job_applies_a_plan_to_a_server_with_no_nodes_yet(first_run, kubeconfig, plan):
    done, status = first_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert {n: a["state"] for n, a in status["addons"].items()} == {"widgets": "ready", "after": "ready"}
    # No agent has joined (none runs here): reported, and the add-ons were applied all the same.
    assert status["nodes"]["ready"] == [] and status["nodes"]["missing"] == plan["nodes"]
    crd = json.loads(kubectl(kubeconfig, "get", "crd", "widgets.fast.ceil.test", "-o", "json").stdout)
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    widget = json.loads(kubectl(kubeconfig, "get", "widgets.fast.ceil.test", "-n", "fast", "first", "-o", "json").stdout)
    assert widget["spec"] == {"cluster": "ceil", "size": 3}
    after = json.loads(kubectl(kubeconfig, "get", "configmap", "-n", "fast", "after-widgets", "-o", "json").stdout)
    assert after["data"]["nodes"] == ",".join(plan["nodes"])


def test_helm_controller_creates_the_install_job_for_the_helmchart(first_run, kubeconfig):
    """k3s's helm-controller (the version k3s embeds) turns the HelmChart into an install Job.
    The Job's pod would run the klipper-helm image on a node: neither exists here."""
    job = install_job(kubeconfig, "fast-chart")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("CHART", "").endswith("fast-chart") and env.get("TARGET_NAMESPACE") == "fast", env


def test_a_second_run_changes_nothing(first_run, lab, kubeconfig, plan, tmp_path):
    assert first_run[0].returncode == 0
    before = resource_versions(kubeconfig, plan_objects(plan))
    done, status = run_job(plan, kubeconfig, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert resource_versions(kubeconfig, plan_objects(plan)) == before


def test_a_wait_for_naming_a_crd_nobody_makes_fails_loudly(first_run, kubeconfig, plan, tmp_path):
    wrong = json.loads(json.dumps(plan))
    step = wrong["addons"][0]["steps"][0]
    step["wait_for"] = {**step["wait_for"], "crds": ["widgetz.fast.ceil.test"], "timeout_seconds": 10}
    done, status = run_job(wrong, kubeconfig, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert status["addons"]["widgets"]["state"] == "failed"
    assert "CRD widgetz.fast.ceil.test established" in status["addons"]["widgets"]["message"]
    assert status["addons"]["after"]["state"] == "skipped"


# Kinds that only exist once a chart has installed its CRDs: a server with no nodes runs no chart
# (Middleware: k3s's own traefik-crd chart). They are checked against their real CRDs below
# (test_custom_resources_are_accepted_by_their_real_crds), and the first three offline too.
CHART_KINDS = {"IPAddressPool", "L2Advertisement", "Middleware", "PodMonitor", "ScaledObject", "InterceptorRoute",
               "Canary", "IngressRoute", "GitRepository", "Kustomization"}


def test_every_catalog_manifest_is_accepted_by_the_server(lab, kubeconfig, workstation, tmp_path):
    """The real catalog for the default cluster, server-side: namespaces applied, the rest dry-run
    (admission, defaulting and schema validation by kube-apiserver itself and, for HelmChart and
    HelmChartConfig, by the CRDs the helm-controller installed). With every add-on that is off by
    default turned on (keda, custom-metrics, canary) and those that need a cluster.yaml setting
    (the Cloudflare tunnel, gitops)."""
    from ceil.config.schema import Tunnel

    from ceil.config.schema import GitOps

    cluster = load_cluster(workstation / "cluster.yaml")
    off_by_default = sorted(name for name, spec in Catalog().specs.items() if not spec.default)
    cluster = cluster.model_copy(update={
        "tunnel": Tunnel(enabled=True, token="eyJhIjoiMTIzNDU2Nzg5MCJ9" * 3),
        "gitops": GitOps(enabled=True, url="https://git.example.com/me/cluster.git"),
        "addons": cluster.addons.model_copy(update={"enable": off_by_default})})
    objects = plan_objects(build_plan(cluster))
    assert {"keda", "custom-metrics", "canary"} <= set(off_by_default)
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "HelmChart"} >= {
        "keda", "keda-add-ons-http", "prometheus-adapter", "flagger", "flux2"}
    assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == "cloudflared" for o in objects)
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    on_charts = [o for o in objects if o["kind"] in CHART_KINDS]
    rest = [o for o in objects if o not in namespaces and o not in on_charts]
    assert namespaces and rest and on_charts
    for docs, dry in ((namespaces, []), (rest, ["--dry-run=server"])):
        path = tmp_path / "objects.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        kubectl(kubeconfig, "apply", "--server-side", "--field-manager=ceil", *dry, "-f", str(path))


def test_dashboard_token_is_asked_for_and_expires(lab, kubeconfig, workstation, tmp_path):
    """Issue 18 #2: no permanent cluster-admin token sits in the cluster. `dashboard-token` asks
    the real API server for one (TokenRequest) that works as the dashboard's admin account and
    expires after the duration asked for."""
    from click.testing import CliRunner

    from ceil.addons.cli import dashboard_token_command

    cluster = load_cluster(workstation / "cluster.yaml")
    dashboard = next(a for a in build_plan(cluster, names=["dashboard"])["addons"] if a["name"] == "dashboard")
    objects = [m for s in dashboard["steps"] for m in s["manifests"]
               if m["kind"] in ("Namespace", "ServiceAccount", "ClusterRoleBinding")]
    assert not [m for s in dashboard["steps"] for m in s["manifests"] if m["kind"] == "Secret"]
    (tmp_path / "admin.yaml").write_text(yaml.safe_dump_all(objects))
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(tmp_path / "admin.yaml"))
    args = ["--config", str(workstation / "cluster.yaml"), "--kubeconfig", str(kubeconfig), "--duration", "15m"]
    result = CliRunner().invoke(dashboard_token_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[0]
    claims = json.loads(_b64url(token.split(".")[1]))
    assert claims["sub"] == "system:serviceaccount:kubernetes-dashboard:admin-user"
    assert 14 * 60 <= claims["exp"] - claims["iat"] <= 16 * 60
    # The token alone (no client certificate) is cluster-admin, as the dashboard uses it.
    only_token = tmp_path / "token-kubeconfig"
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["users"][0]["user"] = {"token": token}
    only_token.write_text(yaml.safe_dump(doc))
    assert kubectl(only_token, "auth", "can-i", "delete", "nodes").stdout.strip() == "yes"
    secrets = json.loads(kubectl(kubeconfig, "get", "secrets", "-n", "kubernetes-dashboard", "-o", "json").stdout)
    assert not [s for s in secrets["items"] if s["type"] == "kubernetes.io/service-account-token"]


def _b64url(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_the_helmchart_wait_reads_the_real_helm_controller_right(first_run, kubeconfig):
    """The job's wait checks that helm-controller took the values it applied and that the install
    Job was made from them (config hash). Against the real helm-controller: after a new
    HelmChartConfig the wait must move from "not taken yet" to the new Job (its pod cannot run
    here, so "running" is as far as it gets), which proves the Secret's keys and our hash match."""
    from ceil.addons.job.apply import Applier
    from ceil.addons.job.kube import KubeApi, KubeconfigTransport

    applier = Applier(KubeApi(KubeconfigTransport(str(kubeconfig))), log=lambda m: None)
    config = {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig",
              "metadata": {"name": "fast-chart", "namespace": "kube-system"},
              "spec": {"valuesContent": f"stamp: {time.time()}\n"}}
    values = {"HelmChartConfigValuesContent": config["spec"]["valuesContent"]}
    old_job = json.loads(kubectl(kubeconfig, "get", "job", "-n", "kube-system", "helm-install-fast-chart", "-o", "json").stdout)
    assert applier._helmchart_done("kube-system/fast-chart", values) == (
        False, "helm-controller has not taken the values just applied yet")
    applier.api.apply(config)
    deadline, detail = time.monotonic() + 120, ""
    while time.monotonic() < deadline:
        done, detail = applier._helmchart_done("kube-system/fast-chart", values)
        if detail == "job helm-install-fast-chart running":
            break
        time.sleep(1)
    assert detail == "job helm-install-fast-chart running"
    new_job = json.loads(kubectl(kubeconfig, "get", "job", "-n", "kube-system", "helm-install-fast-chart", "-o", "json").stdout)
    assert new_job["metadata"]["uid"] != old_job["metadata"]["uid"]  # replaced, as the stand-in models it


def test_custom_resources_are_accepted_by_their_real_crds(lab, kubeconfig, workstation, tmp_path):
    """Every add-on that names its CRDs (addon.yaml `crds:`): the real CRDs, from the projects' Go
    modules at the versions its charts install, go into the real API server; then what the catalog
    renders is applied against them server-side with strict field validation (dry run), so a
    misspelt or misplaced field fails here as it would on the cluster. A known-bad field is refused,
    to show the check bites."""
    from testbed import crds

    sources = crds.catalog_sources()
    assert {"canary", "keda", "gitops", "metallb", "monitoring", "traefik"} <= set(sources)
    from ceil.config.schema import GitOps

    cluster = load_cluster(workstation / "cluster.yaml")
    cluster = cluster.model_copy(update={
        "addons": cluster.addons.model_copy(update={"enable": sorted(sources)}),
        "gitops": GitOps(enabled=True, url="https://git.example.com/me/cluster.git", token="glpat-0123456789")})
    kinds = {tuple(k.split(" ", 1)) for found in sources.values() for s in found for k in s.kinds}
    install_crd_files(kubeconfig, [path for found in sources.values() for s in found for path in crds.files(s)])
    objects = [o for o in plan_objects(build_plan(cluster, names=sorted(sources)))
               if (o["apiVersion"], o["kind"]) in kinds]
    assert {(o["apiVersion"], o["kind"]) for o in objects} == kinds  # every declared kind is rendered
    for ns in sorted({o["metadata"]["namespace"] for o in objects}):
        kubectl(kubeconfig, "create", "namespace", ns, check=False)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=ceil", "--dry-run=server", "--validate=strict",
            "-f", str(path))
    bad = json.loads(json.dumps(next(o for o in objects if o["kind"] == "ScaledObject")))
    bad["spec"]["scaleTargetRef"] = {"nmae": "sleepy"}
    path.write_text(yaml.safe_dump(bad))
    refused = kubectl(kubeconfig, "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", str(path),
                      check=False)
    assert refused.returncode != 0 and "nmae" in refused.stderr, refused.stderr


def test_a_pinned_chart_reaches_helm_controller_as_the_archive_the_job_checked(first_run, kubeconfig, plan, tmp_path):
    """Issue 18 #10: with a digest pinned, the job downloads the chart (here from a repository on
    127.0.0.1), checks it and applies it as chartContent; k3s's real helm-controller takes that
    HelmChart, keeps the archive in its chart-content ConfigMap and makes the install Job with
    nothing to fetch from the repository. The chart is the one the first run applied unpinned:
    the server-side apply drops its repo, chart and version (one field manager)."""
    import base64
    import copy
    import hashlib
    import http.server
    import threading

    from ceil.addons.job.charts import CHART_PIN

    assert first_run[0].returncode == 0
    pinned = copy.deepcopy(plan)
    chart = next(m for m in plan_objects(pinned) if m["kind"] == "HelmChart")
    name, version = chart["metadata"]["name"], chart["spec"]["version"]
    archive = b"\x1f\x8b" + bytes(range(256)) * 8  # helm-controller stores it; no pod unpacks it here
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / f"{name}-{version}.tgz").write_bytes(archive)
    (repo / "index.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "entries": {chart["spec"]["chart"]: [
        {"name": chart["spec"]["chart"], "version": version, "urls": [f"{name}-{version}.tgz"]}]}}))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(repo)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chart["metadata"].setdefault("annotations", {})[CHART_PIN] = "sha256:" + hashlib.sha256(archive).hexdigest()
    chart["spec"]["repo"] = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        done, status = run_job(pinned, kubeconfig, tmp_path / "job")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    live = json.loads(kubectl(kubeconfig, "get", "helmchart", "-n", "kube-system", name, "-o", "json").stdout)
    assert not {"repo", "chart", "version"} & set(live["spec"]), live["spec"]
    content = json.loads(kubectl(kubeconfig, "get", "configmap", "-n", "kube-system", f"chart-content-{name}",
                                 "-o", "json").stdout)
    assert base64.b64decode(content["data"][f"{name}.tgz.base64"]) == archive
    deadline = time.monotonic() + 120  # helm-controller replaces the Job made from the unpinned chart
    while True:
        job = install_job(kubeconfig, name)
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        if not [v for v in env.values() if v and "charts.invalid" in v] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not [v for v in env.values() if v and ("127.0.0.1" in v or "charts.invalid" in v)], env


def test_delete_takes_what_the_job_applied_and_spares_a_users_object_of_the_same_name(first_run, kubeconfig,
                                                                                     plan):
    """`bake.py addons delete` (`make all-delete`, the first half of `make teardown`) against the
    real API server, after the job applied the plan: dependants first, every object gone (the
    HelmChart held by helm-controller's finalizer for its uninstall Job, which needs a node: marked
    for deletion); for an add-on not enabled any more (`only_ours`), an object of that name that
    the user made (no ceil label) is left alone. Last in this file: it empties what the others read."""
    from ceil.addons.job.apply import Applier
    from ceil.addons.job.kube import KubeApi, KubeconfigTransport

    assert first_run[0].returncode == 0
    applier = Applier(KubeApi(KubeconfigTransport(str(kubeconfig))), log=lambda m: None)
    after = next(a for a in plan["addons"] if a["name"] == "after")
    mine = next(m for s in after["steps"] for m in s["manifests"] if m["kind"] == "ConfigMap")
    name, ns = mine["metadata"]["name"], mine["metadata"]["namespace"]
    kubectl(kubeconfig, "delete", "configmap", "-n", ns, name)
    kubectl(kubeconfig, "create", "configmap", "-n", ns, name, "--from-literal=owner=the-user")
    assert applier.delete_addon(after, only_ours=True) == []
    assert "the-user" in kubectl(kubeconfig, "get", "configmap", "-n", ns, name, "-o", "json").stdout
    gone = [w for addon in reversed(plan["addons"]) for w in applier.delete_addon(addon)]
    assert f"ConfigMap {ns}/{name}" in gone and "CustomResourceDefinition widgets.fast.ceil.test" in gone, gone
    for kind, obj in (("configmap", name), ("widgets.fast.ceil.test", "first")):
        left = kubectl(kubeconfig, "get", kind, "-n", ns, obj, "-o", "json", check=False)
        assert left.returncode != 0 or json.loads(left.stdout)["metadata"].get("deletionTimestamp"), (kind, left.stdout)
    chart = json.loads(kubectl(kubeconfig, "get", "helmchart", "-n", "kube-system", "fast-chart", "-o", "json",
                               check=False).stdout or "{}")
    assert not chart or chart["metadata"].get("deletionTimestamp"), chart
