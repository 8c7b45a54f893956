"""Add-on catalog, selection and rendering; every rendered manifest validated offline.

Built-in kinds: kubernetes-validate, strict, Kubernetes 1.36 (k3s v1.36.4+k3s1). HelmChart,
HelmChartConfig and MetalLB resources: the JSON schemas in addons/schemas/ (from the CRDs).
"""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from ceil.addons.catalog import Catalog, selected
from ceil.addons.render import build_plan, ingress_hosts, render_selected, write_rendered
from ceil.addons.validate import kubernetes_version, validate_all, validate_manifest
from ceil.config import parse_cluster
from ceil.errors import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"


def make(extra: str = "", nodes: str | None = None):
    nodes = nodes or "[{name: one, role: server}, {name: two}, {name: three}, {name: four}]"
    return parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\nnodes: {nodes}\n{extra}")


DRIVES = "[{name: one, role: server}, {name: two, storage_device: /dev/sda}, {name: three, storage_device: /dev/sdb}]"
VARIANTS = {
    "defaults": make(),
    "drives": make(nodes=DRIVES),
    "one-drive-custom-net": make(
        "domain: lab.example.internal\nnetwork: {lb_start: 10.42.0.200, lb_end: 10.42.0.200}\n",
        nodes="[{name: solo, role: server, storage_device: /dev/sda}]"),
    "no-piwatch-demo-off": make("piwatch: {enabled: false}\naddons: {disable: [demo]}\n"),
    "tunnel": make("tunnel: {enabled: true, token: " + "eyJhIjoiMTIzNDU2Nzg5MCJ9" * 3 + ", replicas: 3}\n"),
    "scaling": make("addons: {enable: [keda, custom-metrics]}\n"),
    "canary": make("addons: {enable: [canary]}\n"),
    "gitops-private": make("gitops: {enabled: true, url: 'https://git.example.com/me/cluster.git', branch: live,"
                           " path: ./clusters/pi, token: glpat-0123456789abcdef}\n"),
    "gitops-public": make("gitops: {enabled: true, url: 'https://github.com/me/cluster.git'}\n"),
}
TUNNEL_TOKEN = "eyJhIjoiMTIzNDU2Nzg5MCJ9" * 3


def docs(cluster, names=None):
    return [m for a in render_selected(cluster, names=names) for m in a.manifests]


def by_kind(manifests, kind, name=None):
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def values(helmchart) -> dict:
    return yaml.safe_load(helmchart["spec"]["valuesContent"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_manifest_validates_strictly_for_k3s_kubernetes(variant):
    cluster = VARIANTS[variant]
    version = kubernetes_version(cluster.kubernetes.k3s_version)
    assert version == "1.36"
    manifests = docs(cluster)
    assert manifests
    assert validate_all(manifests, version) == []


def test_every_addon_validates_even_when_applied_alone():
    cluster = VARIANTS["drives"]
    for name in Catalog().specs:
        assert validate_all(docs(cluster, [name]), "1.36") == [], name


@pytest.mark.parametrize("bad, expected", [
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
      "spec": {"selector": {}, "template": {}, "replica": 2}}, "replica"),
    ({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart", "metadata": {"name": "x", "namespace": "kube-system"},
      "spec": {"chart": "x", "valuesContents": "a: 1"}}, "valuesContents"),
    ({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "x", "namespace": "m"},
      "spec": {"addresses": ["10.42.0.240 - 10.42.0.250"]}}, "does not match"),
    ({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig", "metadata": {"name": "traefik", "namespace": "kube-system"},
      "spec": {"values": {"a": 1}}}, "values"),
    ({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}, "no schema"),
])
def test_the_validators_reject_what_the_api_server_would_drop_or_refuse(bad, expected):
    error = validate_manifest(bad, "1.36")
    assert error and expected in error


def test_every_helm_chart_is_pinned():
    for chart in by_kind(docs(VARIANTS["drives"]), "HelmChart"):
        spec = chart["spec"]
        assert spec.get("version"), chart["metadata"]["name"]
        if spec["chart"].startswith("https://"):
            assert spec["version"] in spec["chart"]  # a URL pins by itself: it must say the same
        yaml.safe_load(spec["valuesContent"])  # values are YAML, not a template leftover


def test_metallb_pools_come_from_the_lb_range_with_the_ingress_address_reserved():
    pools = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs(make()), "IPAddressPool")}
    assert pools == {"ingress": {"addresses": ["10.42.0.240/32"], "autoAssign": False},
                     "lan": {"addresses": ["10.42.0.241-10.42.0.250"], "autoAssign": True}}
    single = by_kind(docs(VARIANTS["one-drive-custom-net"]), "IPAddressPool")
    assert [p["metadata"]["name"] for p in single] == ["ingress"]
    (l2,) = by_kind(docs(VARIANTS["one-drive-custom-net"]), "L2Advertisement")
    assert l2["spec"]["ipAddressPools"] == ["ingress"]


def test_traefik_gets_the_ingress_address_and_a_dashboard_host_on_the_cluster_domain():
    cluster = VARIANTS["one-drive-custom-net"]
    (hcc,) = by_kind(docs(cluster), "HelmChartConfig", "traefik")
    v = values(hcc)
    assert v["service"]["annotations"]["metallb.universe.tf/loadBalancerIPs"] == "10.42.0.200"
    assert "Host(`traefik.lab.example.internal`)" in v["ingressRoute"]["dashboard"]["matchRule"]


def test_storage_is_longhorn_on_named_drives_only():
    manifests = docs(VARIANTS["drives"])
    (longhorn,) = by_kind(manifests, "HelmChart", "longhorn")
    v = values(longhorn)
    assert v["defaultSettings"]["createDefaultDiskLabeledNodes"] is True
    assert v["defaultSettings"]["defaultReplicaCount"] == 2
    # Issue 18: pods could reach the UI's Service round the login. The chart's k3s policies need
    # its own ingress on (the UI policy is rendered only then) and say which controller is ours.
    assert v["networkPolicies"] == {"enabled": True, "type": "k3s"} and v["ingress"]["enabled"] is True
    labelled = {n["metadata"]["name"]: n["metadata"]["labels"] for n in by_kind(manifests, "Node")}
    assert labelled == {"ceil-two": {"node.longhorn.io/create-default-disk": "true"},
                        "ceil-three": {"node.longhorn.io/create-default-disk": "true"}}
    (prom,) = by_kind(manifests, "HelmChart", "kube-prometheus-stack")
    assert values(prom)["grafana"]["persistence"]["storageClassName"] == "longhorn"


def _admits(policy: dict) -> list[tuple[str | None, dict]]:
    """(namespace or None for the policy's own, pod labels) of every source a policy admits."""
    out = []
    for rule in policy["spec"]["ingress"]:
        assert "ports" not in rule  # every port of the selected pods, to the sources below only
        for source in rule["from"]:
            ns = source.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            out.append((ns, source["podSelector"].get("matchLabels", {})))
    return out


def test_prometheus_and_alertmanager_answer_only_their_own_clients():
    """Issue 18: pods could call Prometheus' and Alertmanager's Services round the ingress login
    (Alertmanager's API creates silences). Ingress-only policies (scraping untouched): the
    monitoring namespace, Traefik for the UI, Flagger only where the canary add-on runs."""
    for variant, flagger in (("defaults", False), ("canary", True)):
        manifests = docs(VARIANTS[variant])
        (prom,) = by_kind(manifests, "NetworkPolicy", "prometheus-clients")
        (alert,) = by_kind(manifests, "NetworkPolicy", "alertmanager-clients")
        for policy in (prom, alert):
            assert policy["metadata"]["namespace"] == "monitoring"
            assert policy["spec"]["policyTypes"] == ["Ingress"]
        # The pods prometheus-operator labels (kube-prometheus-stack's own policies select these).
        assert prom["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
        assert alert["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}
        expected = [(None, {}), ("kube-system", {"app.kubernetes.io/name": "traefik"})]
        if flagger:
            expected.append(("flagger-system", {"app.kubernetes.io/name": "flagger"}))
        assert _admits(prom) == expected, variant
        assert _admits(alert) == [(None, {})], variant
    # Traefik's pods are the ones the PodMonitor scrapes: the same labels.
    (monitor,) = by_kind(docs(VARIANTS["defaults"]), "PodMonitor", "traefik")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "traefik"}
    # Flagger's address of Prometheus is the Service in front of the pods the policy guards.
    (flagger_chart,) = by_kind(docs(VARIANTS["canary"]), "HelmChart", "flagger")
    assert values(flagger_chart)["metricsServer"] == "http://kube-prometheus-stack-prometheus.monitoring:9090"


def test_without_drives_storage_applies_nothing_and_monitoring_uses_local_path():
    addons = {a.name: a for a in render_selected(make())}
    assert addons["storage"].steps == []
    (prom,) = by_kind(addons["monitoring"].manifests, "HelmChart")
    v = values(prom)
    assert v["grafana"]["persistence"]["storageClassName"] == "local-path"
    assert v["grafana"]["ingress"]["hosts"] == ["grafana.ceil.internal"]
    spec = v["prometheus"]["prometheusSpec"]["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert spec["storageClassName"] == "local-path"


def test_grafana_password_is_referenced_never_rendered():
    plan = build_plan(make())
    (monitoring,) = [a for a in plan["addons"] if a["name"] == "monitoring"]
    assert monitoring["steps"][0]["secrets"] == [{
        "name": "grafana-admin", "namespace": "monitoring",
        "data": {"admin-user": {"value": "admin"}, "admin-password": {"secret": "grafana-admin-password"}}}]
    (prom,) = by_kind(monitoring["steps"][0]["manifests"], "HelmChart")
    assert values(prom)["grafana"]["admin"]["existingSecret"] == "grafana-admin"


def test_kubewatch_posts_to_piwatch_on_the_router_with_its_token(tmp_path):
    """Issue 18: the webhook URL carries PiWatch's token; it reaches the chart from a Secret the
    job makes from the server's secret file (valuesSecrets), never from the rendered plan."""
    from ceil.addons.hooks import kubewatch_values, secret_files
    from ceil.hooks.piwatch import webhook_token
    from ceil.secrets import SecretStore
    from piwatch.tokens import ingest_token

    cluster = make("piwatch: {port: 8099}\n")
    (chart,) = by_kind(docs(cluster), "HelmChart", "kubewatch")
    v = values(chart)
    assert v["webhook"] == {"enabled": True} and "token" not in chart["spec"]["valuesContent"]
    assert v["rbac"]["create"] is True and v["slack"]["enabled"] is False
    assert chart["spec"]["valuesSecrets"] == [{"name": "kubewatch-webhook", "keys": ["values.yaml"], "ignoreUpdates": True}]
    store = SecretStore(tmp_path)
    sent = yaml.safe_load(secret_files(cluster, "one", store)["kubewatch-values"])
    # The event-only token (piwatch.tokens): kubewatch logs this URL after every event.
    token = ingest_token(webhook_token(store))
    assert sent == {"webhook": {"url": f"http://10.42.0.1:8099/kubewatch?token={token}"}}
    assert webhook_token(store) not in secret_files(cluster, "one", store)["kubewatch-values"]
    assert yaml.safe_load(kubewatch_values(cluster, store)) == sent


def test_the_tunnel_runs_cloudflared_with_the_token_from_a_secret_only(tmp_path):
    """Issue 20 #5: off unless tunnel.enabled; the token reaches cloudflared as TUNNEL_TOKEN from
    the Secret the job makes of the server's secret file, never from the rendered plan."""
    from ceil.addons.hooks import TUNNEL_TOKEN as SECRET_NAME, secret_files
    from ceil.secrets import SecretStore

    assert "tunnel" not in [s.name for s in selected(make(), Catalog())]
    cluster = VARIANTS["tunnel"]
    assert "tunnel" in [s.name for s in selected(cluster, Catalog())]
    plan = build_plan(cluster)
    assert TUNNEL_TOKEN not in repr(plan)
    (tunnel,) = [a for a in plan["addons"] if a["name"] == "tunnel"]
    assert tunnel["steps"][0]["secrets"] == [{"name": "cloudflared-token", "namespace": "tunnel",
                                             "data": {"token": {"secret": SECRET_NAME}}}]
    (deploy,) = by_kind(tunnel["steps"][0]["manifests"], "Deployment", "cloudflared")
    assert deploy["spec"]["replicas"] == 3
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["tunnel", "--no-autoupdate"] and container["args"][-1] == "run"
    assert container["env"] == [{"name": "TUNNEL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "cloudflared-token", "key": "token"}}}]
    assert secret_files(cluster, "one", SecretStore(tmp_path))[SECRET_NAME] == TUNNEL_TOKEN + "\n"
    assert SECRET_NAME not in secret_files(make(), "one", SecretStore(tmp_path))


@pytest.mark.parametrize("text, words", [
    ("tunnel: {enabled: true}\n", "tunnel.token is missing"),
    ("tunnel: {enabled: true, token: 'two words and more than twenty characters'}\n", "not a Cloudflare tunnel token"),
])
def test_a_tunnel_without_a_usable_token_is_refused(text, words):
    with pytest.raises(ConfigError, match=words):
        make(text)


def test_dashboard_keeps_no_token_and_is_https_only():
    """Issue 18 #2: the dashboard's cluster-admin token was a permanent Secret in the cluster; now
    `dashboard-token` asks for one that expires (tests/apiserver: against the real API server)."""
    manifests = docs(make(), ["dashboard"])
    assert not by_kind(manifests, "Secret")
    (account,) = by_kind(manifests, "ServiceAccount")
    assert account["metadata"]["name"] == "admin-user"
    (ing,) = by_kind(manifests, "Ingress")
    assert ing["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"


# UIs with a login of their own; every other add-on UI must sit behind ceil's UI login.
OWN_LOGIN = {"grafana", "dashboard"}
# Demo apps: public on the LAN on purpose (they are what the cluster serves).
OPEN_DEMOS = {"httpd", "podinfo"}


def _ingress_routes(manifests: list[dict]) -> dict[str, dict]:
    """host (first label) -> the annotations of the Ingress serving it, from plain Ingresses and
    from charts' ingress values (Longhorn, Grafana, Prometheus)."""
    routes = {}
    for ing in by_kind(manifests, "Ingress"):
        for rule in ing["spec"]["rules"]:
            routes[rule["host"].split(".")[0]] = ing["metadata"].get("annotations", {})
    for chart in by_kind(manifests, "HelmChart"):
        values = yaml.safe_load(chart["spec"].get("valuesContent") or "") or {}
        for section in (values, *(v for v in values.values() if isinstance(v, dict))):
            ing = section.get("ingress") if isinstance(section, dict) else None
            if isinstance(ing, dict) and ing.get("enabled"):
                for host in ing.get("hosts") or [ing.get("host")]:
                    routes[host.split(".")[0]] = ing.get("annotations", {})
    return routes


def test_every_addon_ui_is_tls_and_behind_a_login():
    """Issue 18 #2: Longhorn's UI (delete volumes, redirect backups), Prometheus and the Traefik
    dashboard had no login and were plain HTTP on the LAN."""
    manifests = docs(make(nodes=DRIVES))
    routes = _ingress_routes(manifests)
    assert {"longhorn", "grafana", "prometheus", "dashboard"} <= routes.keys()
    for host, notes in routes.items():
        if host in OPEN_DEMOS:
            continue
        assert notes.get("traefik.ingress.kubernetes.io/router.entrypoints") == "websecure", host
        if host not in OWN_LOGIN:
            assert notes.get("traefik.ingress.kubernetes.io/router.middlewares") == \
                "kube-system-ceil-ui-auth@kubernetescrd", host
    (config,) = by_kind(manifests, "HelmChartConfig")
    dashboard = yaml.safe_load(config["spec"]["valuesContent"])["ingressRoute"]["dashboard"]
    assert dashboard["entryPoints"] == ["websecure"] and dashboard["middlewares"] == [{"name": "ceil-ui-auth"}]
    (middleware,) = by_kind(manifests, "Middleware")
    assert middleware["metadata"] == {"name": "ceil-ui-auth", "namespace": "kube-system"}
    assert middleware["spec"]["basicAuth"]["secret"] == "ceil-ui-auth"


def test_demo_has_httpd_and_podinfo_with_an_autoscaler():
    manifests = docs(make(), ["demo"])
    assert {i["spec"]["rules"][0]["host"] for i in by_kind(manifests, "Ingress")} == {
        "httpd.ceil.internal", "podinfo.ceil.internal"}
    (hpa,) = by_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "podinfo"
    (podinfo,) = by_kind(manifests, "Deployment", "podinfo")
    assert "replicas" not in podinfo["spec"]  # the autoscaler owns it


def test_selection_follows_cluster_yaml():
    names = [s.name for s in selected(make(), Catalog())]
    assert set(names) == {"metallb", "traefik", "storage", "monitoring", "dashboard", "kubewatch", "demo"}
    assert [s.name for s in selected(VARIANTS["no-piwatch-demo-off"], Catalog())].count("kubewatch") == 0
    assert selected(make("addons: {enabled: false}\n"), Catalog()) == []


def test_dependencies_come_first():
    order = [s.name for s in selected(make(), Catalog())]
    for spec in selected(make(), Catalog()):
        for dep in spec.depends_on:
            assert order.index(dep) < order.index(spec.name)


@pytest.mark.parametrize("extra, message", [
    ("addons: {disable: [grafana]}\n", "addons.disable: 'grafana' is not an add-on"),
    ("addons: {disable: [metallb]}\n", "'traefik' needs 'metallb', which is off"),
])
def test_selection_errors_say_what_to_change(extra, message):
    with pytest.raises(ConfigError) as e:
        selected(make(extra), Catalog())
    assert message in str(e.value)


def test_render_to_a_directory_and_ingress_hosts_for_the_router_dns(tmp_path):
    cluster = make()
    files = write_rendered(render_selected(cluster), tmp_path)
    assert [f.name for f in files][:2] == ["01-metallb.yaml", "02-traefik.yaml"]
    assert all(list(yaml.safe_load_all(f.read_text())) or f.name.endswith("storage.yaml") for f in files)
    hosts = ingress_hosts(cluster)
    assert {"traefik.ceil.internal", "grafana.ceil.internal", "httpd.ceil.internal"} <= set(hosts)
    assert ipaddress.ip_address(str(cluster.network.ingress_ip)) == ipaddress.ip_address("10.42.0.240")


def test_keda_scales_sleepy_to_zero_through_the_interceptor():
    cluster = VARIANTS["scaling"]
    addon = next(a for a in render_selected(cluster) if a.name == "keda")
    charts = {c["metadata"]["name"]: c for c in by_kind(addon.manifests, "HelmChart")}
    assert charts["keda"]["spec"]["version"] == "2.21.0" and charts["keda-add-ons-http"]["spec"]["version"] == "0.15.0"
    assert values(charts["keda-add-ons-http"]) == {"interceptor": {"replicas": {"min": 1, "max": 3}},
                                                   "scaler": {"replicas": 1}}
    last = addon.steps[-1].manifests
    kinds = [m["kind"] for m in last]
    # The scaler reads the route: it must exist before the ScaledObject that names it.
    assert kinds.index("InterceptorRoute") < kinds.index("ScaledObject")
    route = by_kind(last, "InterceptorRoute")[0]["spec"]
    scaled = by_kind(last, "ScaledObject")[0]["spec"]
    deployment = by_kind(last, "Deployment", "sleepy")[0]
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns it; re-applying must not wake it
    assert scaled["minReplicaCount"] == 0 and scaled["scaleTargetRef"] == {"name": "sleepy"}
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "external-push" and trigger["metadata"] == {
        "scalerAddress": "keda-add-ons-http-external-scaler.keda:9090", "interceptorRoute": "sleepy"}
    assert route["target"] == {"service": "sleepy", "port": 80}
    ingress = by_kind(last, "Ingress", "sleepy")[0]
    # Traefik sends the host to the interceptor (same namespace as the Ingress), never to the app.
    assert ingress["metadata"]["namespace"] == "keda"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] in route["rules"][0]["hosts"] and rule["host"] == "sleepy.ceil.internal"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "keda-add-ons-http-interceptor-proxy", "port": {"number": 8080}}
    assert "sleepy.ceil.internal" in ingress_hosts(cluster)


def test_podinfo_scales_on_requests_per_second_only_where_prometheus_adapter_serves_them():
    def podinfo_metrics(cluster):
        return by_kind(docs(cluster), "HorizontalPodAutoscaler", "podinfo")[0]["spec"]["metrics"]

    assert podinfo_metrics(make())[0]["type"] == "Resource"
    [metric] = podinfo_metrics(VARIANTS["scaling"])
    assert metric["type"] == "Object"
    assert metric["object"]["metric"]["name"] == "traefik_requests_per_second"
    assert metric["object"]["describedObject"] == {"apiVersion": "v1", "kind": "Service", "name": "podinfo"}
    # Applying only the demo still knows what the cluster runs.
    alone = by_kind(docs(VARIANTS["scaling"], ["demo"]), "HorizontalPodAutoscaler", "podinfo")[0]
    assert alone["spec"]["metrics"] == [metric]


def test_prometheus_adapter_owns_only_custom_metrics_and_maps_traefiks_labels():
    manifests = docs(VARIANTS["scaling"], ["custom-metrics"])
    adapter = values(by_kind(manifests, "HelmChart", "prometheus-adapter")[0])
    assert adapter["rules"]["default"] is False
    assert "external" not in adapter["rules"] and "resource" not in adapter["rules"]
    [rule] = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "traefik_requests_per_second"
    monitor = by_kind(docs(VARIANTS["scaling"], ["monitoring"]), "PodMonitor", "traefik")[0]  # monitoring scrapes Traefik
    assert monitor["metadata"]["labels"] == {"release": "kube-prometheus-stack"}  # what the stack selects
    relabel = {r["targetLabel"] for r in monitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]}
    assert relabel == set(rule["resources"]["overrides"])
    import re

    regex = monitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"][0]["regex"]
    assert re.fullmatch(regex, "demo-podinfo-http@kubernetes").groups()[:2] == ("demo", "podinfo")


def test_grafana_dashboards_are_json_with_the_sidecar_label():
    import json

    maps = [m for m in docs(VARIANTS["scaling"]) if m["kind"] == "ConfigMap"
            and m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert {m["metadata"]["name"] for m in maps} == {"ceil-dashboard-scale-to-zero",
                                                     "ceil-dashboard-requests-and-replicas"}
    for m in maps:
        [(key, text)] = m["data"].items()
        board = json.loads(text)
        assert key.endswith(".json") and board["uid"] == key[:-5] and board["panels"]
        assert all(t["expr"] for p in board["panels"] for t in p["targets"])


def test_every_promql_expression_the_add_ons_carry_parses():
    """The dashboards' queries and prometheus-adapter's, parsed by a PromQL parser (a typo in one
    showed only as an empty panel or a metric the HPA never got, on hardware). The adapter's
    Go-template placeholders are filled the way the adapter fills them."""
    import json

    import promql_parser

    manifests = docs(VARIANTS["scaling"])
    exprs = [t["expr"] for m in manifests if m["kind"] == "ConfigMap"
             and m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
             for text in m["data"].values() for p in json.loads(text)["panels"] for t in p["targets"]]
    adapter = yaml.safe_load(by_kind(manifests, "HelmChart", "prometheus-adapter")[0]["spec"]["valuesContent"])
    filled = {"<<.Series>>": "traefik_service_requests_total", "<<.LabelMatchers>>": 'ingress_namespace="demo"',
              "<<.GroupBy>>": "ingress_service"}
    for rule in adapter["rules"]["custom"]:
        exprs.append(rule["seriesQuery"])
        query = rule["metricsQuery"]
        for placeholder, value in filled.items():
            query = query.replace(placeholder, value)
        exprs.append(query)
    assert len(exprs) >= 7
    for expr in exprs:
        promql_parser.parse(expr)  # raises ValueError with the parser's words
    with pytest.raises(ValueError):
        promql_parser.parse(exprs[0].replace(")", "", 1) if ")" in exprs[0] else exprs[0] + "{")


def test_flux_syncs_the_named_repository_and_its_token_is_a_secret_only(tmp_path):
    from ceil.addons.hooks import secret_files

    private = VARIANTS["gitops-private"]
    addon = next(a for a in render_selected(private) if a.name == "gitops")
    flux = values(by_kind(addon.manifests, "HelmChart", "flux2")[0])
    assert flux["sourceController"]["tag"] == flux["kustomizeController"]["tag"] == "v1.9.6"
    assert all(flux[c] == {"create": False} for c in ("helmController", "notificationController",
                                                      "imageAutomationController", "imageReflectionController"))
    repo = by_kind(addon.manifests, "GitRepository", "ceil")[0]["spec"]
    assert repo == {"url": "https://git.example.com/me/cluster.git", "ref": {"branch": "live"}, "interval": "5m",
                    "secretRef": {"name": "gitops-auth"}}
    sync = by_kind(addon.manifests, "Kustomization", "ceil")[0]["spec"]
    assert sync["path"] == "./clusters/pi" and sync["prune"] is True
    [step] = [s for s in addon.steps if s.secrets]
    assert step.secrets == [{"name": "gitops-auth", "namespace": "flux-system",
                             "data": {"username": {"secret": "gitops-username"}, "password": {"secret": "gitops-token"}}}]
    assert "glpat-0123456789abcdef" not in yaml.safe_dump_all(addon.manifests)
    from ceil.secrets import SecretStore

    files = secret_files(private, "one", SecretStore(tmp_path))
    assert files["gitops-token"] == "glpat-0123456789abcdef\n" and files["gitops-username"] == "git\n"

    public = next(a for a in render_selected(VARIANTS["gitops-public"]) if a.name == "gitops")
    assert not any(s.secrets for s in public.steps)
    assert "secretRef" not in by_kind(public.manifests, "GitRepository", "ceil")[0]["spec"]
    assert "gitops" not in {a.name for a in render_selected(make())}  # only when gitops.enabled


@pytest.mark.parametrize("text, words", [
    ("gitops: {enabled: true}", "gitops.url is missing"),
    ("gitops: {enabled: true, url: 'http://git.example.com/a.git'}", "https://"),
    ("gitops: {enabled: true, url: 'https://git.example.com/a.git', path: ../etc}", "path"),
    ("gitops: {enabled: true, url: 'https://git.example.com/a.git', branch: 'a b'}", "branch"),
    ("gitops: {enabled: true, url: 'https://git.example.com/a.git', token: 'two words'}", "not an access token"),
])
def test_a_gitops_setting_that_cannot_work_is_refused(text, words):
    with pytest.raises(ConfigError, match=words):
        make(text + "\n")


def test_flagger_runs_canaries_through_traefik_with_an_ab_route_for_testers():
    import re

    addon = next(a for a in render_selected(VARIANTS["canary"]) if a.name == "canary")
    flagger = values(by_kind(addon.manifests, "HelmChart", "flagger")[0])
    assert flagger["meshProvider"] == "traefik"
    assert flagger["metricsServer"] == "http://kube-prometheus-stack-prometheus.monitoring:9090"
    canary = by_kind(addon.manifests, "Canary", "rollout")[0]["spec"]
    assert canary["provider"] == "traefik" and canary["targetRef"]["name"] == "rollout"
    assert {m["name"] for m in canary["analysis"]["metrics"]} == {"request-success-rate", "request-duration"}
    assert "replicas" not in by_kind(addon.manifests, "Deployment", "rollout")[0]["spec"]  # Flagger owns it
    routes = {r["metadata"]["name"]: r["spec"]["routes"][0] for r in by_kind(addon.manifests, "IngressRoute")}
    # Everyone goes through Flagger's weighted TraefikService; testers straight to the canary.
    assert routes["rollout"]["services"] == [{"name": "rollout", "kind": "TraefikService", "port": 80}]
    assert routes["rollout-ab"]["services"] == [{"name": "rollout-canary", "port": 80}]
    assert routes["rollout-ab"]["priority"] > len(routes["rollout"]["match"])  # Traefik's default: rule length
    ab = routes["rollout-ab"]["match"]
    assert ab.startswith("Host(`rollout.ceil.internal`) && (Header(`X-Canary`, `always`) || ")
    cookie = re.search(r"HeaderRegexp\(`Cookie`, `(.+)`\)", ab).group(1)
    assert re.search(cookie, "lang=en; canary=always") and re.search(cookie, "canary=always")
    assert not re.search(cookie, "notcanary=always") and not re.search(cookie, "canary=alwaysnot")
    assert "rollout.ceil.internal" in ingress_hosts(VARIANTS["canary"])
