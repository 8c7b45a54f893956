"""WireGuard keys and configs for the router's VPN, all made on the workstation.

Owns `secrets/wireguard/`: the server key (`server.key`) and one wg-quick config per client
(`clients/<name>.conf`, the only copy of that client's private key). The router's `wg0.conf`
is derived from both at bake time and travels as a secret file, because it holds the server's
private key. Keys are X25519 in the base64 form `wg genkey` / `wg pubkey` use.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from .config import HOSTNAME_RE, Cluster
from .errors import CeilError, ConfigError
from .secrets import SecretStore

SERVER_KEY = "wireguard/server.key"
CLIENTS_DIR = "wireguard/clients"
KEEPALIVE_SECONDS = 25  # keeps a NAT mapping open on the client's side


# ---- keys ------------------------------------------------------------------------------


def generate_private_key() -> str:
    """A private key as `wg genkey` prints it (random, clamped per RFC 7748, base64)."""
    raw = bytearray(
        X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    )
    # `wg genkey` stores the clamped scalar; clamping does not change the public key.
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def generate_preshared_key() -> str:
    """A preshared key as `wg genpsk` prints it (32 random bytes, base64)."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    """The public key of a base64 private key, as `wg pubkey` computes it."""
    raw = decode_key(private_key, "private key")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def decode_key(text: str, what: str = "key") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise CeilError(
            f"WireGuard {what} {text.strip()[:6]}... is not valid: expected 44 characters of base64"
            " for 32 bytes (as `wg genkey` prints); regenerate it"
        )
    return raw


# ---- addresses -------------------------------------------------------------------------


def server_address(cluster: Cluster) -> ipaddress.IPv4Address:
    """The router's address inside the VPN: the first host of vpn.subnet."""
    return next(cluster.vpn.subnet.hosts())


def endpoint(cluster: Cluster) -> str:
    """`host:port` that clients dial: vpn.endpoint, else the DDNS record."""
    host = cluster.vpn.endpoint or (cluster.ddns.record if cluster.ddns.enabled else None)
    if not host:
        raise ConfigError(
            "vpn.endpoint is not set and ddns is disabled, so a VPN client would not know where to"
            " connect: set vpn.endpoint to the router's public name or address (e.g."
            " vpn.example.com) or enable ddns with a record"
        )
    host = host.strip()
    if re.fullmatch(r"\[[0-9a-fA-F:.]+\]:\d+|[^:\[\]]+:\d+", host):
        return host  # already has a port
    if ":" in host:
        return f"[{host}]:{cluster.vpn.port}"  # a bare IPv6 literal
    return f"{host}:{cluster.vpn.port}"


def client_allowed_ips(cluster: Cluster) -> list[str]:
    """What a client routes through the tunnel: the cluster LAN and the VPN subnet."""
    return [str(cluster.network.lan_cidr), str(cluster.vpn.subnet)]


# ---- client configs in secrets/ --------------------------------------------------------


@dataclass(frozen=True)
class Client:
    name: str
    private_key: str
    preshared_key: str
    address: ipaddress.IPv4Address

    @property
    def public_key(self) -> str:
        return public_key(self.private_key)


def server_private_key(store: SecretStore) -> str:
    return store.get_or_create(SERVER_KEY, lambda: generate_private_key() + "\n", "VPN server key").decode().strip()


def client_secret_name(name: str) -> str:
    if not HOSTNAME_RE.match(name):
        raise CeilError(
            f"VPN client name {name!r} is not valid: use 1-63 lowercase letters, digits and '-'"
            " (e.g. laptop, phone-anna)"
        )
    return f"{CLIENTS_DIR}/{name}.conf"


def list_clients(store: SecretStore) -> list[Client]:
    d = store.path(CLIENTS_DIR)
    if not d.is_dir():
        return []
    return [
        parse_client(p.stem, store.read(f"{CLIENTS_DIR}/{p.name}").decode())
        for p in sorted(d.glob("*.conf"))
    ]


def parse_client(name: str, text: str) -> Client:
    """Read back a client config this module wrote (the values the server's [Peer] needs)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            fields.setdefault(key.strip(), value.strip())
    missing = [k for k in ("PrivateKey", "PresharedKey", "Address") if k not in fields]
    if missing:
        raise CeilError(
            f"secrets/{CLIENTS_DIR}/{name}.conf lacks {', '.join(missing)}: it was not written by"
            f" `bake.py vpn-client`; delete it and run `python bake.py vpn-client {name}` again"
        )
    address = ipaddress.IPv4Interface(fields["Address"].split(",")[0].strip()).ip
    return Client(name, fields["PrivateKey"], fields["PresharedKey"], address)


def next_client_address(cluster: Cluster, taken: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    used = taken | {server_address(cluster)}
    for host in cluster.vpn.subnet.hosts():
        if host not in used:
            return host
    raise CeilError(
        f"vpn.subnet {cluster.vpn.subnet} has no free address left for another client:"
        " delete unused files in secrets/wireguard/clients/ or choose a larger vpn.subnet"
    )


def render_client(cluster: Cluster, client: Client, server_public: str) -> str:
    domain_search = cluster.domain  # wg-quick treats a non-address DNS entry as a search domain
    return (
        f"# ceil VPN client {client.name!r} for cluster {cluster.name!r} (wg-quick format)\n"
        "[Interface]\n"
        f"PrivateKey = {client.private_key}\n"
        f"Address = {client.address}/32\n"
        f"DNS = {server_address(cluster)}, {domain_search}\n"
        "\n[Peer]\n"
        f"PublicKey = {server_public}\n"
        f"PresharedKey = {client.preshared_key}\n"
        f"Endpoint = {endpoint(cluster)}\n"
        f"AllowedIPs = {', '.join(client_allowed_ips(cluster))}\n"
        f"PersistentKeepalive = {KEEPALIVE_SECONDS}\n"
    )


def render_server(cluster: Cluster, store: SecretStore) -> str:
    """The router's /etc/wireguard/wg0.conf (holds the server private key: a secret file)."""
    subnet = cluster.vpn.subnet
    lines = [
        "# ceil: WireGuard server of the router (generated at bake time; clients: bake.py vpn-client)",
        "[Interface]",
        f"Address = {server_address(cluster)}/{subnet.prefixlen}",
        f"ListenPort = {cluster.vpn.port}",
        f"PrivateKey = {server_private_key(store)}",
    ]
    for client in list_clients(store):
        check_in_subnet(cluster, client)
        lines += ["", f"# client {client.name}", "[Peer]", f"PublicKey = {client.public_key}",
                  f"PresharedKey = {client.preshared_key}", f"AllowedIPs = {client.address}/32"]
    return "\n".join(lines) + "\n"


def add_client(cluster: Cluster, store: SecretStore, name: str, rotate: bool = False) -> tuple[Client, str]:
    """Create (or with `rotate`, re-key) client `name`. Returns the client and what happened:
    "new", "rotated", "refreshed" (an existing config rewritten with the cluster's current
    settings, same keys) or "unchanged"."""
    secret = client_secret_name(name)
    existing = {c.name: c for c in list_clients(store)}
    old = existing.get(name)
    if old and not rotate:
        check_in_subnet(cluster, old)
        return old, "refreshed" if _write_if_changed(cluster, store, old) else "unchanged"
    taken = {c.address for c in existing.values() if c.name != name}
    address = old.address if old else next_client_address(cluster, taken)
    client = Client(name, generate_private_key(), generate_preshared_key(), address)
    server_public = public_key(server_private_key(store))
    store.write(secret, render_client(cluster, client, server_public).encode())
    return client, "rotated" if old else "new"


def _stale_configs(cluster: Cluster, store: SecretStore) -> list[tuple[Client, str]]:
    """(client, its config as the cluster now says) for each client whose stored config differs
    (vpn.endpoint or vpn.port edited, DDNS turned on, the LAN or VPN subnet changed): a config is
    written once, so such a client kept dialling the old endpoint while configs made later dialled
    the new one."""
    clients = list_clients(store)
    if not clients:
        return []
    try:
        endpoint(cluster)
    except ConfigError:  # vpn.endpoint removed: the router needs none, the configs keep theirs
        return []
    for c in clients:
        check_in_subnet(cluster, c)
    server_public = public_key(server_private_key(store))
    rendered = [(c, render_client(cluster, c, server_public)) for c in clients]
    return [(c, text) for c, text in rendered if store.read(client_secret_name(c.name)).decode() != text]


def stale_clients(cluster: Cluster, store: SecretStore) -> list[str]:
    """The clients whose config no longer says what the cluster does (see _stale_configs)."""
    return [c.name for c, _ in _stale_configs(cluster, store)]


def check_in_subnet(cluster: Cluster, client: Client) -> None:
    if client.address not in cluster.vpn.subnet:
        raise CeilError(
            f"VPN client {client.name!r} has address {client.address}, outside vpn.subnet {cluster.vpn.subnet}"
            f" (the subnet changed?): delete secrets/{CLIENTS_DIR}/{client.name}.conf and run"
            f" `python bake.py vpn-client {client.name}` again"
        )


def refresh_clients(cluster: Cluster, store: SecretStore) -> list[str]:
    """Rewrite every stale client config from its stored keys (the router's peers stay the same);
    the names rewritten."""
    stale = _stale_configs(cluster, store)
    for client, text in stale:
        store.write(client_secret_name(client.name), text.encode())
    return [c.name for c, _ in stale]


def _write_if_changed(cluster: Cluster, store: SecretStore, client: Client) -> bool:
    secret = client_secret_name(client.name)
    text = render_client(cluster, client, public_key(server_private_key(store)))
    if store.read(secret).decode() == text:
        return False
    store.write(secret, text.encode())
    return True


def wg_set_peer_command(cluster: Cluster, client: Client, interface: str = "wg0") -> str:
    """Shell lines that add `client` to a running router without re-baking (bash, as root)."""
    return (
        f"sudo wg set {interface} peer {client.public_key} allowed-ips {client.address}/32"
        f" preshared-key /dev/stdin <<< '{client.preshared_key}'\n"
        f"sudo wg-quick save {interface}"
    )
