"""Who may use the router's private registry, and how everyone knows they talk to the router.

Issue 18 #3: a LAN host (or any pod, whose traffic leaves with its node's address) could push a
tag the cluster runs. Made once on the workstation, in secrets/registry/, like the k3s CAs:

- a registry CA (EC P-256, ten years, `NotBefore` backdated) and the router's TLS certificate for
  its LAN name and address: nodes and the workstation verify the router, so a LAN host cannot
  pose as the registry;
- two accounts with random passwords: `push` for the workstation (`bake.py registry` prints how to
  log in) and `pull` for the nodes (in their registries.yaml).

The distribution registry's htpasswd auth lets every listed account do everything, so the router
runs two registries over one storage: a read-only one on `registry.port` that only knows `pull`,
and a writable one on `registry.push_port` that only knows `push`. What a node holds cannot push.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from .config import Cluster, load_cluster
from .errors import CeilError
from .k3s.pki import CertKey, load_pair, issue_server_cert, make_ca
from .secrets import SecretStore, htpasswd_line

DIR = "registry"
CA_CRT, CA_KEY = f"{DIR}/ca.crt", f"{DIR}/ca.key"
TLS_CRT, TLS_KEY = f"{DIR}/tls.crt", f"{DIR}/tls.key"
PULL_USER, PUSH_USER = "pull", "push"
# Where the nodes keep the CA (k3s-prep installs it; registries.yaml names it).
NODE_CA_PATH = "/etc/rancher/k3s/registry-ca.crt"
RENEW_BEFORE = dt.timedelta(days=30)


def ensure_ca(store: SecretStore) -> CertKey:
    pair = load_pair(store, CA_CRT, CA_KEY, "registry CA")
    if pair is None:
        store.refuse_new(CA_CRT, "registry CA")
        pair = make_ca("ceil-registry-ca")
        store.write_pair(CA_KEY, pair.key_pem, CA_CRT, pair.cert_pem)
    return pair


def server_names(cluster: Cluster) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the router's registries answer to."""
    return [cluster.fqdn("router"), cluster.hostname("router")], [str(cluster.network.router_ip)]


def ensure_server_cert(cluster: Cluster, store: SecretStore, now: dt.datetime | None = None) -> CertKey:
    """The router's certificate, issued again when the router's name or address changed."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ca = ensure_ca(store)
    dns, ips = server_names(cluster)
    pair = load_pair(store, TLS_CRT, TLS_KEY, "registry TLS certificate")
    if pair is not None and _fits(pair, ca, dns, ips, now):
        return pair
    pair = issue_server_cert(ca, cluster.fqdn("router"), dns, ips, now)
    store.write_pair(TLS_KEY, pair.key_pem, TLS_CRT, pair.cert_pem)
    return pair


def _fits(pair: CertKey, ca: CertKey, dns: list[str], ips: list[str], now: dt.datetime) -> bool:
    from cryptography import x509

    try:
        pair.cert.verify_directly_issued_by(ca.cert)
        sans = pair.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # another CA, no SANs: issue a new one
        return False
    have = set(sans.get_values_for_type(x509.DNSName)), {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    return have == (set(dns), set(ips)) and pair.cert.not_valid_after_utc - now > RENEW_BEFORE


def password(store: SecretStore, user: str) -> str:
    return store.token(f"{DIR}/{user}-password")


def router_files(cluster: Cluster, store: SecretStore) -> dict[str, bytes]:
    """Secret files for the router's registries (names under /etc/ceil/secrets/)."""
    cert = ensure_server_cert(cluster, store)
    return {
        TLS_CRT: cert.cert_pem,
        TLS_KEY: cert.key_pem,
        f"{DIR}/htpasswd-{PULL_USER}": htpasswd_line(PULL_USER, password(store, PULL_USER)).encode(),
        f"{DIR}/htpasswd-{PUSH_USER}": htpasswd_line(PUSH_USER, password(store, PUSH_USER)).encode(),
    }


def push_address(cluster: Cluster) -> str:
    return f"{cluster.fqdn('router')}:{cluster.registry.push_port}"


@click.command("registry")
@click.option("--config", "config_path", default="cluster.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The cluster description.")
@click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
              help="Secrets directory (default: secrets/ next to the config).")
def registry_command(config_path: Path, secrets_path: Path | None) -> None:
    """How to push images into the router's private registry: its address, the CA to trust and
    the login. Pushes need the `push` account (only on this workstation); the nodes pull with a
    read-only account from registry.port."""
    cluster = load_cluster(config_path, env_optional=True)
    if not cluster.registry.enabled:
        raise CeilError("registry.enabled is false in cluster.yaml: the router runs no registry")
    store = SecretStore(secrets_path or config_path.resolve().parent / "secrets", make_new=False)
    if not store.exists(CA_CRT) or not store.exists(f"{DIR}/{PUSH_USER}-password"):
        raise CeilError(
            f"no registry credentials in {store.root}: bake the router first"
            " (python bake.py --role router); they are made then and baked into it"
        )
    ensure_ca(store)  # checks the pair
    addr = push_address(cluster)
    ca = store.path(CA_CRT)
    pw = store.path(f"{DIR}/{PUSH_USER}-password")
    pull = f"{cluster.fqdn('router')}:{cluster.registry.port}"
    click.echo(f"""push to:   {addr}   (user {PUSH_USER}, password in {pw})
CA:        {ca}
cluster:   pods pull {addr}/NAME:TAG (or {pull}/NAME:TAG), read-only, from the router

docker (trust the CA once, then log in):
  sudo mkdir -p /etc/docker/certs.d/{addr}
  sudo cp {ca} /etc/docker/certs.d/{addr}/ca.crt
  docker login {addr} -u {PUSH_USER} --password-stdin < {pw}
  docker push {addr}/myapp:v1
podman / buildah / skopeo:
  podman login --cert-dir DIR_WITH_ca.crt {addr} -u {PUSH_USER} --password-stdin < {pw}
helm (OCI charts):
  helm registry login {addr} --ca-file {ca} -u {PUSH_USER} --password-stdin < {pw}

The workstation must reach the router's LAN address (on the cluster LAN, or through the VPN).""")
