"""The baked PKI against a real kube-apiserver: the workstation's kubeconfig works unchanged, and
nothing signed by another CA gets in."""

from __future__ import annotations

import json
import sqlite3

import yaml

from ceil.k3s import pki
from testbed.apiserver import kubernetes_version

from .conftest import kubectl


def test_baked_kubeconfig_reaches_the_server_as_cluster_admin(lab, kubeconfig):
    namespaces = kubectl(kubeconfig, "get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(namespaces)
    assert kubectl(kubeconfig, "auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"
    who = json.loads(kubectl(kubeconfig, "auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == "system:admin" and "system:masters" in who["groups"]


def test_the_server_runs_the_kubernetes_of_the_default_k3s_release(lab, kubeconfig):
    version = json.loads(kubectl(kubeconfig, "version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert version == kubernetes_version()


def _rewrite(kubeconfig, tmp_path, **user_or_ca) -> str:
    doc = yaml.safe_load(kubeconfig.read_text())
    for key, value in user_or_ca.items():
        section = doc["clusters"][0]["cluster"] if key == "certificate-authority-data" else doc["users"][0]["user"]
        section[key] = value
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_client_certificate_from_a_foreign_ca_is_refused(lab, kubeconfig, tmp_path):
    import base64

    stranger = pki.issue_client_cert(pki.make_ca("someone-else"), "system:admin", ["system:masters"])
    forged = _rewrite(kubeconfig, tmp_path, **{
        "client-certificate-data": base64.b64encode(stranger.cert_pem).decode(),
        "client-key-data": base64.b64encode(stranger.key_pem).decode()})
    done = kubectl(forged, "get", "namespaces", check=False)
    assert done.returncode != 0 and "Unauthorized" in done.stderr, done.stderr


def test_the_server_is_refused_by_a_kubeconfig_that_trusts_another_ca(lab, kubeconfig, tmp_path):
    import base64

    other = _rewrite(kubeconfig, tmp_path, **{
        "certificate-authority-data": base64.b64encode(pki.make_ca("not-the-cluster").cert_pem).decode()})
    done = kubectl(other, "get", "namespaces", check=False)
    assert done.returncode != 0 and "certificate" in done.stderr, done.stderr


def test_secrets_are_encrypted_at_rest_as_the_server_config_asks(lab, kubeconfig):
    assert lab.config["secrets-encryption"] is True  # ceil's rendered server config
    kubectl(kubeconfig, "create", "secret", "generic", "ceil-at-rest", "--from-literal=word=plaintext-canary")
    db = sqlite3.connect(f"file:{lab.dir}/db/state.db?mode=ro", uri=True)
    rows = db.execute("SELECT value FROM kine WHERE name = '/registry/secrets/default/ceil-at-rest'").fetchall()
    db.close()
    assert rows and all(v.startswith(b"k8s:enc:aescbc:v1:") and b"plaintext-canary" not in v for (v,) in rows)
