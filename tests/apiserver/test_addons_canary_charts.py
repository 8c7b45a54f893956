"""The canary add-on against the real things it names (issue 20 #3): Flagger's and the load
tester's charts rendered by real Helm (`helm template`, the Helm 3 that k3s's helm-controller
also runs) with the values ceil renders, from the charts in Flagger's Go module at the tag the
HelmCharts pin; and the Canary's load-test webhook against Flagger's real CRD.

Here rather than in tests/unit: this layer builds Helm (`make helm`) and fetches the Go modules.
What no test here can show, a release promoted under the load tester's traffic and the A/B route
answering, tests/infra/test_addons.py checks on a real cluster.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from ceil.addons import fit
from ceil.addons.catalog import Catalog
from ceil.addons.render import build_plan
from ceil.addons.validate import kubernetes_version, validate_all
from ceil.config import load_cluster, parse_cluster
from testbed import crds
from testbed import helm as helm_build

from .conftest import install_crd_files, kubectl

HELM = helm_build.lookup()  # captured at import, before the unit tests' CEIL_CACHE fixture
FLAGGER_MODULE = "github.com/fluxcd/flagger"

Render = Callable[[dict], list[dict]]


@pytest.fixture(scope="module")
def canary(workstation) -> list[dict]:
    """What the canary add-on renders for the default cluster."""
    cluster = load_cluster(workstation / "cluster.yaml")
    (addon,) = [a for a in build_plan(cluster, names=["canary"])["addons"] if a["name"] == "canary"]
    return [m for s in addon["steps"] for m in s["manifests"]]


@pytest.fixture(scope="module")
def flagger_source():
    (source,) = [s for s in Catalog().get("canary").crds if s.module == FLAGGER_MODULE]
    return source


@pytest.fixture(scope="module")
def charts(canary, flagger_source) -> dict[str, tuple[dict, Path]]:
    """HelmChart name -> (its spec, the chart's folder in Flagger's module)."""
    root = crds.module_dir(flagger_source)
    return {m["metadata"]["name"]: (m["spec"], root / "charts" / m["spec"]["chart"])
            for m in canary if m["kind"] == "HelmChart"}


@pytest.fixture(scope="module")
def helm_template(tmp_path_factory) -> Callable[[str, dict, Path, dict], list[dict]]:
    if HELM is None:
        pytest.fail("no Helm build for the tests: run `make helm` first")
    home = tmp_path_factory.mktemp("helm")
    env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    def render(release: str, spec: dict, chart: Path, values: dict) -> list[dict]:
        path = home / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        done = subprocess.run([str(HELM), "template", release, str(chart), "--namespace", spec["targetNamespace"],
                               "-f", str(path)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, f"helm template {release}: {done.stderr}"
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return render


def renderer(helm_template, charts, name: str) -> tuple[Render, dict, Path]:
    spec, chart = charts[name]
    return (lambda values: helm_template(name, spec, chart, values)), yaml.safe_load(spec["valuesContent"]), chart


def leaves(values: dict, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key), value


def probe(value: Any) -> Any:
    """Another value of the same shape: a key the chart reads renders differently with it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "ceil-probe"]
    return f"{value}-ceil-probe"


def with_leaf(values: dict, path: tuple[str, ...], value: Any) -> dict:
    out = copy.deepcopy(values)
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


def dead_keys(render: Render, values: dict) -> list[str]:
    """Every key we set whose value the chart's output does not depend on: misspelt, misplaced,
    or not read by this chart version (Helm itself ignores such keys without a word)."""
    base = render(values)
    return [".".join(p) for p, v in leaves(values) if render(with_leaf(values, p, probe(v))) == base]


def the(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def test_the_charts_are_those_of_the_flagger_tag_the_helmcharts_pin(charts, flagger_source):
    assert set(charts) == {"flagger", "flagger-loadtester"}  # a new chart here needs its checks below
    for name, (spec, chart) in charts.items():
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        assert (meta["name"], str(meta["version"])) == (spec["chart"], spec["version"]), name
        assert spec["repo"] == "https://flagger.app", name
    assert flagger_source.version == "v" + charts["flagger"][0]["version"]


@pytest.mark.parametrize("name", ["flagger", "flagger-loadtester"])
def test_every_value_ceil_sets_is_one_the_chart_reads(helm_template, charts, workstation, name):
    render, values, chart = renderer(helm_template, charts, name)
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    assert set(values) <= set(defaults), f"{name}: {sorted(set(values) - set(defaults))} not in {chart}/values.yaml"
    assert dead_keys(render, values) == [], f"{name}: these values change nothing the chart renders"
    # A key under a map the chart copies whole (resources, securityContext) always renders: its
    # spelling is the pod spec's, checked strictly for the Kubernetes that k3s runs.
    k3s = load_cluster(workstation / "cluster.yaml").kubernetes.k3s_version
    assert validate_all(render(values), kubernetes_version(k3s)) == []


def test_a_misspelt_key_is_caught(helm_template, charts):
    render, values, _ = renderer(helm_template, charts, "flagger")
    values = {**values, "meshProvder": "traefik"}
    assert dead_keys(render, values) == ["meshProvder"]
    command = the(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "-mesh-provider=traefik" in command
    assert "-metrics-server=http://kube-prometheus-stack-prometheus.monitoring:9090" in command


def _mib(quantity: str) -> int:
    found = re.fullmatch(r"(\d+)Mi", quantity)
    assert found, f"memory {quantity!r}: this test reads Mi"
    return int(found[1])


def _millicores(quantity: str) -> int:
    found = re.fullmatch(r"(\d+)m", quantity)
    assert found, f"CPU {quantity!r}: this test reads millicores"
    return int(found[1])


@pytest.mark.parametrize("name", ["flagger", "flagger-loadtester"])
def test_the_requests_helm_renders_are_what_fit_counts(helm_template, charts, name):
    render, values, _ = renderer(helm_template, charts, name)
    deployment = the(render(values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    requests = container["resources"]["requests"]
    where = f"HelmChart {name}: resources"
    counted = {w.manifest: w for w in fit.WORKLOADS["canary"] if w.manifest}
    assert where in counted, (f"ceil/addons/fit.py counts no pod for {where} (the chart runs one asking"
                              f" {requests}): add it to WORKLOADS['canary']")
    workload = counted[where]
    assert (_mib(requests["memory"]), _millicores(requests["cpu"])) == (workload.memory_mib, workload.cpu_m)
    assert deployment["spec"]["replicas"] == workload.pods


def test_the_webhook_and_the_network_policy_name_what_the_charts_render(helm_template, charts, canary):
    tester_render, tester_values, _ = renderer(helm_template, charts, "flagger-loadtester")
    tester = tester_render(tester_values)
    flagger_render, flagger_values, _ = renderer(helm_template, charts, "flagger")
    flagger_pod = the(flagger_render(flagger_values), "Deployment")["spec"]["template"]
    namespace = charts["flagger-loadtester"][0]["targetNamespace"]
    # The Canary's webhook reaches the chart's Service on its port.
    service = the(tester, "Service")
    (port,) = service["spec"]["ports"]
    hooks = [m for m in canary if m["kind"] == "Canary"][0]["spec"]["analysis"]["webhooks"]
    assert [h["url"] for h in hooks] == [f"http://{service['metadata']['name']}.{namespace}/"] and port["port"] == 80
    # ... whose target port is the container's, the one port the policy opens, to Flagger's pod only.
    pod = the(tester, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (container_port,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    policy = [m for m in canary if m["kind"] == "NetworkPolicy" and m["metadata"]["name"] == "flagger-loadtester"][0]
    assert policy["metadata"]["namespace"] == namespace == charts["flagger"][0]["targetNamespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= flagger_pod["metadata"]["labels"].items()
    assert rule["ports"] == [{"protocol": "TCP", "port": container_port["containerPort"]}]
    # Only canaries in demo may ask it for anything; it runs unprivileged.
    assert "-namespace-regexp=^demo$" in container["command"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_prometheus_admits_the_pods_flaggers_chart_renders(helm_template, charts, workstation):
    """The monitoring add-on's policy lets Flagger query Prometheus: its source must match the
    labels of the pod Flagger's real chart renders, in the namespace the HelmChart targets."""
    config = yaml.safe_load((workstation / "cluster.yaml").read_text())
    addons = config.setdefault("addons", {})
    addons["enable"] = sorted({*addons.get("enable", []), "canary"})
    plan = build_plan(parse_cluster(yaml.safe_dump(config)), names=["monitoring"])["addons"]
    (monitoring,) = [a for a in plan if a["name"] == "monitoring"]
    (policy,) = [m for s in monitoring["steps"] for m in s["manifests"]
                 if m["kind"] == "NetworkPolicy" and m["metadata"]["name"] == "prometheus-clients"]
    flagger_render, flagger_values, _ = renderer(helm_template, charts, "flagger")
    flagger_pod = the(flagger_render(flagger_values), "Deployment")["spec"]["template"]
    namespace = charts["flagger"][0]["targetNamespace"]
    (source,) = [s for rule in policy["spec"]["ingress"] for s in rule["from"]
                 if s.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": namespace}]
    assert source["podSelector"]["matchLabels"].items() <= flagger_pod["metadata"]["labels"].items()


def test_the_canarys_webhook_is_checked_by_flaggers_real_crd(lab, kubeconfig, canary, flagger_source, tmp_path):
    """The Canary with its load-test webhook, server-side with strict field validation against
    the CRD of Flagger's tag, and three wrong webhooks refused: an unknown field, a type Flagger
    does not have, a metadata value that is not a string (Flagger's are all strings)."""
    install_crd_files(kubeconfig, crds.files(flagger_source))
    kubectl(kubeconfig, "create", "namespace", "demo", check=False)
    good = [m for m in canary if m["kind"] == "Canary"][0]
    assert good["spec"]["analysis"]["webhooks"]

    def dry_run(doc: dict) -> subprocess.CompletedProcess:
        path = tmp_path / "canary.yaml"
        path.write_text(yaml.safe_dump(doc))
        return kubectl(kubeconfig, "apply", "--server-side", "--field-manager=ceil", "--dry-run=server",
                       "--validate=strict", "-f", str(path), check=False)

    done = dry_run(good)
    assert done.returncode == 0, done.stderr
    for change, word in (({"urll": "http://x/"}, "urll"), ({"type": "during-rollout"}, "during-rollout"),
                         ({"metadata": {"type": "cmd", "cmd": "hey", "logCmdOutput": True}}, "logCmdOutput")):
        bad = json.loads(json.dumps(good))
        bad["spec"]["analysis"]["webhooks"][0].update(change)
        refused = dry_run(bad)
        assert refused.returncode != 0 and word in refused.stderr, (change, refused.stderr)
