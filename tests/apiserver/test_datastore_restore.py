"""`bake.py datastore backup` and `restore` against the real control plane (issue 19, day two):
the snapshot is taken by the script the server runs, from kine's live SQLite database while the
API server writes to it; the lab is then stopped, its database lost, and started again on the
snapshot as a new server card's step installs it (ceil_restore_datastore). What k3s adds on a
real card (its bootstrap data, which brings the encryption and service-account keys back from
the datastore under the same token) is stood in for by the lab keeping those two keys."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from ceil import datastore
from ceil.config import parse_cluster

from .conftest import kubectl

REPO = Path(__file__).resolve().parents[2]
CLUSTER = ("ssh: {authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t']}\n"
           "router: {uplink: {type: ethernet}}\nnodes: [{name: restore-server, role: server}]\n")
LIB = REPO / "firstboot/common/lib/ceil-lib.sh"


def test_a_live_snapshot_brings_the_cluster_back_on_a_new_card(lab, kubeconfig, tmp_path):
    kubectl(kubeconfig, "create", "namespace", "restore-check")
    kubectl(kubeconfig, "-n", "restore-check", "create", "configmap", "kept", "--from-literal=colour=green")
    kubectl(kubeconfig, "-n", "restore-check", "create", "secret", "generic", "kept", "--from-literal=word=restored-canary")
    # The server's Node, its kubelet reporting the k3s it runs (as k3s's kubelet does): what tells a
    # restore which k3s wrote the snapshot.
    host = parse_cluster(CLUSTER).hostname("restore-server")  # the Node's name: the host name k3s registers
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": host}}
    (tmp_path / "node.json").write_text(json.dumps(node))
    kubectl(kubeconfig, "apply", "-f", str(tmp_path / "node.json"))
    kubectl(kubeconfig, "patch", "node", host, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"nodeInfo": {"kubeletVersion": "v1.35.2+k3s1"}}}))
    live = lab.dir / "db" / "state.db"
    script = datastore.BACKUP_SCRIPT.replace(datastore.DB_ON_SERVER, str(live))
    done = subprocess.run([sys.executable, "-"], input=script.encode(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(done.stdout)
    assert datastore.check_snapshot(snapshot) > 0
    cluster = parse_cluster(CLUSTER)
    assert datastore.snapshot_version(cluster, snapshot) == "v1.35.2+k3s1"  # from kine's protobuf
    kubectl(kubeconfig, "-n", "restore-check", "create", "configmap", "after-the-backup")

    # The card is lost; a new one starts with the snapshot staged among its secrets.
    staged = tmp_path / "etc/ceil/secrets/k3s/restore/state.db"
    staged.parent.mkdir(parents=True)
    shutil.copy(snapshot, staged)
    lab.stop()
    try:
        shutil.rmtree(lab.dir / "db")
        done = subprocess.run(["sh", "-c", f'. "{LIB}" && ceil_restore_datastore "$1" "$2"', "sh",
                               str(staged), str(lab.dir / "db")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "restored" in done.stderr, done.stderr
        assert not staged.exists()
    finally:
        lab.start()

    assert kubectl(kubeconfig, "-n", "restore-check", "get", "configmap", "kept",
                   "-o", "jsonpath={.data.colour}").stdout == "green"
    word = kubectl(kubeconfig, "-n", "restore-check", "get", "secret", "kept", "-o", "jsonpath={.data.word}").stdout
    assert word == "cmVzdG9yZWQtY2FuYXJ5"  # base64 of restored-canary: decrypted with the kept key
    gone = kubectl(kubeconfig, "-n", "restore-check", "get", "configmap", "after-the-backup", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    db = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    rows = db.execute("SELECT value FROM kine WHERE name = '/registry/secrets/restore-check/kept'").fetchall()
    db.close()
    assert rows and all(v.startswith(b"k8s:enc:aescbc:v1:") for (v,) in rows)  # still encrypted at rest
