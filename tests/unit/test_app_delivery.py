"""`bake.py app`: a user's image built by a real builder, pushed through the router's registry as
baked (real docker-registry), and read back by digest with an independent client (skopeo).

The chart half (real helm) and the HelmChart (real helm-controller) are in
tests/apiserver/test_app_chart.py, the layer that builds those tools.
"""

from __future__ import annotations

import io
import os
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from ceil import apps, oci
from ceil.errors import CeilError
from tests import bake_cli
from tests.registry_lab import ci_archive, write_layout

REPO = Path(__file__).resolve().parents[2]


def bake_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return bake_cli.bake_py(*args, cwd=cwd, timeout=600)  # a build runs in it



def scratch_app(root: Path, text: str = "hello from a user's app\n") -> Path:
    """A user's app folder whose Containerfile needs nothing from the internet."""
    app = root / "hello"
    app.mkdir()
    (app / "hello.txt").write_text(text)
    (app / "Containerfile").write_text('FROM scratch\nCOPY hello.txt /hello.txt\nCMD ["/hello.txt"]\n')
    return app


def skopeo(verb: str, *args: str, r, arch: str | None = None) -> subprocess.CompletedProcess:
    """skopeo VERB with the nodes' pull account and the registry CA (copy: for its source)."""
    certs = r.workstation / "skopeo-certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(r.ca, certs / "ca.crt")
    src = "src-" if verb == "copy" else ""
    head = ["skopeo"] + (["--override-arch", arch] if arch else []) + [verb]
    return subprocess.run(head + [f"--{src}cert-dir", str(certs), f"--{src}creds", "{}:{}".format(*r.pull), *args],
                          capture_output=True, text=True, timeout=120)


# ---- real builders, real registry, an independent reader --------------------------------------


@pytest.mark.parametrize("builder", ["buildah", "podman"])
def test_a_multi_arch_image_built_by_a_real_builder_is_pushed_and_read_back_by_digest(registries, tmp_path, builder):
    if shutil.which(builder) is None or shutil.which("skopeo") is None:
        pytest.fail(f"{builder} or skopeo is not installed: make setup-host")
    r = registries
    app = scratch_app(tmp_path)
    done = bake_py("app", "--registry", r.urls["push"], "build", str(app), "--tag", "v1", "--builder", builder,
                   "--platform", "linux/arm64,linux/amd64", cwd=r.workstation)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((r.workstation / "out/apps/hello.json").read_text())
    assert state["image"] == "ceil-router.ceil.internal:5002/apps/hello:v1"
    digest = state["image_digest"]
    assert digest in done.stdout

    # skopeo reads it from the nodes' read-only port with the nodes' account, by digest.
    ref = "docker://{}/apps/hello@{}".format(r.urls["private"].removeprefix("https://"), digest)
    raw = skopeo("inspect", "--raw", ref, r=r)
    assert raw.returncode == 0, raw.stderr
    assert oci.digest(raw.stdout.encode()) == digest
    index = json.loads(raw.stdout)
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"arm64", "amd64"}
    copied = skopeo("copy", ref, f"oci:{tmp_path / 'copy'}:hello", r=r, arch="arm64")
    assert copied.returncode == 0, copied.stderr
    layout = oci.read_layout(tmp_path / "copy")
    layer = next(p for d, p in layout.blobs.items() if d != layout.doc["config"]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer.read_bytes())) as tar:
        assert tar.extractfile("hello.txt").read() == b"hello from a user's app\n"


def test_the_push_account_is_needed_and_a_wrong_ca_is_refused(registries, tmp_path):
    r = registries
    image = oci.image_index({"linux/arm64": oci.scratch_image({"a.txt": b"a"})})
    with pytest.raises(oci.OciError, match="401"):
        oci.Registry(r.urls["push"], r.pull, r.ca).push("apps/x", "v1", image)
    with pytest.raises(oci.OciError, match="405|401"):  # the read-only port refuses even the push account
        oci.Registry(r.urls["private"], r.push, r.ca).push("apps/x", "v1", image)
    other = tmp_path / "other.crt"
    other.write_bytes(__import__("ceil.k3s.pki", fromlist=["make_ca"]).make_ca("other").cert_pem)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        oci.Registry(r.urls["push"], r.push, str(other)).push("apps/x", "v1", image)


def test_an_index_and_its_images_round_trip_through_the_registry(registries):
    r = registries
    index = oci.image_index({p: oci.scratch_image({"which": p.encode()}, arch=p.split("/")[1])
                             for p in ("linux/arm64", "linux/amd64")})
    pushed = oci.Registry(r.urls["push"], r.push, r.ca).push("apps/two", "v2", index)
    back = oci.Registry(r.urls["private"], r.pull, r.ca).pull("apps/two", pushed["digest"])
    assert back.digest == index.digest and [c.digest for c in back.children] == [c.digest for c in index.children]
    assert back.all_blobs() == index.all_blobs()


# ---- the pieces, without tools ----------------------------------------------------------------


def test_names_and_tags_are_checked_with_the_fix():
    assert apps.check_name("piphp") == "piphp"
    for bad in ("PiPHP", "-x", "a_b", "x" * 41, ""):
        with pytest.raises(CeilError, match="lower-case letters"):
            apps.check_name(bad)
    with pytest.raises(CeilError, match="--tag '-v1'.*e.g. v1"):
        apps.check_tag("-v1")
    assert apps.check_tag(apps.default_tag()).count("-") == 1


def test_each_builder_leaves_an_oci_archive_of_every_platform(tmp_path):
    ctx, cf, out = tmp_path, tmp_path / "Containerfile", tmp_path / "a.tar"
    docker = apps.build_commands("docker", ctx, cf, ("linux/arm64", "linux/amd64"), out, "m")
    assert docker == [["docker", "buildx", "build", "--platform", "linux/arm64,linux/amd64", "-f", str(cf),
                       "--output", f"type=oci,dest={out}", str(ctx)]]
    for builder in ("podman", "buildah"):
        build, push = apps.build_commands(builder, ctx, cf, ("linux/arm64",), out, "m")
        assert build[:2] == [builder, "build"] and "--manifest" in build
        assert push == [builder, "manifest", "push", "--all", "m", f"oci-archive:{out}"]


def test_no_builder_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(apps.shutil, "which", lambda name: None)
    with pytest.raises(CeilError, match="no image builder found.*apt install buildah"):
        apps.pick_builder()
    with pytest.raises(CeilError, match="helm not found.*helm.sh"):
        apps.helm_binary()


def test_a_layout_archive_cannot_write_outside_its_folder(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(oci.OciError, match="outside the layout"):
        oci.open_layout(evil, tmp_path / "work")
    assert not (tmp_path / "escaped").exists()
    with pytest.raises(oci.OciError, match="not an OCI image layout.*type=oci"):
        oci.read_layout(tmp_path)


def test_a_build_missing_a_platform_is_refused_before_anything_is_pushed(tmp_path):
    one = oci.image_index({"linux/amd64": oci.scratch_image({"a": b"a"}, arch="amd64")})
    root = write_layout(tmp_path / "layout", one)
    target = apps.Target(None, None, "https://127.0.0.1:1")  # never reached
    with pytest.raises(CeilError, match="made images for linux/amd64, not for linux/arm64, linux/amd64: nothing"):
        apps.push_archive(target, root, "x", "v1", tmp_path, ("linux/arm64", "linux/amd64"))


def test_a_layout_blob_changed_after_the_build_is_not_pushed(tmp_path):
    image = oci.scratch_image({"a": b"a"})
    root = write_layout(tmp_path / "layout", image)
    layout = oci.read_layout(root)
    assert layout.digest == image.digest
    layer = next(p for d, p in layout.blobs.items() if d != layout.doc["config"]["digest"])
    layer.write_bytes(b"tampered")

    class Refusing(oci.Registry):
        def _call(self, method, path, data=None, headers=None):
            return (404, {}, b"") if method == "HEAD" else pytest.fail("nothing may be sent")
    with pytest.raises(oci.OciError, match="changed on disk"):
        Refusing("https://127.0.0.1:1").push("apps/x", "v1", layout)


def test_deploy_pins_the_pushed_digest_and_reads_from_the_read_only_port(tmp_path):
    from ceil.config import parse_cluster
    from ceil.secrets import SecretStore
    from ceil import registry_access as access
    from tests.registry_lab import BASE

    store = SecretStore(tmp_path / "secrets")
    access.ensure_ca(store)
    access.password(store, "push")
    target = apps.Target.of(parse_cluster(BASE), store)
    assert target.url == "https://ceil-router.ceil.internal:5002"
    with pytest.raises(CeilError, match="no image_digest: run `python bake.py app build`"):
        apps.deploy_objects(target, "piphp", {"chart_version": "0.1.0"})
    with pytest.raises(CeilError, match=r"no app 'nosuch' was built here .* app ship FOLDER"):
        apps.deploy_objects(target, "nosuch", {})  # no state file: not "has no image_digest"
    digest = "sha256:" + "b" * 64
    secret, ca, chart = apps.deploy_objects(target, "piphp", {"image_digest": digest, "chart_version": "0.1.0",
                                                               "chart_name": "piphp"})
    assert secret["type"] == "kubernetes.io/basic-auth" and secret["stringData"]["username"] == "pull"
    assert ca["data"]["ca.crt"] == store.read("registry/ca.crt").decode()
    spec = chart["spec"]
    assert spec["chart"] == "oci://ceil-router.ceil.internal:5000/charts/piphp" and spec["version"] == "0.1.0"
    assert spec["authSecret"] == {"name": secret["metadata"]["name"]}
    assert spec["repoCAConfigMap"] == {"name": ca["metadata"]["name"]}
    values = yaml.safe_load(spec["valuesContent"])
    assert values == {"image": {"repository": "ceil-router.ceil.internal:5002/apps/piphp", "digest": digest},
                      "host": "piphp.apps.ceil.internal"}
    shown = apps.for_git([secret, ca, chart])
    assert [o["kind"] for o in shown] == ["ConfigMap", "HelmChart"]
    assert access.password(store, "pull") not in yaml.safe_dump_all(shown)


def test_state_is_merged_and_replaced_whole(tmp_path):
    apps.write_state(tmp_path, "piphp", image_digest="sha256:1")
    apps.write_state(tmp_path, "piphp", chart_version="0.1.0")
    assert apps.read_state(tmp_path, "piphp") == {"image_digest": "sha256:1", "chart_version": "0.1.0"}
    assert [p.name for p in (tmp_path / "apps").iterdir()] == ["piphp.json"]


def test_bake_py_app_without_a_baked_router_says_what_to_do(tmp_path):
    from tests.registry_lab import BASE

    (tmp_path / "cluster.yaml").write_text(BASE)
    app = scratch_app(tmp_path)
    done = bake_py("app", "build", str(app), cwd=tmp_path)
    assert done.returncode != 0 and "bake the router first" in done.stderr + done.stdout


# ---- the demo app's own code, run by a real PHP ------------------------------------------------


def test_piphp_answers_its_health_check_and_says_which_pod_served(tmp_path):
    """apps/piphp/src/index.php under PHP's built-in server (Apache runs it the same way per request)."""
    import socket
    import time
    import urllib.request

    if shutil.which("php") is None:
        pytest.fail("php is not installed: make setup-host (apt install php-cli)")
    src = REPO / "apps/piphp/src"
    lint = subprocess.run(["php", "-l", str(src / "index.php")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NODE_NAME": "two", "APP_VERSION": "1.0.0"}
    server = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", str(src / "index.php")], cwd=src, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                health = urllib.request.urlopen(base + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        assert health == b"ok\n"
        page = json.loads(urllib.request.urlopen(base + "/?work=1000", timeout=10).read())
        assert page == {"app": "piphp", "pod": socket.gethostname(), "node": "two", "version": "1.0.0", "work": 1000}
        # The work per request is bounded: a hostile ?work= cannot pin a Pi's CPU for minutes.
        assert json.loads(urllib.request.urlopen(base + "/?work=999999999", timeout=30).read())["work"] == 2000000
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_an_archive_built_elsewhere_is_pushed_and_recorded(registries, tmp_path):
    """`bake.py app push`: a CI job's OCI archive (here a tar of a layout), with its platforms checked."""
    r = registries
    index, archive = ci_archive(tmp_path)
    done = bake_py("app", "--registry", r.urls["push"], "push", str(archive), "--name", "from-ci", "--tag", "v7",
                   "--platform", "linux/arm64,linux/amd64", cwd=r.workstation)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((r.workstation / "out/apps/from-ci.json").read_text())
    assert state["image_digest"] == index.digest
    assert oci.Registry(r.urls["private"], r.pull, r.ca).pull("apps/from-ci", "v7").digest == index.digest
    refused = bake_py("app", "--registry", r.urls["push"], "push", str(archive), "--name", "from-ci",
                      "--platform", "linux/arm64,linux/arm/v7", cwd=r.workstation)
    assert refused.returncode != 0 and "nothing was pushed" in refused.stderr + refused.stdout



# ---- the autoscaler's metric follows the cluster's add-ons ---------------------------------------


@pytest.mark.parametrize("addons, expected", [
    ("", None),  # monitoring is on by default, but without prometheus-adapter nothing serves the rate
    ("addons: {enable: [custom-metrics]}\n", {"requestsPerSecond": 10}),
    ("addons: {enable: [custom-metrics], disable: [custom-metrics]}\n", None),
    ("addons: {enabled: false, enable: [custom-metrics]}\n", None),
    ("addons: {enable: [custom-metrics, canary]}\n", None),  # under Flagger: CPU (the chart refuses both)
])
def test_deploy_asks_for_requests_per_second_only_where_custom_metrics_serves_them(tmp_path, addons, expected):
    """The value the demo chart's HPA turns into an Object metric on traefik_requests_per_second
    (apps/piphp/chart/templates/hpa.yaml; rendered and dry-run in tests/apiserver/test_app_chart.py)."""
    from ceil.config import parse_cluster
    from ceil.secrets import SecretStore
    from ceil import registry_access as access
    from tests.registry_lab import BASE

    store = SecretStore(tmp_path / "secrets")
    access.ensure_ca(store)
    access.password(store, "push")
    target = apps.Target.of(parse_cluster(BASE + addons), store)
    state = {"image_digest": "sha256:" + "b" * 64, "chart_version": "0.1.0"}
    *_, chart = apps.deploy_objects(target, "piphp", state)
    values = yaml.safe_load(chart["spec"]["valuesContent"])
    assert values.get("autoscaling") == expected
    assert values["image"]["digest"] == state["image_digest"] and values["host"] == "piphp.apps.ceil.internal"
    # `deploy --print` (for a GitOps repository, no cluster reached) writes the same HelmChart.
    assert apps.for_git(apps.deploy_objects(target, "piphp", state))[-1] == chart


def test_the_demo_chart_declares_the_key_deploy_sets_and_has_it_off():
    """Off in the chart, so a cluster without custom-metrics (or `helm install` by hand) keeps CPU."""
    from ceil.config import parse_cluster
    from tests.registry_lab import BASE

    declared = yaml.safe_load((REPO / "apps/piphp/chart/values.yaml").read_text())["autoscaling"]
    assert declared["requestsPerSecond"] == 0 and declared["targetCPUUtilizationPercentage"] == 60
    on = apps.autoscaling_values(parse_cluster(BASE + "addons: {enable: [custom-metrics]}\n"))
    assert set(on["autoscaling"]) <= set(declared)


@pytest.mark.parametrize("addons, canary", [("", None), ("addons: {enable: [canary]}\n", {"enabled": True}),
                                            ("addons: {enable: [canary], disable: [canary]}\n", None)])
def test_deploy_releases_through_flagger_where_cluster_yaml_runs_it(tmp_path, addons, canary):
    """The demo app's canary release (issue 20, phase 7-8): with the add-on canary on, `deploy` sets
    the chart's canary.enabled, and each new image digest is then a release Flagger judges."""
    from ceil.config import parse_cluster
    from ceil.secrets import SecretStore
    from ceil import registry_access as access
    from tests.registry_lab import BASE

    store = SecretStore(tmp_path / "secrets")
    access.ensure_ca(store)
    access.password(store, "push")
    target = apps.Target.of(parse_cluster(BASE + addons), store)
    *_, chart = apps.deploy_objects(target, "piphp", {"image_digest": "sha256:" + "b" * 64, "chart_version": "0.3.0"})
    assert yaml.safe_load(chart["spec"]["valuesContent"]).get("canary") == canary
    declared = yaml.safe_load((REPO / "apps/piphp/chart/values.yaml").read_text())["canary"]
    assert declared["enabled"] is False  # off in the chart: `helm install` by hand needs no Flagger


def test_deploy_through_git_commits_the_apps_objects_where_flux_syncs(tmp_path):
    """Issue 20 #4, the light CI path for Pis (built on the workstation or a CI runner, no build in
    the cluster): `app deploy --git CHECKOUT` writes the objects `--print` shows into
    gitops.path/apps/NAME.yaml of the user's checkout and commits them; the next digest is the
    next commit, the same digest no commit at all. The pull account's Secret never goes into Git."""
    from ceil.secrets import SecretStore
    from ceil import registry_access as access
    from tests.registry_lab import BASE

    store = SecretStore(tmp_path / "secrets")
    access.ensure_ca(store)
    access.password(store, "push")
    access.password(store, "pull")  # (made by the router's bake)
    (tmp_path / "cluster.yaml").write_text(BASE + "gitops: {enabled: true, url: 'https://git.example.org/me/fleet',"
                                           " path: ./clusters/home}\n")
    repo = tmp_path / "fleet"
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    repo.mkdir()
    git("init", "-q")
    git("config", "user.email", "me@example.org")
    git("config", "user.name", "me")
    digest = "sha256:" + "c" * 64
    apps.write_state(tmp_path / "out", "piphp", image_digest=digest, chart_version="0.1.0", chart_name="piphp")
    deploy = ["app", "deploy", "piphp", "--git", str(repo)]
    done = bake_py(*deploy, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    written = repo / "clusters/home/apps/piphp.yaml"
    assert f"committed clusters/home/apps/piphp.yaml in {repo}" in done.stdout
    objs = [d for d in yaml.safe_load_all(written.read_text()) if d]
    assert [o["kind"] for o in objs] == ["ConfigMap", "HelmChart"]  # no Secret
    assert access.password(store, "pull") not in written.read_text()
    assert yaml.safe_load(objs[1]["spec"]["valuesContent"])["image"]["digest"] == digest
    assert git("log", "--format=%s") == f"app piphp: image {digest}, chart 0.1.0\n"
    again = bake_py(*deploy, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to commit" in again.stdout
    newer = "sha256:" + "d" * 64
    apps.write_state(tmp_path / "out", "piphp", image_digest=newer)
    assert bake_py(*deploy, cwd=tmp_path).returncode == 0
    assert git("log", "--format=%s").splitlines() == [f"app piphp: image {newer}, chart 0.1.0",
                                                       f"app piphp: image {digest}, chart 0.1.0"]
    assert git("status", "--porcelain") == ""
    not_git = bake_py("app", "deploy", "piphp", "--git", str(tmp_path / "out"), cwd=tmp_path)
    assert not_git.returncode != 0 and "is not a Git checkout" in not_git.stderr + not_git.stdout
