"""`bake.py k3s reset`: take k3s off every node, and (unless --remove) set it up afresh.

The seed's `k8s-remove` and `teardown` (issue 19, day two). Each node runs its own
`ceil-k3s-reset` (installed by the k3s-install feature): k3s stopped, its containers, mounts and
links gone, its datastore and state deleted, the baked config, secrets and node password kept.
Order matters: agents stop before the servers they talk to; on the way back, servers first so the
agents find a cluster to join. With the baked CA and token, the new cluster's kubeconfig is the
one `bake.py kubeconfig` already wrote.
"""

from __future__ import annotations

from pathlib import Path

import click

from .addons.cli import cluster_options
from .config import Cluster, load_cluster
from .errors import CeilError
from .ui import confirm
from .workstation import config_option, secrets_option

RESET = "sudo /usr/local/lib/ceil/ceil-k3s-reset"


def reset_plan(cluster: Cluster, remove: bool) -> list[tuple[list[str], str]]:
    """[(node names, command)] in order: agents then servers off; then servers, agents back."""
    agents = [n.name for n in cluster.nodes if n.role != "server"]
    servers = [n.name for n in cluster.nodes if n.role == "server"]
    plan = [(names, f"{RESET} --remove") for names in (agents, servers) if names]
    if not remove:
        plan += [(names, RESET) for names in (servers, agents) if names]
    return plan


@click.group("k3s")
def k3s_group() -> None:
    """Day two: k3s across the cluster."""


@k3s_group.command("reset")
@config_option
@secrets_option
@click.option("--via", metavar="ADDRESS", help="Jump through the router at this address (see `bake.py ssh`).")
@click.option("--remove", is_flag=True, help="Leave k3s off (the seed's k8s-remove); without it k3s is set up afresh.")
@click.option("--yes", is_flag=True, help="Do not ask.")
def reset_command(config_path: Path, secrets_path: Path | None, via: str | None, remove: bool, yes: bool) -> None:
    """Delete the Kubernetes cluster: every node's k3s datastore, pods, volumes in k3s's own
    directories and certificates it made. The cards keep what was baked into them (CA, token,
    node passwords), so without --remove the nodes form the same-named cluster again, empty, and
    the first-boot add-on job applies the add-ons anew. Longhorn's drives are not wiped."""
    from .workstation import not_reached, pin_from_secrets, run_everywhere

    cluster = load_cluster(config_path, env_optional=True)
    pin_from_secrets(cluster, secrets_path or config_path.resolve().parent / "secrets")
    what = "remove k3s from" if remove else "reset k3s on"
    if not yes:
        confirm(f"{what} {', '.join(cluster.hostname(n.name) for n in cluster.nodes)}?"
                " Every workload and its data in the cluster is lost")
    failed = []
    for names, command in reset_plan(cluster, remove):
        results = run_everywhere(cluster, names, command, via)
        for name, (code, output) in results.items():
            for line in output.splitlines() or [""]:
                click.echo(f"{name}: {line}")
            if code != 0:
                failed.append(name)
        if failed:
            unreached = not_reached(results)
            raise CeilError(f"ceil-k3s-reset failed on {', '.join(failed)}: stopped before the next machines;"
                            + (f" {unreached}; then" if unreached else " see the lines above, then")
                            + f" run `python bake.py k3s reset{' --remove' if remove else ''}` again")
    click.echo("k3s removed from every node" if remove else
               "k3s set up afresh: `python bake.py status --wait 1800`, then `make nodes-show`")


@k3s_group.command("digests")
@click.option("--check", is_flag=True, help="Compare each digest with the release's own sha256sum file on"
              " GitHub (needs the internet; CEIL_K3S_RELEASES names a mirror of"
              " https://github.com/k3s-io/k3s/releases).")
def digests_command(check: bool) -> None:
    """The k3s releases whose files ceil vouches for, with their sha256: the binary per
    architecture, and the air-gap image tarballs it has digests for. A node installs only a binary
    with the digest it was baked with: one of these for kubernetes.k3s_version, or
    kubernetes.k3s_sha256 for any other release or build."""
    import os

    from .k3s.digests import KNOWN, check_published, known_images
    from .k3s.release import ASSETS, RELEASES

    if not check:
        for version, arches in KNOWN.items():
            for arch, digest in arches.items():
                click.echo(f"{version:<16} {arch:<6} {ASSETS[arch]['binary']:<33} {digest}")
                for asset, image_digest in known_images(version, arch).items():
                    click.echo(f"{version:<16} {arch:<6} {asset:<33} {image_digest}")
        return
    findings = check_published(os.environ.get("CEIL_K3S_RELEASES") or RELEASES)
    for what, ok, message in findings:
        click.echo(f"{'ok  ' if ok else '??  ' if ok is None else 'FAIL'} {what:<46} {message}")
    if any(ok is False for _, ok, _ in findings):
        raise CeilError("a digest ceil ships is not what the release publishes: see FAIL above")
    if unchecked := [what for what, ok, _ in findings if ok is None]:
        raise CeilError(f"{len(unchecked)} digest(s) not checked: the release's sums files could not be read (no"
                        " internet here?), so nothing was compared; run it again where GitHub is reachable")


@k3s_group.command("upgrade")
@cluster_options
@click.option("--via", metavar="ADDRESS", help="Jump through the router at this address (see `bake.py ssh`).")
@click.option("--no-drain", is_flag=True, help="Swap k3s in place without draining and without asking the"
              " API (a one-node cluster, or no way to the API): its pods restart with k3s.")
@click.option("--yes", is_flag=True, help="Do not ask.")
def upgrade_command(config_path: Path, secrets_path, kubeconfig_path, via: str | None, no_drain: bool, yes: bool) -> None:
    """Bring every node's k3s to kubernetes.k3s_version without re-flashing: set the new version
    in cluster.yaml, put its release files in ~/.cache/ceil/k3s/<version>/, run this. Servers
    first, then agents, one at a time: drained, binary swapped (checked on the node against the
    release's published digest ceil ships, or kubernetes.k3s_sha256), k3s restarted, Ready with the new kubelet, uncordoned.
    A node whose k3s does not come back puts its previous binary back and the roll stops there.
    Refused before anything changes while a node is not Ready (asked from the API, unless
    --no-drain), or cannot take the release in one step (a downgrade, a skipped minor version)."""
    from .addons.cli import Context
    from .k3s.upgrade import Remote, release_for, upgrade, upgrade_order
    from .workstation import pin_from_secrets

    obj = Context(config_path, secrets_path, kubeconfig_path)
    cluster = obj.cluster
    pin_from_secrets(cluster, obj.secrets)
    release = release_for(cluster)
    order = ", ".join(upgrade_order(cluster))
    if not yes:
        confirm(f"upgrade k3s to {release.version} on {order}, one at a time"
                f"{'' if no_drain else ', each drained first'}?")
    log = click.echo
    remote = Remote(cluster, via)
    if no_drain:
        upgrade(cluster, obj.store, release, remote, None, log)
    else:
        with obj.kubeconfig_path() as kubeconfig:
            upgrade(cluster, obj.store, release, remote, obj.api(kubeconfig), log)
    click.echo(f"every node runs k3s {release.version}")
