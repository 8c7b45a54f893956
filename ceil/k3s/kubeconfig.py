"""`bake.py kubeconfig`: the workstation's admin kubeconfig, made from the baked PKI.

The client certificate (CN system:admin, O system:masters, as k3s issues its own admin) is
signed by the client CA the server image carries, and the cluster entry trusts the server CA
the server image carries: `kubectl` works as soon as the server is up, with nothing fetched
from it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import click
import yaml

from ..config import Cluster, load_cluster
from ..errors import CeilError
from ..privatefile import git_ignored_folder, write_private
from .pki import ensure_admin_cert, ensure_ca
from ..secrets import SecretStore

API_PORT = 6443


def server_url(cluster: Cluster, tunnel_port: int | None = None) -> str:
    """The server's LAN address, or the local end of `bake.py k8s-proxy`'s tunnel (k3s's
    serving certificate names 127.0.0.1, as its own k3s.yaml relies on)."""
    if tunnel_port:
        return f"https://127.0.0.1:{tunnel_port}"
    return f"https://{cluster.server.ip}:{API_PORT}"


def admin_kubeconfig(cluster: Cluster, store: SecretStore, tunnel_port: int | None = None) -> str:
    """The kubeconfig YAML (one cluster, one user, one context named after the cluster)."""
    server_ca = ensure_ca(store, "server-ca")
    admin = ensure_admin_cert(store)
    name = cluster.name
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": server_url(cluster, tunnel_port),
            "certificate-authority-data": _b64(server_ca.cert_pem),
        }}],
        "users": [{"name": f"{name}-admin", "user": {
            "client-certificate-data": _b64(admin.cert_pem),
            "client-key-data": _b64(admin.key_pem),
        }}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_replaceable(path: Path) -> None:
    """Refuse to write a kubeconfig over anything but an earlier kubeconfig (`--out cluster.yaml`
    replaced the cluster's description) or into a folder's place."""
    if path.is_dir():
        raise CeilError(f"--out {path} is a folder: name the file, e.g. {path / 'kubeconfig'}")
    if not path.exists() or path.stat().st_size == 0:  # made beforehand for its mode, e.g. install -m600
        return
    try:
        text = path.read_text()
    except OSError as e:
        raise CeilError(f"--out {path} cannot be read ({e.strerror}): give another --out") from None
    try:
        kind = (yaml.safe_load(text) or {}).get("kind")
    except (UnicodeDecodeError, yaml.YAMLError, AttributeError):
        kind = None
    if kind != "Config":
        raise CeilError(f"--out {path} exists and is not a kubeconfig: it was left alone; give another"
                        " --out, or move that file away first")


@click.command("kubeconfig")
@click.option("--config", "config_path", default="cluster.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The cluster description.")
@click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
              help="Secrets directory (default: secrets/ next to the config).")
@click.option("--out", "out_path", default=None, type=click.Path(path_type=Path),
              help="Where to write it (default: out/kubeconfig, or out/kubeconfig-tunnel, next to the config).")
@click.option("--tunnel-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="Talk to https://127.0.0.1:PORT, the local end of `bake.py k8s-proxy --port PORT`.")
def kubeconfig_command(config_path: Path, secrets_path: Path | None, out_path: Path | None,
                       tunnel_port: int | None) -> None:
    """Write the cluster-admin kubeconfig (0600). It is signed by the CA baked into the server
    image, so `kubectl` works once the server is up; the workstation must reach the server's
    LAN address (on the cluster LAN, through the VPN or a trusted network's route), or use
    --tunnel-port with `bake.py k8s-proxy` where only the router's SSH answers."""
    cluster = load_cluster(config_path, env_optional=True)
    base = config_path.resolve().parent
    store = SecretStore(secrets_path or base / "secrets", make_new=False)
    out = out_path or base / "out" / ("kubeconfig-tunnel" if tunnel_port else "kubeconfig")
    check_replaceable(out)
    text = admin_kubeconfig(cluster, store, tunnel_port)  # refused without the cluster's CAs: nothing made
    if out_path is None:
        git_ignored_folder(out.parent, "the cluster-admin kubeconfig and baked images")
    write_private(out, text)
    click.echo(f"wrote {out} (cluster-admin for {server_url(cluster, tunnel_port)})")
    if tunnel_port:
        click.echo(f"start the tunnel first: python bake.py k8s-proxy --port {tunnel_port} --via ROUTER_ADDRESS")
    click.echo(f"use it with: export KUBECONFIG={out}; kubectl get nodes")
