"""Hooks of the `datastore-snapshot` (server) and `datastore-pull` (router) features: the router
pulls snapshots of a one-server cluster's datastore (ceil/snapshot.py says how, and why that is
safe on the LAN). Two secrets, made once per cluster in secrets/datastore/: the router's SSH key,
whose public half the server accepts for its snapshot command only, and the HMAC key both cards
hold. A server re-baked later gets the same two, so the router goes on pulling from it."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Cluster
from ..datastore import BACKUP_SCRIPT, HMAC_SECRET, ON_ROUTER, PULL_KEY_SECRET, PULL_USER
from ..host_keys import new_key, public_line
from ..k3s.node_config import SECRETS_ON_TARGET, init_server
from ..secrets import SecretStore
from .registry import drive_root

SNAPSHOT_COMMAND = "/usr/local/lib/ceil/ceil-datastore-snapshot"
SNAPSHOT_MODULE = Path(__file__).resolve().parent.parent / "snapshot.py"


def pull_key(store: SecretStore) -> tuple[bytes, str]:
    """The router's pull key: (private key file, public key line)."""
    private = store.get_or_create(PULL_KEY_SECRET, new_key)
    return private, f"{public_line(private, str(store.path(PULL_KEY_SECRET)))} ceil-router-datastore-pull"


def authorized_key(cluster: Cluster, store: SecretStore) -> str:
    """The server's authorized_keys line for the router: the snapshot command and nothing else
    (`restrict`: no shell, no forwarding, no pty), and only from the router's LAN address."""
    _, public = pull_key(store)
    return (f'restrict,from="{cluster.network.router_ip}",command="sudo -n {SNAPSHOT_COMMAND} --signed"'
            f" {public}")


def pull_config(cluster: Cluster) -> dict:
    """/etc/ceil/datastore-pull.json. With a USB drive on the router the snapshots go onto it
    (`mount` is its mount point: nothing is written while it is not mounted), so they outlive the
    router's SD card too; without one, into ON_ROUTER on the card."""
    server = init_server(cluster)
    backups = cluster.kubernetes.datastore_backups
    mount = drive_root(cluster)
    return {"server": server.name, "address": str(server.ip), "user": PULL_USER,
            "key": f"{SECRETS_ON_TARGET}/{PULL_KEY_SECRET}", "hmac_key": f"{SECRETS_ON_TARGET}/{HMAC_SECRET}",
            "dir": f"{mount}/datastore" if mount else ON_ROUTER, "mount": mount,
            "every_hours": backups.every_hours, "keep": backups.keep}


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    if role == "router":
        conf = pull_config(cluster)
        return {"pull_config_json": json.dumps(conf, indent=1), "snapshot_dir": conf["dir"],
                "snapshot_mount": conf["mount"] or "", "snapshot_module": SNAPSHOT_MODULE.read_text()}
    return {"backup_script": BACKUP_SCRIPT, "pull_user": PULL_USER,
            "pull_authorized_key": authorized_key(cluster, store), "snapshot_command": SNAPSHOT_COMMAND}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {HMAC_SECRET: store.token(HMAC_SECRET) + "\n"}
    if role == "router":
        files[PULL_KEY_SECRET] = pull_key(store)[0]
    return files
