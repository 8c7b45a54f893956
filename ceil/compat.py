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
from .k3s.digests import PIN_HINT
from .k3s.node_config import servers as servers_of
from .k3s.token import SERVER_SECRET
from .secrets import FORMAT_FILE, SecretStore

ROUTER_CONTRACT = 2
RECORD = "router-contract"
# secrets/cluster-made: `init` made this cluster's secrets. Its router is not baked until the bake
# writes RECORD beside it.
MADE = "cluster-made"
# What a node baked now expects of the router, by the contract that introduced it.
CHANGES = {
    2: "the private registry speaks TLS with accounts (nodes pull read-only over HTTPS; an older"
       " router serves plain HTTP without accounts, so private images fail to pull), and"
       " PiWatch takes kubewatch's events only with their token",
}


def router_baked(store: SecretStore) -> None:
    store.write(RECORD, f"{ROUTER_CONTRACT}\n".encode())


def cluster_made(store: SecretStore) -> None:
    """`init` made this cluster's secrets: no older ceil baked its router, and the one baked from
    them speaks this contract. Recorded now because the server secret init makes would otherwise
    read as a router baked before the record existed (router_contract), and a node baked before
    the router was warned about an older router that was never baked. Recorded apart from RECORD,
    which says the router was baked (router_was_baked)."""
    store.write(MADE, b"made by bake.py init; router-contract appears when the router is baked\n")


def read_number(store: SecretStore, name: str, what: str) -> int:
    """A number ceil wrote into secrets/ (its format, the router's contract); a damaged file is
    refused by name, not with a traceback."""
    text = store.read(name).decode(errors="replace").strip()
    try:
        return int(text or 0)
    except ValueError:
        raise CeilError(
            f"{store.path(name)} holds {text[:40]!r}, not {what}: the file is damaged. Restore it from"
            f" your backup of secrets/, or write the number this ceil writes there ({what})") from None


def router_contract(store: SecretStore) -> int | None:
    """The contract the router was baked with; None for a cluster that has none yet (new)."""
    if store.exists(RECORD):
        return read_number(store, RECORD, f"the router's contract, a number such as {ROUTER_CONTRACT}")
    if store.exists(MADE):
        return ROUTER_CONTRACT  # init made it; the router's first bake will be with this ceil's
    return 1 if store.exists(SERVER_SECRET) else None  # baked before the record existed


def router_was_baked(store: SecretStore) -> bool:
    """Whether a router image was baked from these secrets (its card knows only the VPN peers made
    before); False after `init` alone and before any bake. A cluster whose init an older ceil ran
    recorded RECORD at init: it reads as baked, the side whose advice (add the peer) is harmless."""
    return store.exists(RECORD) or (not store.exists(MADE) and store.exists(SERVER_SECRET))


def new_cluster_warning(store: SecretStore, roles: list[str]) -> str | None:
    """Nodes baked from a secrets/ that holds no cluster yet get a new cluster identity (CAs, join
    token) that no running router or server shares: a mistyped --secrets, or a fresh clone on
    another workstation, made cards that never join, without a word."""
    if "router" in roles or router_contract(store) is not None:
        return None
    return (f"{store.root} holds no cluster yet, so this bake makes a new one (CAs, join tokens, keys):"
            f" these cards join only a router and servers baked from that same folder. If the cluster"
            f" already runs, do not flash them: bake again with --secrets pointing at its secrets folder"
            f" (by default secrets/ beside cluster.yaml; keep a backup of it)")


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
# 3: ssh-host/<name>, the machines' host keys the workstation pins (an older ceil would bake cards
# without them, which the pins then refuse).
SECRETS_FORMAT = 3
K3S_RECORD = "nodes/{name}.k3s-version"


def check_secrets_format(store: SecretStore) -> None:
    """Refuse a secrets/ written by a newer ceil; stamp ours on one that has none or an older one
    (every change so far only added files, which the bake makes when missing)."""
    if store.exists(FORMAT_FILE):
        have = read_number(store, FORMAT_FILE, f"the layout's format, a number such as {SECRETS_FORMAT}")
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


def minor(version: str) -> tuple[int, int]:
    return version_key(version)[:2]


def check_version_skew(cluster, store: SecretStore, roles: list[str], k3s_version: str) -> None:
    """Nodes baked now against the nodes of the running cluster, as secrets/ records them (the
    bake and `k3s upgrade` write each node's version), by Kubernetes' version skew policy
    (kubernetes.io/releases/version-skew-policy): a kubelet must not be newer than an API server
    nor more than three minor versions older, and API servers are within one minor version of
    each other. A k3s server is an API server with a kubelet of its own, an agent a kubelet;
    servers' own kubelets follow the servers' rule, since `k3s upgrade` moves the servers first
    and a card replaced half-way must join either side of it. Refused before anything is
    written, naming each node in the way: a card flashed between setting a new
    kubernetes.k3s_version and running `k3s upgrade` would otherwise join with a kubelet newer
    than the servers'."""
    baking = [r for r in roles if r != "router"]
    if not baking:
        return
    new = minor(k3s_version)
    server_baked = any(cluster.node(r).role == "server" for r in baking)
    agent_baked = any(cluster.node(r).role == "agent" for r in baking)
    problems, oldest_server = [], None
    for node in cluster.nodes:
        record = K3S_RECORD.format(name=node.name)
        if node.name in baking or not store.exists(record):
            continue
        version = store.read(record).decode().strip()
        have, why = minor(version), []
        if len(have) < 2:  # refused, not passed over: the check would otherwise let any version by
            raise CeilError(
                f"{store.path(record)} holds {version!r}, not a k3s version: write the version node {node.name}"
                f" runs there (`k3s --version` on it, e.g. v1.36.1+k3s1), or delete the file if {node.name}"
                " is not running; nothing was baked")
        if node.role == "server":
            if oldest_server is None or have < minor(oldest_server):
                oldest_server = version
            if agent_baked and new > have:
                why.append("the new agents' kubelets would be newer than its API server")
            if agent_baked and (new[0] != have[0] or have[1] - new[1] > 3):
                why.append("the new agents' kubelets would be more than three minor versions older than its API server")
            if server_baked and (new[0] != have[0] or abs(have[1] - new[1]) > 1):
                why.append("API servers must be within one minor version of each other")
        elif server_baked:
            if have > new:
                why.append("its kubelet would be newer than the new API server")
            elif new[0] != have[0] or new[1] - have[1] > 3:
                why.append("its kubelet would be more than three minor versions older than the new API server")
        if why:
            problems.append(f"{node.name} ({node.role}) runs {version}: {'; '.join(why)}")
    if problems:
        now = (f"set kubernetes.k3s_version to {oldest_server}, what the oldest server runs" if oldest_server else
               "set kubernetes.k3s_version to the version the servers run") + f" {PIN_HINT}"
        raise CeilError(
            f"{', '.join(baking)} with k3s {k3s_version} would break Kubernetes' version skew policy in the"
            " running cluster:\n  " + "\n  ".join(problems) +
            "\nTo move the cluster to a new version, run `python bake.py k3s upgrade` first (servers first, one"
            f" minor version at a time); to add or replace a card now, {now}. Each node's version is recorded"
            " in secrets/nodes/<name>.k3s-version, by the bake and by `k3s upgrade`; nothing was baked.")


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
