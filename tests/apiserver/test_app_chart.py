"""`bake.py app chart|deploy` with the real tools: the demo app's chart linted and packaged by real
Helm, pushed through the router's registry as baked (real docker-registry), pulled back by Helm by
digest; its rendered manifests accepted by the real API server; the HelmChart `deploy` applies
turned into an install Job by k3s's real helm-controller, with the registry login and CA mounted.

What runs only on a cluster with nodes (verify.md): the klipper-helm pod pulling the chart from
the router, the image pulled by containerd through registries.yaml, the page answering.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ceil import apps
from testbed import helm as helm_build
from tests import bake_cli

from .conftest import install_crd_files, install_job, kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "apps/piphp/chart"
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]  # what `app chart` pushes
HELM = helm_build.lookup()  # captured at import, before the unit tests' CEIL_CACHE fixture


@pytest.fixture
def helm() -> str:
    if HELM is None:
        pytest.fail("no Helm build for the tests: run `make helm` first")
    return str(HELM)



def bake_py(*args: str, cwd: Path, helm: str) -> subprocess.CompletedProcess:
    """With the test build of helm first on PATH, as a user's own helm would be."""
    env = {**os.environ, "PATH": f"{Path(helm).parent}:{os.environ['PATH']}"}
    return bake_cli.bake_py(*args, cwd=cwd, timeout=300, env=env)


def test_the_chart_is_pushed_and_helm_pulls_the_same_bytes_back_by_digest(registries, helm, tmp_path):
    r = registries
    done = bake_py("app", "--registry", r.urls["push"], "chart", str(CHART), cwd=r.workstation, helm=helm)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((r.workstation / "out/apps/piphp.json").read_text())
    assert state["chart_name"] == "piphp" and state["chart_version"] == CHART_VERSION

    # Helm, logged in as the nodes' pull account, from the read-only port the cluster uses.
    env = {**os.environ, "HELM_REGISTRY_CONFIG": str(tmp_path / "helm-registry.json"),
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config")}
    host = r.urls["private"].removeprefix("https://")
    login = subprocess.run([helm, "registry", "login", host, "--ca-file", r.ca, "-u", r.pull[0], "--password-stdin"],
                           input=r.pull[1], capture_output=True, text=True, env=env, timeout=60)
    assert login.returncode == 0, login.stderr
    (tmp_path / "pulled").mkdir()
    # By digest, as pinned: helm accepts name@sha256:... for OCI charts.
    pulled = subprocess.run([helm, "pull", f"oci://{host}/charts/piphp@{state['chart_digest']}", "--ca-file", r.ca,
                             "-d", str(tmp_path / "pulled")], capture_output=True, text=True, env=env, timeout=60)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Digest: {state['chart_digest']}" in pulled.stdout + pulled.stderr
    [path] = (tmp_path / "pulled").iterdir()
    tgz = path.read_bytes()
    layer = next(l for l in json.loads(_manifest(r, state["chart_digest"]))["layers"])
    assert "sha256:" + hashlib.sha256(tgz).hexdigest() == layer["digest"]
    assert apps.chart_metadata(path)["version"] == CHART_VERSION


def _manifest(r, digest: str) -> bytes:
    from ceil import oci

    return oci.Registry(r.urls["private"], r.pull, r.ca).manifest("charts/piphp", digest).manifest


def test_a_chart_helm_lint_refuses_is_not_pushed(registries, helm, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Chart.yaml").write_text("apiVersion: v2\nname: Broken_Name\nversion: not-semver\n")
    done = bake_py("app", "--registry", registries.urls["push"], "chart", str(broken), cwd=registries.workstation,
                   helm=helm)
    assert done.returncode != 0 and "lint --strict failed" in done.stderr + done.stdout
    assert not (registries.workstation / "out/apps").exists()


def test_the_demo_chart_as_deployed_is_accepted_by_the_api_server(lab, kubeconfig, helm, tmp_path):
    """`helm template` with exactly the values `deploy` sets, server-side dry-run (admission,
    defaulting, schema by kube-apiserver itself) into the apps namespace."""
    values = {"image": {"repository": "ceil-router.ceil.internal:5002/apps/piphp", "digest": "sha256:" + "c" * 64},
              "host": "piphp.apps.ceil.internal"}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = subprocess.run([helm, "template", "app-piphp", str(CHART), "-n", apps.NAMESPACE,
                               "-f", str(tmp_path / "values.yaml")], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["Deployment", "HorizontalPodAutoscaler", "Ingress", "Service"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ceil-router.ceil.internal:5002/apps/piphp@sha256:" + "c" * 64
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "piphp.apps.ceil.internal"
    kubectl(kubeconfig, "create", "namespace", apps.NAMESPACE, check=False)
    (tmp_path / "rendered.yaml").write_text(rendered.stdout)
    kubectl(kubeconfig, "apply", "-n", apps.NAMESPACE, "--server-side", "--dry-run=server", "-f",
            str(tmp_path / "rendered.yaml"))


def test_the_demo_chart_as_a_canary_release_is_accepted_against_flaggers_and_traefiks_crds(
        lab, kubeconfig, helm, tmp_path):
    """With the add-on canary on, `deploy` sets canary.enabled: the chart then makes Flagger's
    Canary and Traefik's IngressRoutes (the weighted route and the A/B one) instead of the Service
    and the Ingress, and leaves the replica count to Flagger. Server-side dry-run with strict
    field validation against the CRDs of the Flagger and Traefik versions the catalog pins."""
    from testbed import crds

    values = {"image": {"repository": "ceil-router.ceil.internal:5002/apps/piphp", "digest": "sha256:" + "c" * 64},
              "host": "piphp.apps.ceil.internal", "canary": {"enabled": True}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = subprocess.run([helm, "template", "app-piphp", str(CHART), "-n", apps.NAMESPACE,
                               "-f", str(tmp_path / "values.yaml")], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["Canary", "Deployment", "HorizontalPodAutoscaler", "IngressRoute",
                                               "IngressRoute"]
    canary = next(d for d in docs if d["kind"] == "Canary")
    assert canary["spec"]["targetRef"]["name"] == "app-piphp" == canary["spec"]["autoscalerRef"]["name"]
    assert "-host piphp.apps.ceil.internal " in canary["spec"]["analysis"]["webhooks"][0]["metadata"]["cmd"]
    assert "replicas" not in next(d for d in docs if d["kind"] == "Deployment")["spec"]
    install_crd_files(kubeconfig, [path for found in crds.catalog_sources().values() for s in found
                                   if s.module in ("github.com/fluxcd/flagger", "github.com/traefik/traefik/v3")
                                   for path in crds.files(s)])
    kubectl(kubeconfig, "create", "namespace", apps.NAMESPACE, check=False)
    (tmp_path / "rendered.yaml").write_text(rendered.stdout)
    kubectl(kubeconfig, "apply", "-n", apps.NAMESPACE, "--server-side", "--dry-run=server", "--validate=strict",
            "-f", str(tmp_path / "rendered.yaml"))
    # The request-rate metric cannot be read under Flagger: the chart says so instead of rendering it.
    values["autoscaling"] = {"requestsPerSecond": 10}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    both = subprocess.run([helm, "template", "app-piphp", str(CHART), "-f", str(tmp_path / "values.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode != 0 and "set requestsPerSecond: 0" in both.stderr


def test_deploy_makes_helm_controller_install_from_the_registry_with_login_and_ca(lab, kubeconfig, registries, helm):
    r = registries
    apps.write_state(r.workstation / "out", "piphp", image_digest="sha256:" + "d" * 64, chart_name="piphp",
                     chart_version="0.1.0", chart_digest="sha256:" + "e" * 64)
    done = bake_py("app", "--kubeconfig", str(kubeconfig), "deploy", "piphp", cwd=r.workstation, helm=helm)
    assert done.returncode == 0, done.stdout + done.stderr
    job = install_job(kubeconfig, "app-piphp")
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
    assert env["CHART"] == "oci://ceil-router.ceil.internal:5000/charts/piphp" and env["VERSION"] == "0.1.0"
    assert env["TARGET_NAMESPACE"] == apps.NAMESPACE
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == apps.PULL_SECRET
    assert volumes["ca-files"]["configMap"]["name"] == apps.CA_CONFIGMAP
    secret = json.loads(kubectl(kubeconfig, "get", "secret", "-n", "kube-system", apps.PULL_SECRET, "-o", "json").stdout)
    assert secret["type"] == "kubernetes.io/basic-auth"
    # A second deploy is idempotent (server-side apply) and the printed form hides the password.
    again = bake_py("app", "--kubeconfig", str(kubeconfig), "deploy", "piphp", "--print", cwd=r.workstation, helm=helm)
    assert again.returncode == 0 and r.pull[1] not in again.stdout and "kind: HelmChart" in again.stdout


# ---- the autoscaler on requests per second (add-on custom-metrics) -------------------------------
# In this layer, not the unit one, because it needs the Helm build (`make helm`), which `make test`
# runs beside the unit tests; the values come from `deploy_objects` itself, not a copy of them.


def deploy_values(tmp_path: Path, addons: str) -> Path:
    """The values file `bake.py app deploy piphp` hands the chart, for a cluster.yaml with `addons`."""
    from ceil import registry_access as access
    from ceil.config import parse_cluster
    from ceil.secrets import SecretStore
    from tests.registry_lab import BASE

    store = SecretStore(tmp_path / "secrets")
    access.ensure_ca(store)
    access.password(store, access.PUSH_USER)
    target = apps.Target.of(parse_cluster(BASE + addons), store)
    *_, chart = apps.deploy_objects(target, "piphp", {"image_digest": "sha256:" + "c" * 64, "chart_version": "0.1.0"})
    path = tmp_path / ("values-custom-metrics.yaml" if addons else "values.yaml")
    path.write_text(chart["spec"]["valuesContent"])
    return path


def helm_template(helm: str, *args: str) -> subprocess.CompletedProcess:
    """The release as helm-controller names it (the HelmChart's name, app-NAME) in the apps namespace."""
    return subprocess.run([helm, "template", "app-piphp", str(CHART), "-n", apps.NAMESPACE, *args],
                          capture_output=True, text=True, timeout=60)


def rendered(helm: str, *args: str) -> list[dict]:
    done = helm_template(helm, *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def hpa_metrics(docs: list[dict]) -> list[dict]:
    [hpa] = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    return hpa["spec"]["metrics"]


CPU_60 = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
RPS_10 = {"type": "Object", "object": {"describedObject": {"apiVersion": "v1", "kind": "Service", "name": "app-piphp"},
                                       "metric": {"name": "traefik_requests_per_second"},
                                       "target": {"type": "AverageValue", "averageValue": "10"}}}


def test_the_demo_hpa_adds_requests_per_second_only_with_the_value_deploy_sets(helm, tmp_path):
    from ceil.addons.validate import validate_manifest

    without = rendered(helm, "-f", str(deploy_values(tmp_path, "")))
    assert hpa_metrics(without) == [CPU_60]
    with_rate = rendered(helm, "-f", str(deploy_values(tmp_path, "addons: {enable: [custom-metrics]}\n")))
    assert hpa_metrics(with_rate) == [CPU_60, RPS_10]  # alongside CPU (values.yaml says why)
    # The Service the metric describes is the release's own, the one its Ingress routes to.
    [service] = [d for d in with_rate if d["kind"] == "Service"]
    [ingress] = [d for d in with_rate if d["kind"] == "Ingress"]
    assert service["metadata"]["name"] == ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
    assert service["metadata"]["name"] == RPS_10["object"]["describedObject"]["name"]
    # Offline, strictly against Kubernetes 1.36's schemas, as the add-ons' manifests are.
    for doc in without + with_rate:
        assert validate_manifest(doc, "1.36") is None, doc["kind"]
    # Instead of CPU, for whoever wants it; neither is refused rather than left to Kubernetes' CPU 80 %.
    only_rate = rendered(helm, "--set", "autoscaling.targetCPUUtilizationPercentage=0",
                         "--set", "autoscaling.requestsPerSecond=2.5")
    assert hpa_metrics(only_rate) == [{**RPS_10, "object": {**RPS_10["object"],
                                                            "target": {"type": "AverageValue", "averageValue": "2.5"}}}]
    neither = helm_template(helm, "--set", "autoscaling.targetCPUUtilizationPercentage=0")
    assert neither.returncode != 0 and "set targetCPUUtilizationPercentage, requestsPerSecond or both" in neither.stderr
    lint = subprocess.run([helm, "lint", "--strict", str(CHART), "--set", "autoscaling.requestsPerSecond=10"],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_demo_hpas_metric_is_the_one_prometheus_adapter_serves_for_its_service(helm, tmp_path):
    """The chain the hardware runs, checked link by link: Traefik names the Ingress backend
    "<namespace>-<service>-<port>@kubernetes" (port by name when the Ingress names it: traefik
    v3.6.13, docs/research/scaling.md section 3), the monitoring add-on's PodMonitor relabels that
    into the labels prometheus-adapter's rule maps to namespace and Service, under the name the HPA asks for."""
    import re

    from ceil.addons.render import render_selected
    from ceil.config import parse_cluster
    from tests.registry_lab import BASE

    cluster = parse_cluster(BASE + "addons: {enable: [custom-metrics]}\n")
    addons = [m for a in render_selected(cluster, names=["monitoring", "custom-metrics"]) for m in a.manifests]
    [monitor] = [m for m in addons if m["kind"] == "PodMonitor" and m["metadata"]["name"] == "traefik"]
    [adapter] = [m for m in addons if m["kind"] == "HelmChart" and m["metadata"]["name"] == "prometheus-adapter"]
    [rule] = yaml.safe_load(adapter["spec"]["valuesContent"])["rules"]["custom"]

    docs = rendered(helm, "-f", str(deploy_values(tmp_path, "addons: {enable: [custom-metrics]}\n")))
    [ingress] = [d for d in docs if d["kind"] == "Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    traefik_service = f"{apps.NAMESPACE}-{backend['name']}-{backend['port']['name']}@kubernetes"
    labels = {}
    for relabel in monitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]:
        [source] = relabel["sourceLabels"]
        assert source == "service"
        match = re.fullmatch(relabel["regex"], traefik_service)  # Prometheus anchors relabel regexes
        assert match, (relabel["regex"], traefik_service)
        labels[relabel["targetLabel"]] = match.expand(relabel["replacement"].replace("$", "\\"))
    by_resource = {v["resource"]: labels[k] for k, v in rule["resources"]["overrides"].items()}
    [metric] = [m for m in hpa_metrics(docs) if m["type"] == "Object"]
    assert by_resource == {"namespace": apps.NAMESPACE, "service": metric["object"]["describedObject"]["name"]}
    assert rule["name"]["as"] == metric["object"]["metric"]["name"]


def test_the_demo_chart_with_requests_per_second_is_accepted_by_the_api_server(lab, kubeconfig, helm, tmp_path):
    """Server-side dry-run of the chart as deployed on a cluster with custom-metrics: the real
    kube-apiserver validates the HPA's Object metric and keeps both metrics as written."""
    values = deploy_values(tmp_path, "addons: {enable: [custom-metrics]}\n")
    done = helm_template(helm, "-f", str(values))
    assert done.returncode == 0, done.stderr
    (tmp_path / "rendered.yaml").write_text(done.stdout)
    kubectl(kubeconfig, "create", "namespace", apps.NAMESPACE, check=False)
    applied = kubectl(kubeconfig, "apply", "-n", apps.NAMESPACE, "--server-side", "--dry-run=server", "-o", "json",
                      "-f", str(tmp_path / "rendered.yaml"))
    items = json.loads(applied.stdout)["items"]
    [hpa] = [i for i in items if i["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"] == [CPU_60, RPS_10]
