"""Existing clusters keep working: what a router baked by an older ceil cannot serve to nodes
baked now (issue 19 #5).

Some changes need the router and the nodes to agree (the nodes pull from the router's registry
over TLS with an account; the router must serve that). Each such change raises ROUTER_CONTRACT,
and the bake records the contract it baked the router with in secrets/router-contract. Baking
nodes of a cluster whose router was recorded with an older contract (or none: baked before this
record existed) says what changed and that the router must be baked and flashed again first.
"""

from __future__ import annotations

from .k3s.token import SERVER_SECRET
from .secrets import SecretStore

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
