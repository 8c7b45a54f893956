"""The gitops add-on with Flux's real controllers (issue 20 #4): the cluster follows a Git repository.

Flux's source-controller and kustomize-controller, built from the Go modules of the versions the
add-on names (testbed/addon_controllers.py), run as processes in the lab's namespace against its real API
server, as the flux2 chart runs them in pods. What the add-on job applies (the flux-system
namespace, the private repository's Secret made from gitops.token, the GitRepository and the
Kustomization, all from ceil's templates) is applied by the real job. The repository is served
over HTTPS with a login by Git's own http-backend (gitserver.py) on this machine's side of the
lab's link, so the controller clones it with the Secret's user name and token, the way it reaches
GitHub or Gitea.

Standing in for the flux2 chart's install (no image is pulled here): the CRDs from the controller
modules and the two processes. What runs only on hardware: the chart and its pods (`make verify`
checks the same sync there).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from ceil.addons.catalog import Catalog
from ceil.addons.hooks import GITOPS_TOKEN, GITOPS_USERNAME, cluster_secret
from ceil.addons.render import build_plan
from ceil.config import load_cluster
from ceil.config.schema import GitOps
from testbed import addon_controllers, crds
from tests.infra.ceil_infra import helpers

from .conftest import install_crds, kubectl
from .gitserver import GitServer
from .lab import HOST_SIDE
from .test_addons_job import run_job

BUILT = addon_controllers.lookup()  # captured at import, before the unit tests' CEIL_CACHE fixture
TOKEN, USER = "glpat-ceil-fast-layer-0123", "flux-reader"
SOURCE_PORT = 9790  # source-controller's artifact server, in the lab's namespace
SYNC_TIMEOUT = 120


def app_files(name: str, data: str) -> dict[str, str]:
    """What a user keeps in the repository's folder: a namespace and a ConfigMap in it."""
    return {"clusters/pi/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: gitops-demo}\n",
            f"clusters/pi/{name}.yaml": yaml.safe_dump({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "gitops-demo"},
                "data": {"greeting": data}})}


@pytest.fixture(scope="module")
def forge(lab, tmp_path_factory):
    """On this machine's end of the lab's link (which must exist first), reached from the namespace."""
    server = GitServer(tmp_path_factory.mktemp("forge"), HOST_SIDE, USER, TOKEN)
    work = server.create("cluster")
    head = server.commit(work, app_files("first", "hello"), "first app")
    url = server.start()
    server.work, server.url, server.heads = work, f"{url}/cluster.git", [head]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(workstation, forge):
    base = load_cluster(workstation / "cluster.yaml")
    return base.model_copy(update={"gitops": GitOps(enabled=True, url=forge.url, path="./clusters/pi",
                                                    interval="5s", token=TOKEN, username=USER)})


@pytest.fixture(scope="module")
def flux_crds(lab, kubeconfig):
    """Every CRD of the two controllers' modules, as the chart's `installCRDs: true` applies them
    (a controller does not start while a kind it watches is unknown), the add-on's own among them."""
    sources = Catalog().get("gitops").crds
    assert {s.module.removeprefix(addon_controllers.FLUX) for s in sources} == set(addon_controllers.FLUX_CONTROLLERS)
    for source in sources:
        assert all(p.parent.name == "bases" for p in crds.files(source)), source.paths
    install_crds(kubeconfig, sources)


@pytest.fixture(scope="module")
def controllers(lab, forge, flux_crds):
    """The two controllers with the flags the flux2 chart gives them, their addresses on loopback."""
    if BUILT is None:
        pytest.fail("no add-on controllers for the fast layer: run `make addon-controllers` first")
    storage = lab.dir / "flux-storage"
    storage.mkdir(exist_ok=True)
    # The forge's CA as the pods' trust store would hold a public forge's: Go reads SSL_CERT_FILE.
    env = {"KUBECONFIG": str(lab.kubeconfig("flux-controllers", "system:masters")), "RUNTIME_NAMESPACE": "flux-system",
           "SSL_CERT_FILE": str(forge.ca_file)}
    common = ["--watch-all-namespaces", "--log-level=debug", "--log-encoding=json"]
    lab.spawn("source-controller", [str(BUILT / "source-controller"), *common, f"--storage-path={storage}",
                                    f"--storage-addr=127.0.0.1:{SOURCE_PORT}",
                                    f"--storage-adv-addr=127.0.0.1:{SOURCE_PORT}",
                                    "--metrics-addr=127.0.0.1:9791", "--health-addr=127.0.0.1:9792"], env)
    lab.spawn("kustomize-controller", [str(BUILT / "kustomize-controller"), *common,
                                       "--metrics-addr=127.0.0.1:9793", "--health-addr=127.0.0.1:9794"], env)
    yield lab
    for name in ("kustomize-controller", "source-controller"):
        lab.kill(name)


@pytest.fixture(scope="module")
def synced(controllers, cluster, kubeconfig, forge, tmp_path_factory):
    """The add-on job's run of the gitops add-on, its chart install standing in as above."""
    plan = build_plan(cluster, names=["gitops"])
    (addon,) = plan["addons"] = [a for a in plan["addons"] if a["name"] == "gitops"]
    install = addon["steps"][0]
    assert [m["kind"] for m in install["manifests"]] == ["Namespace", "HelmChart"]
    install["manifests"] = install["manifests"][:1]  # the chart itself: CRDs and processes instead
    install["wait_for"] = {"crds": install["wait_for"]["crds"]}
    tmp = tmp_path_factory.mktemp("gitops-job")
    for name in (GITOPS_TOKEN, GITOPS_USERNAME):  # as the bake writes them to /etc/ceil/secrets
        (tmp / name).write_text(cluster_secret(cluster, name))
    done, status = run_job(plan, kubeconfig, tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert status["addons"]["gitops"]["state"] == "ready", status
    return plan


def get(kubeconfig: Path, *what: str) -> dict | None:
    done = kubectl(kubeconfig, "get", *what, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def wait_for_revision(kubeconfig: Path, sha: str, lab) -> dict:
    """The Kustomization once it applied commit `sha`."""
    def applied() -> dict | None:
        sync = get(kubeconfig, "kustomization.kustomize.toolkit.fluxcd.io", "-n", "flux-system", "ceil")
        return sync if sync and (sync.get("status") or {}).get("lastAppliedRevision", "").endswith(sha) else None

    def explain() -> str:
        statuses = {kind: (get(kubeconfig, kind, "-n", "flux-system", "ceil") or {}).get("status")
                    for kind in ("kustomization.kustomize.toolkit.fluxcd.io", "gitrepository.source.toolkit.fluxcd.io")}
        return f"{statuses}\n{lab.tails('source-controller', 'kustomize-controller', chars=3000)}"

    return helpers.wait_for(f"Flux applying {sha}", applied, timeout=SYNC_TIMEOUT, every=2, explain=explain)


def test_flux_clones_the_repository_with_the_token_and_applies_its_folder(synced, kubeconfig, forge, controllers):
    sync = wait_for_revision(kubeconfig, forge.heads[-1], controllers)
    assert sync["status"]["lastAppliedRevision"] == f"main@sha1:{forge.heads[-1]}"
    first = get(kubeconfig, "configmap", "-n", "gitops-demo", "first")
    assert first and first["data"] == {"greeting": "hello"}
    # The clone went through the login the forge checks, from the Secret the job made.
    assert ("/cluster.git/info/refs", 200) in forge.requests
    secret = get(kubeconfig, "secret", "-n", "flux-system", "gitops-auth")
    assert set(secret["data"]) == {"username", "password"}


def test_a_commit_is_applied_and_what_it_removed_is_pruned(synced, kubeconfig, forge, controllers):
    wait_for_revision(kubeconfig, forge.heads[0], controllers)
    files = {**app_files("second", "again"), "clusters/pi/first.yaml": None}
    forge.heads.append(forge.commit(forge.work, files, "second app replaces the first"))
    wait_for_revision(kubeconfig, forge.heads[-1], controllers)
    assert get(kubeconfig, "configmap", "-n", "gitops-demo", "second")["data"] == {"greeting": "again"}
    deadline = time.monotonic() + 30
    while get(kubeconfig, "configmap", "-n", "gitops-demo", "first") is not None:
        assert time.monotonic() < deadline, ("the ConfigMap removed from the repository is still in the cluster;"
                                             f" {controllers.tails('kustomize-controller', chars=2000)}")
        time.sleep(1)


def test_make_verify_passes_on_a_synced_cluster_and_fails_when_the_token_is_revoked(
        synced, kubeconfig, forge, controllers, cluster):
    """The hardware check (tests/infra/test_addons.py), here against the real controllers."""
    from ceil.addons.job.kube import KubeApi, KubeconfigTransport
    from tests.infra.test_addons import test_flux_is_in_sync_with_the_repository as verify_check

    kube = KubeApi(KubeconfigTransport(str(kubeconfig)), log=lambda m: None)
    wait_for_revision(kubeconfig, forge.heads[-1], controllers)
    verify_check({}, kube, cluster)
    forge.password = "revoked-" + TOKEN  # the forge no longer takes the token the cluster holds
    try:
        forge.heads.append(forge.commit(forge.work, app_files("third", "unseen"), "after the token was revoked"))
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            try:
                verify_check({}, kube, cluster)
            except AssertionError as failed:
                assert "cannot fetch" in str(failed) and "gitops.token" in str(failed), failed
                break
            assert time.monotonic() < deadline, ("make verify still passes with the token revoked; "
                                                 f"{controllers.tails('source-controller', chars=2000)}")
            time.sleep(2)
        assert get(kubeconfig, "configmap", "-n", "gitops-demo", "third") is None
        assert ("/cluster.git/info/refs", 401) in forge.requests
    finally:
        forge.password = TOKEN
    wait_for_revision(kubeconfig, forge.heads[-1], controllers)
    verify_check({}, kube, cluster)
