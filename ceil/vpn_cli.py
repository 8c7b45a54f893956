"""`bake.py vpn-client NAME`: make a WireGuard client config for the cluster's VPN."""

from __future__ import annotations

from pathlib import Path

import click

from .config import load_cluster
from .errors import CeilError
from .secrets import SecretStore
from .wireguard import add_client, client_secret_name, endpoint, wg_set_peer_command


def _secrets_dir(config: Path, secrets: Path | None) -> Path:
    return secrets if secrets else config.resolve().parent / "secrets"


@click.command("vpn-client")
@click.argument("name")
@click.option("--config", "config_path", default="cluster.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The cluster description.")
@click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
              help="Secrets directory (default: secrets/ next to the config).")
@click.option("--rotate", is_flag=True,
              help="Give an existing client new keys (same address); the old config stops working.")
@click.option("--print-peer", is_flag=True,
              help="Also print the commands that add this peer to the running router (no re-bake).")
def vpn_client_command(name, config_path, secrets_path, rotate, print_peer) -> None:
    """Write secrets/wireguard/clients/NAME.conf: a WireGuard (wg-quick) config that routes the
    cluster LAN and the VPN subnet through the router. Import it in the WireGuard app or run
    `wg-quick up ./NAME.conf`."""
    cluster = load_cluster(config_path, env_optional=True)
    if not cluster.vpn.enabled:
        raise CeilError(
            f"{config_path}: vpn.enabled is false, so the router runs no WireGuard server:"
            " set vpn.enabled: true and re-bake the router before making clients"
        )
    endpoint(cluster)  # refused before anything is written to secrets/: a client needs somewhere to dial
    # Imported here: compat loads the k3s release table and the download code, which --help needs not.
    from .compat import router_contract, router_was_baked

    secrets_dir = _secrets_dir(config_path, secrets_path)
    # Before the first bake (a copied cluster.example.yaml) secrets/ holds no cluster yet: the
    # client is made as init makes its first, with the VPN server key the router will be baked
    # with. A baked cluster's key is never made anew: its router's card carries the one it has.
    new_cluster = router_contract(SecretStore(secrets_dir, make_new=False)) is None
    store = SecretStore(secrets_dir, make_new=new_cluster)
    with store.held():
        client, state = add_client(cluster, store, name, rotate=rotate)
    path = store.path(client_secret_name(name))
    baked = router_was_baked(store)
    router_too = (("; if vpn.port or a subnet changed, re-bake and re-flash the router too, which still"
                   " listens and routes as it was baked") if baked else "")
    said = {"new": f"wrote {path}", "rotated": f"wrote {path} (new keys)",
            "refreshed": f"rewrote {path} with the cluster's current VPN settings (same keys): import it again in"
                         f" WireGuard{router_too}",
            "unchanged": f"{path} exists (unchanged; --rotate makes new keys)"}[state]
    click.echo(f"{said}; client {name!r} has VPN address {client.address}")
    if state in ("new", "rotated") and not baked:
        click.echo(
            f"No router has been baked from {store.root} yet: its first bake (python bake.py --role"
            " router, or --all) carries this peer (if your router runs already, it was baked from"
            " another secrets folder: run this there, or give that one with --secrets)."
        )
    elif state in ("new", "rotated"):
        click.echo(
            "The router only knows peers that existed when its image was baked: re-bake and"
            " re-flash the router (python bake.py --role router), or add the peer to the running"
            " router with the commands from --print-peer."
        )
    if print_peer:
        click.echo("\n# on the router (bash, as a sudoer):")
        click.echo(wg_set_peer_command(cluster, client))
