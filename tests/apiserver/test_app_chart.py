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

from .conftest import install_job, kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "apps/piphp/chart"
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
    assert state["chart_name"] == "piphp" and state["chart_version"] == "0.1.0"

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
    assert apps.chart_metadata(path)["version"] == "0.1.0"


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
