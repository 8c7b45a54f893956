"""The fast layer: a real Kubernetes control plane on this machine, no QEMU (marker `apiserver`,
`make test-apiserver`). One lab per session, started from a cluster's baked PKI; see lab.py.

It needs the build from `make apiserver` (testbed/apiserver.py) and root (a network namespace).
Missing either is a failure that says what to run, never a skip: `make test` builds first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ceil.config import load_cluster
from ceil.secrets import SecretStore
from testbed import apiserver as build
from tests.bake_cli import bake_py

from .lab import ApiServerLab

REPO = Path(__file__).resolve().parents[2]
# Captured at import: the unit tests' autouse fixture points CEIL_CACHE at a temporary folder.
BUILD = build.lookup()


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.apiserver)


@pytest.fixture(scope="session")
def workstation(tmp_path_factory, ssh_pubkey) -> Path:
    """A user's folder: cluster.yaml (default network: server one at 10.42.0.11) and secrets/."""
    from testbed.apiserver import STAND_IN_K3S

    d = tmp_path_factory.mktemp("workstation")
    (d / "cluster.yaml").write_text(
        "flavor: ubuntu-24.04-raspi\n"
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
        "router: {uplink: {type: ethernet, interface: eth1}}\n"
        "nodes:\n  - {name: one, role: server}\n  - {name: two}\n  - {name: three}\n"
        # The release the control plane built here plays (its kube-apiserver reports it).
        f"kubernetes: {{k3s_version: {STAND_IN_K3S}}}\n"
    )
    return d




@pytest.fixture(scope="session")
def kubeconfig(workstation) -> Path:
    """The admin kubeconfig, written by `bake.py kubeconfig` from the cluster CAs, made first as
    the bake makes them (the command only uses a cluster's CAs, never makes them)."""
    from ceil.k3s.pki import ensure_k3s_cas

    ensure_k3s_cas(SecretStore(workstation / "secrets"))
    done = bake_py("kubeconfig", cwd=workstation)
    assert done.returncode == 0, done.stderr
    return workstation / "out" / "kubeconfig"


@pytest.fixture(scope="session")
def lab(workstation, kubeconfig, tmp_path_factory):
    if BUILD is None:
        pytest.fail("no Kubernetes control-plane build for the fast layer: run `make apiserver` first")
    if os.geteuid() != 0:
        pytest.fail("the fast layer runs the API server in a network namespace: run it as root")
    cluster = load_cluster(workstation / "cluster.yaml")
    lab = ApiServerLab(BUILD, cluster, SecretStore(workstation / "secrets"), tmp_path_factory.mktemp("server"),
                       suffix=str(os.getpid() % 100000))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def kubectl(kubeconfig: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=30s", *args],
                          capture_output=True, text=True, timeout=90, input=input)
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done


def apply_objects(kubeconfig: Path, docs: list[dict]) -> None:
    """Server-side apply, as the add-on job applies (field manager ceil)."""
    import yaml

    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=ceil", "-f", "-", input=yaml.safe_dump_all(docs))


def install_job(kubeconfig: Path, chart: str, timeout: float = 120) -> dict:
    """The install Job k3s's helm-controller made for HelmChart kube-system/`chart`, once its
    status names one (the Job's pod would need a node and the klipper-helm image: none here)."""
    import json
    import time

    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        found = json.loads(kubectl(kubeconfig, "get", "helmchart", "-n", "kube-system", chart, "-o", "json").stdout)
        if found.get("status", {}).get("jobName"):
            break
        time.sleep(2)
    job_name = found.get("status", {}).get("jobName")
    assert job_name == f"helm-install-{chart}", found.get("status")
    return json.loads(kubectl(kubeconfig, "get", "job", "-n", "kube-system", job_name, "-o", "json").stdout)


def install_crd_files(kubeconfig: Path, paths, timeout: float = 60) -> None:
    """Apply the CRD files and wait until every CRD in them is Established (asked by name until
    then: `kubectl wait` right after the apply fails on a CRD whose status is not written yet)."""
    import json
    import time

    names = []
    for path in paths:
        done = kubectl(kubeconfig, "apply", "--server-side", "--field-manager=ceil-tests", "-f", str(path), "-o", "name")
        names += [n for n in done.stdout.split() if n.startswith("customresourcedefinition")]
    deadline = time.monotonic() + timeout
    while True:
        found = json.loads(kubectl(kubeconfig, "get", *names, "-o", "json").stdout)["items"]
        waiting = [c["metadata"]["name"] for c in found
                   if not any(x["type"] == "Established" and x["status"] == "True"
                              for x in (c.get("status") or {}).get("conditions") or [])]
        if not waiting:
            return
        assert time.monotonic() < deadline, f"CRDs not Established after {timeout:.0f} s: {', '.join(waiting)}"
        time.sleep(1)


def install_crds(kubeconfig: Path, sources) -> None:
    """Every CRD in config/crd/bases/ of each source's Go module, as the project's chart installs
    them (a controller does not start while a kind it watches is unknown)."""
    from testbed import crds

    install_crd_files(kubeconfig, [path for source in sources
                                   for path in sorted((crds.module_dir(source) / "config/crd/bases").glob("*.yaml"))])
