"""Issue 6 proof on real hardware (`make verify`): every enabled add-on is running.

Against the real API server (admin kubeconfig made from the workstation's secrets/, nothing
fetched) and over SSH. The add-ons need k3s and their images, which the QEMU test bed does not
have (its nodes run upstream Kubernetes without images, see test_cluster.py), so these checks
skip there, saying so. The job's logic itself is tested against a local API stand-in in
tests/unit/test_addons_job.py.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from ceil.addons.catalog import Catalog, selected
from ceil.addons.hooks import UI_PASSWORD
from ceil.addons.render import build_plan, storage_facts
from ceil.k3s.kubeconfig import admin_kubeconfig
from ceil.secrets import SecretStore

pytestmark = pytest.mark.e2e

ADDONS_TIMEOUT = 3600  # first boot pulls every chart's images over the uplink: be patient


@pytest.fixture(scope="module")
def real_hardware(nodes):
    for name, host in nodes.items():
        virt = host.run("systemd-detect-virt").stdout.strip()
        if virt and virt != "none":
            pytest.skip(f"{name} is a {virt} virtual machine: k3s and its add-ons run on real hardware"
                        " only (make verify)")


@pytest.fixture(scope="module")
def kube(real_hardware, targets, cluster, tmp_path_factory):
    pytest.importorskip("kubernetes", reason="pip install 'ceil[cluster]' for make verify")
    from ceil.addons.job.kube import KubeApi, KubeconfigTransport

    # The e2e run's secrets/, or for make verify CEIL_SECRETS, else secrets/ beside cluster.yaml.
    store = SecretStore(targets.secrets_dir) if targets.secrets_dir else None
    if store is None or not store.exists("k3s/tls/client-ca.key"):
        pytest.skip(f"no k3s CA in {targets.secrets_dir or 'secrets/'}: point CEIL_SECRETS at the secrets/ the"
                    " images were baked with")
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(admin_kubeconfig(cluster, store))
    return KubeApi(KubeconfigTransport(str(path)), log=lambda m: None)


@pytest.fixture(scope="module")
def server(nodes, cluster):
    return nodes[cluster.server.name]


@pytest.fixture(scope="module")
def addons_status(real_hardware, server, cluster):
    """The job's report once ceil-addons.service has finished (it waits for every node first)."""
    if not cluster.addons.enabled:
        pytest.skip("addons.enabled is false in cluster.yaml")
    deadline = time.monotonic() + ADDONS_TIMEOUT
    while not server.file("/var/lib/ceil/done/addons").exists:
        if time.monotonic() > deadline:
            report = server.run("sudo cat /var/lib/ceil/addons.json").stdout
            pytest.fail(f"ceil-addons.service has not finished after {ADDONS_TIMEOUT}s; report: {report}")
        time.sleep(30)
    return json.loads(server.run("sudo cat /var/lib/ceil/addons.json").stdout)


def test_the_job_reports_every_enabled_addon_ready(addons_status, cluster):
    wanted = {s.name for s in selected(cluster, Catalog())}
    states = {name: a["state"] for name, a in addons_status["addons"].items()}
    assert {n: states.get(n) for n in wanted} == {n: "ready" for n in wanted}, addons_status
    assert addons_status["nodes"]["missing"] == []


def test_every_chart_installed_and_every_deployment_available(addons_status, kube, cluster):
    for addon in build_plan(cluster)["addons"]:
        for step in addon["steps"]:
            for ref in step["wait_for"]["helmcharts"]:
                ns, name = ref.split("/")
                job = kube.get("helm.cattle.io/v1", "HelmChart", name, ns)["status"]["jobName"]
                assert kube.get("batch/v1", "Job", job, ns)["status"].get("succeeded"), ref
            for ref in step["wait_for"]["deployments"]:
                ns, name = ref.split("/")
                dep = kube.get("apps/v1", "Deployment", name, ns)
                assert dep["status"].get("availableReplicas", 0) >= 1, ref


def test_the_ingress_has_its_address_from_metallb(addons_status, kube, cluster):
    svc = kube.get("v1", "Service", "traefik", "kube-system")
    ips = [i.get("ip") for i in svc["status"]["loadBalancer"].get("ingress", [])]
    assert ips == [str(cluster.network.ingress_ip)]


def _http(router, host_name: str, ip: str, scheme: str = "http", path: str = "/", login: str | None = None) -> str:
    """Status code of GET `path` for `host_name` at the ingress, asked from the router (on the LAN),
    with `login` ("user:password") as basic auth when given. Traefik's own certificate: -k."""
    port = 443 if scheme == "https" else 80
    auth = f"-u {shlex.quote(login)} " if login else ""
    cmd = (f"curl -sk -o /dev/null -w '%{{http_code}}' --max-time 20 {auth}"
           f"--resolve {host_name}:{port}:{ip} {scheme}://{host_name}{path}")
    return router.run(cmd).stdout.strip()


@pytest.fixture(scope="module")
def ui_login(targets) -> str:
    """The UI login the add-ons were baked with (`python bake.py addons ui-password`)."""
    store = SecretStore(targets.secrets_dir) if targets.secrets_dir else None
    if store is None or not store.exists(UI_PASSWORD):
        pytest.skip(f"no {UI_PASSWORD} in {targets.secrets_dir or 'secrets/'}: point CEIL_SECRETS at the secrets/"
                    " the images were baked with")
    return f"admin:{store.read(UI_PASSWORD).decode().strip()}"


def _require(cluster, addon: str) -> None:
    """Skip the check unless cluster.yaml enables the add-on."""
    if not _enabled(cluster, addon):
        pytest.skip(f"add-on {addon} is not enabled")


# Issue 18 #2: every UI on TLS (websecure); those without a login of their own behind the UI
# login (addons/traefik/ui-auth.yaml.j2). (add-on, host, path, answers with the login)
BEHIND_THE_UI_LOGIN = [
    ("traefik", "traefik", "/api/version", {"200"}),
    ("monitoring", "prometheus", "/", {"200", "302"}),
    ("storage", "longhorn", "/", {"200"}),
]


@pytest.mark.parametrize("addon, name, path, ok", BEHIND_THE_UI_LOGIN)
def test_uis_without_a_login_of_their_own_ask_for_the_ui_login(addons_status, router, cluster, ui_login, addon,
                                                                name, path, ok):
    _require(cluster, addon)
    if name == "longhorn" and not storage_facts(cluster)["longhorn"]:
        pytest.skip("no node has a storage_device: local-path, no Longhorn UI")
    host_name, ip = f"{name}.{cluster.domain}", str(cluster.network.ingress_ip)
    assert _http(router, host_name, ip, "https", path) == "401", f"https://{host_name}{path} answered without a login"
    assert _http(router, host_name, ip, "https", path, login="admin:not-the-password") == "401"
    code = _http(router, host_name, ip, "https", path, login=ui_login)
    assert code in ok, f"https://{host_name}{path} answered {code} with the UI login"
    # Not on plain HTTP, where the password would cross the LAN in clear.
    assert _http(router, host_name, ip, "http", path, login=ui_login) == "404", f"http://{host_name}{path} is served"


@pytest.mark.parametrize("addon, name, scheme, ok", [
    ("monitoring", "grafana", "https", {"200", "302"}),  # Grafana's own login (addons grafana-password)
    ("dashboard", "dashboard", "https", {"200"}),         # asks for a token (bake.py dashboard-token)
    ("demo", "httpd", "http", {"200"}),
    ("demo", "podinfo", "http", {"200"}),
])
def test_ingress_hosts_answer_on_the_lan(addons_status, router, cluster, addon, name, scheme, ok):
    _require(cluster, addon)
    code = _http(router, f"{name}.{cluster.domain}", str(cluster.network.ingress_ip), scheme)
    assert code in ok, f"{scheme}://{name}.{cluster.domain}/ answered {code}"
    if scheme == "https":  # a UI with a login: not on plain HTTP
        assert _http(router, f"{name}.{cluster.domain}", str(cluster.network.ingress_ip), "http") == "404"


def test_traefik_dashboard_is_served(addons_status, router, cluster, ui_login):
    host_name = f"traefik.{cluster.domain}"
    out = router.run(f"curl -sk --max-time 20 -u {shlex.quote(ui_login)} --resolve"
                     f" {host_name}:443:{cluster.network.ingress_ip} https://{host_name}/api/version").stdout
    assert "Version" in out


def test_longhorn_drives_are_mounted_by_label(addons_status, nodes, cluster):
    facts = storage_facts(cluster)
    if not facts["longhorn"]:
        pytest.skip("no storage_device in cluster.yaml: local-path is the storage class")
    for node in cluster.nodes:
        if node.storage_device:
            mount = nodes[node.name].mount_point(facts["data_path"])
            assert mount.exists and mount.filesystem == "ext4", node.name
            label = nodes[node.name].run(f"sudo blkid -s LABEL -o value {shlex.quote(mount.device)}").stdout
            assert label.strip() == "ceil-longhorn"
            # Later boots: k3s waits for the drive, and a drive that comes late is still mounted.
            escape = f"systemd-escape --path --suffix=mount {shlex.quote(facts['data_path'])}"
            unit = nodes[node.name].run(escape).stdout.strip()
            show = nodes[node.name].run(f"systemctl show -p Before -p WantedBy {unit}").stdout
            assert "k3s" in show and "dev-disk-by\\x2dlabel-ceil\\x2dlonghorn.device" in show, (node.name, show)


def test_kubewatch_reaches_piwatch(addons_status, router, cluster):
    if not cluster.piwatch.enabled:
        pytest.skip("piwatch is disabled")
    out = router.run(f"curl -s --max-time 10 http://127.0.0.1:{cluster.piwatch.port}/events").stdout
    assert out.strip() not in ("", "[]"), "PiWatch has seen no event from kubewatch"


def test_deployed_apps_run_the_pushed_digest_and_answer_through_the_ingress(addons_status, kube, router, cluster,
                                                                            targets):
    """Issue 20 #1 on hardware: every app `bake.py app deploy` recorded in out/apps/ runs the image
    digest that was pushed, and answers /healthz at http://NAME.apps.<domain>/ (from the LAN)."""
    from ceil import apps

    out = targets.out_dir
    deployed = sorted((out / "apps").glob("*.json")) if out and (out / "apps").is_dir() else []
    if not deployed:
        pytest.skip(f"no app deployed from this workstation ({out}/apps/ is empty): python bake.py app ship apps/piphp")
    for path in deployed:
        name, state = path.stem, json.loads(path.read_text())
        if kube.get("helm.cattle.io/v1", "HelmChart", f"app-{name}", "kube-system") is None:
            continue  # pushed, never deployed
        # Helm's release is the HelmChart's name; charts label their pods with it (helm create does).
        pods = [p for p in kube.list("v1", "Pod", apps.NAMESPACE)
                if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == f"app-{name}"]
        images = {c["image"] for p in pods for c in p["spec"]["containers"]}
        assert images and all(i.endswith("@" + state["image_digest"]) for i in images), (name, images)
        host_name = f"{name}.apps.{cluster.domain}"
        out_http = router.run(f"curl -s --max-time 20 --resolve {host_name}:80:{cluster.network.ingress_ip}"
                              f" http://{host_name}/healthz").stdout
        assert out_http.strip() == "ok", f"http://{host_name}/healthz answered {out_http!r}"


def _enabled(cluster, name: str) -> bool:
    return name in {s.name for s in selected(cluster, Catalog())}


def test_sleepy_sleeps_at_zero_and_wakes_on_the_first_request(addons_status, kube, router, cluster):
    """Issue 20 #2, scale to zero (add-on keda): idle, the demo has no pod; a request through the
    ingress is held by the interceptor until one is up, and answers."""
    if not _enabled(cluster, "keda"):
        pytest.skip("add-on keda is not enabled (addons.enable: [keda])")
    deadline = time.monotonic() + 900  # KEDA's cooldown is 300 s after the last request
    while (kube.get("apps/v1", "Deployment", "sleepy", "demo")["spec"].get("replicas") or 0) > 0:
        assert time.monotonic() < deadline, "demo/sleepy did not scale to zero within 15 minutes of idling"
        time.sleep(20)
    host_name = f"sleepy.{cluster.domain}"
    code = router.run(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 180 --resolve"
                      f" {host_name}:80:{cluster.network.ingress_ip} http://{host_name}/").stdout.strip()
    assert code == "200", f"the first request to http://{host_name}/ answered {code}"
    assert kube.get("apps/v1", "Deployment", "sleepy", "demo")["spec"].get("replicas", 0) >= 1


def test_the_request_rate_reaches_the_custom_metrics_api(addons_status, kube, cluster):
    """Issue 20 #2 (add-on custom-metrics): prometheus-adapter serves podinfo's request rate, the
    metric its HPA scales on."""
    if not _enabled(cluster, "custom-metrics"):
        pytest.skip("add-on custom-metrics is not enabled")
    path = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/demo/services/podinfo/traefik_requests_per_second"
    answer = kube.call("GET", path)
    assert answer and answer["items"][0]["metricName"] == "traefik_requests_per_second", answer
    hpa = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "podinfo", "demo")
    assert any(c["type"] == "ScalingActive" and c["status"] == "True" for c in hpa["status"]["conditions"]), hpa["status"]


# Five 30 s steps and the promotion take about 4 minutes; the canary's pod may take up to the
# Canary's progressDeadlineSeconds (300) to start on a Pi.
CANARY_RELEASE_TIMEOUT = 900
RELEASE_ANNOTATION = "ceil.test/release"
AB_REQUESTS = {"header": "X-Canary: always", "cookie": "Cookie: lang=en; canary=always"}


def _rollout_pod(router, cluster, header: str) -> str:
    """The pod that answered GET /api/info at http://rollout.<domain>/ (podinfo's hostname is its
    pod's name), asked from the router through the ingress with one extra header."""
    host_name = f"rollout.{cluster.domain}"
    out = router.run(f"curl -s --max-time 10 --resolve {host_name}:80:{cluster.network.ingress_ip}"
                     f" -H {shlex.quote(header)} http://{host_name}/api/info").stdout
    try:
        return json.loads(out)["hostname"]
    except (ValueError, KeyError, TypeError):
        return f"no podinfo answer: {out[:200]!r}"


def _is_release_under_test(pod: str) -> bool:
    return pod.startswith("rollout-") and not pod.startswith("rollout-primary-")


def test_a_release_is_promoted_on_the_load_testers_traffic_and_testers_reach_it_first(
        addons_status, kube, router, cluster):
    """Issue 20 #3 (add-on canary): Flagger took the demo over; a new release (a pod template
    annotation, as Flagger's docs retry one) is judged on the traffic the load tester sends and
    promoted, and while it is analysed Flagger's TraefikService gives it a share and the A/B
    route's header and cookie reach it."""
    if not _enabled(cluster, "canary"):
        pytest.skip("add-on canary is not enabled (addons.enable: [canary])")
    canary = kube.get("flagger.app/v1beta1", "Canary", "rollout", "demo")
    assert canary["status"]["phase"] in ("Initialized", "Succeeded"), canary.get("status")
    assert kube.get("apps/v1", "Deployment", "rollout-primary", "demo")["status"].get("availableReplicas", 0) >= 1
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kube.merge_patch("apps/v1", "Deployment", "rollout",
                     {"spec": {"template": {"metadata": {"annotations": {RELEASE_ANNOTATION: stamp}}}}}, "demo")
    deadline = time.monotonic() + CANARY_RELEASE_TIMEOUT
    shares: list[dict] = []
    reached: dict[str, str] = {}
    while True:
        status = kube.get("flagger.app/v1beta1", "Canary", "rollout", "demo").get("status", {})
        primary = kube.get("apps/v1", "Deployment", "rollout-primary", "demo")["spec"]["template"]["metadata"]
        assert status.get("phase") != "Failed", f"Flagger rolled the release back: {status}"
        if status.get("phase") == "Succeeded" and primary.get("annotations", {}).get(RELEASE_ANNOTATION) == stamp:
            break
        if status.get("phase") == "Progressing" and status.get("canaryWeight", 0) > 0:
            traefik = kube.get("traefik.io/v1alpha1", "TraefikService", "rollout", "demo")
            shares.append({s["name"]: s.get("weight") for s in traefik["spec"]["weighted"]["services"]})
            for way, header in AB_REQUESTS.items():
                if not _is_release_under_test(reached.get(way, "")):
                    reached[way] = _rollout_pod(router, cluster, header)
        assert time.monotonic() < deadline, (f"release {stamp} not promoted within {CANARY_RELEASE_TIMEOUT}s:"
                                             f" {status}; A/B answers {reached}")
        time.sleep(10)
    assert any(s.get("rollout-canary", 0) > 0 for s in shares), f"Flagger never weighted the canary: {shares}"
    assert reached.keys() == AB_REQUESTS.keys() and all(map(_is_release_under_test, reached.values())), (
        f"the A/B route did not reach the release under test: {reached}")


def tunnel_connections(metrics: str) -> float | None:
    """cloudflared's count of its live connections to Cloudflare's edge, from its /metrics text."""
    found = [line.split()[-1] for line in metrics.splitlines() if line.startswith("cloudflared_tunnel_ha_connections")]
    return float(found[0]) if found else None


def test_the_tunnel_holds_its_connections_to_cloudflare(addons_status, kube, server, cluster):
    """Issue 20 #5: every running connector holds at least one connection to Cloudflare's edge
    (cloudflared's own gauge, read from its metrics port at the pod's address on the server node).
    A connector that lost them can still look available for a while: /ready only turns it away."""
    _require(cluster, "tunnel")
    pods = [p for p in kube.list("v1", "Pod", "tunnel")
            if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "cloudflared"]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")]
    assert running, f"no cloudflared pod runs in namespace tunnel ({len(pods)} found)"
    for pod in running:
        metrics = server.run(f"curl -s --max-time 10 http://{pod['status']['podIP']}:2000/metrics").stdout
        held = tunnel_connections(metrics)
        assert held is not None and held >= 1, (
            f"{pod['metadata']['name']}: {held or 0} connections to Cloudflare (cloudflared_tunnel_ha_connections):"
            " check tunnel.token (`kubectl -n tunnel logs deploy/cloudflared`)")


def test_flux_is_in_sync_with_the_repository(addons_status, kube, cluster):
    """Issue 20 #4 (add-on gitops): the GitRepository fetched the branch's last commit and the
    Kustomization applied that revision. Both must be asked: a Kustomization stays Ready on the
    revision it applied last while its source fails (a revoked token, a deleted branch).

    Flux sets Ready to Unknown at the start of every reconcile (each gitops.interval), and for a
    moment after a push the source is ahead of the Kustomization: neither says anything either
    way, so the check looks again for up to FLUX_SETTLE_SECONDS before it fails. A source that
    reports an error fails it at once."""
    if not _enabled(cluster, "gitops"):
        pytest.skip("gitops.enabled is false")
    deadline = time.monotonic() + FLUX_SETTLE_SECONDS
    while True:
        repo = _flux_object(kube, "source.toolkit.fluxcd.io/v1", "GitRepository")
        fetched = _ready(repo)
        assert fetched.get("status") != "False", (
            f"GitRepository flux-system/ceil cannot fetch {cluster.gitops.url} ({fetched.get('reason')}:"
            f" {fetched.get('message')}): check gitops.url, gitops.branch and gitops.token")
        revision = ((repo.get("status") or {}).get("artifact") or {}).get("revision")
        sync = _flux_object(kube, "kustomize.toolkit.fluxcd.io/v1", "Kustomization")
        applied = _ready(sync)
        assert applied.get("status") != "False", (
            f"Kustomization flux-system/ceil does not apply {cluster.gitops.path} ({applied.get('reason')}:"
            f" {applied.get('message')}): `kubectl -n flux-system describe kustomization ceil`")
        last = (sync.get("status") or {}).get("lastAppliedRevision")
        if fetched.get("status") == applied.get("status") == "True" and revision and last == revision:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Flux has not settled after {FLUX_SETTLE_SECONDS} s: GitRepository flux-system/ceil"
                        f" Ready {fetched.get('status', 'not reported')} at {revision}, Kustomization Ready"
                        f" {applied.get('status', 'not reported')} having applied {last}"
                        " (`kubectl -n flux-system get gitrepository,kustomization`)")
        time.sleep(2)


FLUX_SETTLE_SECONDS = 90


def _flux_object(kube, api_version: str, kind: str) -> dict:
    found = kube.get(api_version, kind, "ceil", "flux-system")
    assert found is not None, (f"no {kind} flux-system/ceil: the gitops add-on has not been applied"
                               " (`python bake.py addons status`)")
    return found


def _ready(obj: dict) -> dict:
    """A Flux object's Ready condition ({} before its first reconcile)."""
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def _from_a_demo_pod(server, url: str) -> str:
    """"answered" or "refused": GET url from inside demo's podinfo pod (Alpine: busybox wget);
    '' when the exec itself failed, which no check here accepts."""
    inner = f"wget -q -T 5 -O /dev/null {url} && echo answered || echo refused"
    return server.run(f"sudo k3s kubectl exec -n demo deploy/podinfo -- sh -c {shlex.quote(inner)}").stdout.strip()


def test_pods_cannot_step_round_the_ui_login(addons_status, server, cluster):
    """Issue 18 on hardware: k3s's policy controller enforcing the NetworkPolicies ceil asks for.
    From an ordinary pod (demo's podinfo), Grafana's Service answers (it has its own login; this
    shows the pod network works), while Prometheus, Alertmanager and Longhorn's UI do not."""
    if not (_enabled(cluster, "demo") and _enabled(cluster, "monitoring")):
        pytest.skip("needs the demo and monitoring add-ons")
    assert _from_a_demo_pod(server, "http://kube-prometheus-stack-grafana.monitoring/api/health") == "answered"
    closed = ["http://kube-prometheus-stack-prometheus.monitoring:9090/-/ready",
              "http://kube-prometheus-stack-alertmanager.monitoring:9093/-/ready"]
    if storage_facts(cluster)["longhorn"]:
        closed.append("http://longhorn-frontend.longhorn-system/")
    assert {url: _from_a_demo_pod(server, url) for url in closed} == {url: "refused" for url in closed}
