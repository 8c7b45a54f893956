"""Existing clusters keep working: what a router baked by an older ceil cannot serve to nodes
baked now (issue 19 #5).

Some changes need the router and the nodes to agree (the nodes pull from the router's registry
over TLS with an account; the router must serve that). Each such change raises ROUTER_CONTRACT,
and the bake records the contract it baked the router with in secrets/router-contract. Baking
nodes of a cluster whose router was recorded with an older contract (or none: baked before this
record existed) says what changed and that the router must be baked and flashed again first.
"""

from __future__ import annotations

import re

from .errors import CeilError
from .k3s.node_config import servers as servers_of
from .k3s.token import SERVER_SECRET
from .secrets import FORMAT_FILE, SecretStore

ROUTER_CONTRACT = 2
RECORD = "router-contract"
# What a node baked now expects of the router, by the contract that introduced it.
CHANGES = {
    2: "the private registry speaks TLS with accounts (nodes pull read-only over HTTPS; an older"
       " router serves plain HTTP without accounts, so private images fail to pull), and"
       " PiWatch takes kubewatch's events only with their token",
}


def router_baked(store: SecretStore) -> None:
    store.write(RECORD, f"{ROUTER_CONTRACT}\n".encode())


def router_contract(store: SecretStore) -> int | None:
    """The contract the router was baked with; None for a cluster that has none yet (new)."""
    if store.exists(RECORD):
        return int(store.read(RECORD).decode().strip() or 0)
    return 1 if store.exists(SERVER_SECRET) else None  # baked before the record existed


def stale_router_warning(store: SecretStore, roles: list[str]) -> str | None:
    """A warning when nodes are baked for a router that cannot serve them; None otherwise."""
    if "router" in roles or roles == []:
        return None
    have = router_contract(store)
    if have is None or have >= ROUTER_CONTRACT:
        return None
    missing = "; ".join(text for version, text in sorted(CHANGES.items()) if version > have)
    return (f"the router was baked by an older ceil (contract {have}, now {ROUTER_CONTRACT}): {missing}."
            " Bake and flash the router again before these nodes (python bake.py --role router)")


# ---- secrets/ format, and the k3s a node was last baked with ---------------------------------

# secrets/FORMAT: the layout of secrets/ this ceil writes. A newer number means a newer ceil wrote
# it (and may rely on files this one does not know): refused rather than half-understood.
SECRETS_FORMAT = 2
K3S_RECORD = "nodes/{name}.k3s-version"


def check_secrets_format(store: SecretStore) -> None:
    """Refuse a secrets/ written by a newer ceil; stamp ours on one that has none or an older one
    (every change so far only added files, which the bake makes when missing)."""
    if store.exists(FORMAT_FILE):
        have = int(store.read(FORMAT_FILE).decode().strip() or 0)
        if have > SECRETS_FORMAT:
            raise CeilError(
                f"{store.path(FORMAT_FILE)} says format {have}, but this ceil knows format {SECRETS_FORMAT}:"
                " a newer ceil wrote secrets/. Update ceil (git pull) before baking with it")
        if have == SECRETS_FORMAT:
            return
    if store.root.is_dir():
        store.write(FORMAT_FILE, f"{SECRETS_FORMAT}\n".encode())


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def check_no_k3s_downgrade(store: SecretStore, name: str, k3s_version: str) -> None:
    """A node re-baked with an older k3s than it last ran would join with a kubelet older than the
    server's, which Kubernetes' version skew policy does not allow (and k3s refuses to start on a
    datastore a newer one migrated)."""
    record = K3S_RECORD.format(name=name)
    if store.exists(record):
        last = store.read(record).decode().strip()
        if version_key(k3s_version) < version_key(last):
            raise CeilError(
                f"kubernetes.k3s_version {k3s_version} is older than the {last} node {name} was last baked"
                f" with: a re-flashed node must not downgrade (Kubernetes' version skew policy). Set"
                f" kubernetes.k3s_version to {last} or newer")


def node_baked(store: SecretStore, name: str, k3s_version: str) -> None:
    store.write(K3S_RECORD.format(name=name), f"{k3s_version}\n".encode())


def first_server_rebake_warning(cluster, store: SecretStore, roles: list[str]) -> str | None:
    """A warning when the first server listed (baked with cluster-init: it starts a cluster) is
    baked alone while other servers of an HA cluster were baked before: as a replacement card in
    a running cluster it would start a cluster of its own beside it (k3s initialises a new etcd
    on an empty card with cluster-init). None otherwise."""
    servers = [n.name for n in servers_of(cluster)]
    if len(servers) < 2 or servers[0] not in roles:  # as node_config gives cluster-init
        return None
    earlier = [s for s in servers[1:] if s not in roles and store.exists(K3S_RECORD.format(name=s))]
    if not earlier:
        return None
    first = servers[0]
    return (f"{first} is the first server under nodes:, baked to start the cluster (cluster-init), and"
            f" {', '.join(earlier)} were baked before, not now: if this card replaces {first} in a running"
            f" cluster, it would start a cluster of its own. Move another server above {first} under nodes:"
            f" and bake {first} again, so that it joins; baking every card for a new cluster: --all")
