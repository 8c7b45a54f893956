"""`bake.py node remove NAME`: take a node out of the running cluster, leaving nothing of it
behind (issue 19, day two): cordoned and drained, its Node object and its k3s node-password
Secret deleted, its DHCP lease and status-board entry removed on the router. A replacement card
baked under the same name then joins as a new machine.

The only server of a cluster whose datastore is k3s's SQLite holds the whole cluster: removing
it is refused. Replacing its card goes through `bake.py datastore backup` and `restore`
(ceil/datastore.py).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from .addons.cli import Context, cluster_options
from .config import Cluster
from .errors import CeilError
from .k3s.node_config import servers as servers_of
from .ui import confirm

STATUS_BOARD_DIR = "/var/lib/ceil-status-board"
LEASES = "/var/lib/misc/dnsmasq.leases"


def refuse_the_router(cluster: Cluster, name: str) -> None:
    """`router` is a role but no k3s node: "not in the cluster" would contradict the list of roles."""
    if name == "router":
        raise CeilError(
            "the router cannot be removed: it is no k3s node but the cluster's gateway (DHCP, DNS, NAT,"
            " the VPN), which every node needs. To replace its card, bake and flash it again"
            " (python bake.py --role router); `node remove` takes a node: "
            + ", ".join(n.name for n in cluster.nodes))


def refuse_the_only_server(cluster: Cluster, name: str) -> None:
    node = cluster.node(name)
    servers = [n.name for n in servers_of(cluster)]
    if node.role == "server" and len(servers) > 1 and servers[0] == name:
        # The kubeconfig and every card baked from now on use the first server listed; once k3s
        # has taken this one out of etcd its API is gone mid-command, and a replacement baked
        # under its name would start a cluster of its own (cluster-init).
        raise CeilError(
            f"{name} is the first server under nodes: in cluster.yaml, which the kubeconfig talks to and"
            f" a card baked under its name starts a new cluster from: first move another server (e.g."
            f" {servers[1]}) above it, run `python bake.py kubeconfig`, then run this again")
    if node.role == "server" and len(servers) == 1:
        raise CeilError(
            f"{name} is the cluster's only server: its datastore (k3s's SQLite) is the whole cluster,"
            " and nothing could take over. To replace its card: `python bake.py datastore backup`,"
            " then `python bake.py datastore restore FILE` and bake, flash and boot a new card under"
            " the same name (it starts on the snapshot; the other nodes rejoin it)")


def drain(api, node_name: str, log, timeout: float = 120, poll: float = 2) -> bool:
    """Cordon, evict every pod but DaemonSet and mirror pods, wait for them to go (what `kubectl
    drain --ignore-daemonsets` does). False if there is no such Node."""
    if api.get("v1", "Node", node_name) is None:
        return False
    api.merge_patch("v1", "Node", node_name, {"spec": {"unschedulable": True}})
    # A pod already being deleted is on its way out: evicting it again can only fail (403 in a
    # namespace being deleted).
    pods = [p for p in api.list("v1", "Pod", field_selector=f"spec.nodeName={node_name}")
            if not _stays(p) and not p["metadata"].get("deletionTimestamp")]
    for pod in pods:
        meta = pod["metadata"]
        api.evict(meta["namespace"], meta["name"])
        log(f"evicting {meta['namespace']}/{meta['name']}")
    deadline = time.monotonic() + timeout
    while pods and time.monotonic() < deadline:
        pods = [p for p in api.list("v1", "Pod", field_selector=f"spec.nodeName={node_name}")
                if not _stays(p) and not p["metadata"].get("deletionTimestamp")]
        if pods:
            time.sleep(poll)
    if pods:
        raise CeilError(f"{len(pods)} pod(s) on {node_name} were not evicted within {timeout:.0f} s"
                        f" (a PodDisruptionBudget?): {', '.join(p['metadata']['name'] for p in pods)}")
    return True


def drain_and_delete(api, node_name: str, log, timeout: float = 120, poll: float = 2) -> list[str]:
    """Drain, then delete the Node and its node-password Secret. Returns what was done, one line each."""
    done = []
    if not drain(api, node_name, log, timeout, poll):
        done.append(f"Node {node_name}: not in the cluster")
    else:
        done += [f"Node {node_name}: cordoned", f"Node {node_name}: drained"]
        api.delete_named("v1", "Node", node_name)
        wait_gone(api, node_name, timeout, poll)
        done.append(f"Node {node_name}: deleted")
    secret = f"{node_name}.node-password.k3s"  # k3s keeps each agent's password hash here
    gone = api.delete_named("v1", "Secret", secret, "kube-system")
    done.append(f"Secret kube-system/{secret}: {'deleted' if gone else 'not there'}")
    return done


def wait_gone(api, node_name: str, timeout: float = 120, poll: float = 2) -> None:
    """Until the deleted Node is gone. A server of an HA cluster goes only once k3s has removed its
    etcd member (the Node's finalizer, k3s's etcd member management); a Node still there after
    `timeout` is named with what holds it, since its member may still count in etcd's quorum."""
    deadline = time.monotonic() + timeout
    while (node := api.get("v1", "Node", node_name)) is not None:
        if time.monotonic() > deadline:
            holders = ", ".join(node["metadata"].get("finalizers") or []) or "no finalizer named"
            raise CeilError(
                f"Node {node_name} was deleted but is still there after {timeout:.0f} s, held by {holders}:"
                " for a server, k3s first removes its etcd member, which needs the other servers up."
                " Check `kubectl get nodes`, then run `bake.py node remove` again (never delete a"
                " Node with --force: its etcd member would stay and the replacement could not join)")
        time.sleep(poll)


def _stays(pod: dict) -> bool:
    """DaemonSet pods are recreated anyway and mirror pods belong to the kubelet: drain skips them."""
    owners = pod["metadata"].get("ownerReferences") or []
    mirror = "kubernetes.io/config.mirror" in (pod["metadata"].get("annotations") or {})
    return mirror or any(o.get("kind") == "DaemonSet" for o in owners)


def lease_edit(cluster: Cluster, name: str, leases: str = LEASES) -> str:
    """Shell that drops the node's leases from dnsmasq's lease file (`expiry MAC address host
    client-id` per line): its reserved address, and any address leased under its host name (the
    pool address a node baked after the router had before it registered; that lease stayed)."""
    keep = f'$3 != "{cluster.node(name).ip}" && $4 != "{cluster.hostname(name)}"'
    return f"awk {shlex.quote(keep)} {leases} > {leases}.ceil-tmp && mv {leases}.ceil-tmp {leases}"


def router_cleanup_command(cluster: Cluster, name: str) -> str:
    """Shell for the router: the node's status-board entry, its registration if it was baked after
    the router (ceil-lan-hosts.path then drops its reservation and names), and its DHCP leases
    (dnsmasq reads its lease file only at start, so it is stopped for the edit)."""
    edit = f"systemctl stop dnsmasq && {lease_edit(cluster, name)}; systemctl start dnsmasq"
    return (f"sudo rm -f {STATUS_BOARD_DIR}/{name}.json {STATUS_BOARD_DIR}/registered/{name}.json"
            f" && sudo sh -c {shlex.quote(edit)}")


@click.group("node")
def node_group() -> None:
    """Day two: take nodes out of the running cluster."""


@node_group.command("remove")
@cluster_options
@click.option("--via", metavar="ADDRESS", help="Reach the router through this address (see `bake.py ssh`).")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.argument("name")
def remove_command(config_path: Path, secrets_path, kubeconfig_path, via, yes, name) -> None:
    """Drain NAME and delete it from the cluster (Node, node-password Secret), then clear its DHCP
    lease and status-board entry on the router. Remove it from cluster.yaml afterwards, or flash a
    replacement card under the same name."""
    from .workstation import pin_from_secrets, run_everywhere

    obj = Context(config_path, secrets_path, kubeconfig_path)
    cluster = obj.cluster
    pin_from_secrets(cluster, obj.secrets)
    refuse_the_router(cluster, name)
    refuse_the_only_server(cluster, name)
    node_name = cluster.hostname(name)
    if not yes:
        confirm(f"drain {node_name} and delete it from the cluster?")
    with obj.kubeconfig_path() as kubeconfig:
        for line in drain_and_delete(obj.api(kubeconfig), node_name, log=lambda m: click.echo(f"  {m}")):
            click.echo(line)
    code, output = run_everywhere(cluster, ["router"], router_cleanup_command(cluster, name), via)["router"]
    if code != 0:
        raise CeilError(f"the cluster no longer has {node_name}, but the router's cleanup failed ({output});"
                        f" run it by hand: {router_cleanup_command(cluster, name)}")
    click.echo(f"router: lease of {cluster.node(name).ip} and status-board entry removed")
    click.echo(next_step(cluster, name))


def next_step(cluster: Cluster, name: str) -> str:
    """What the user does after `node remove NAME`: a server of an HA cluster is replaced, not
    dropped (an even number of servers is refused at the bake: it tolerates no more failures than
    one fewer)."""
    servers = [n.name for n in servers_of(cluster)]
    if cluster.node(name).role != "server" or len(servers) == 1:
        return f"done: remove {name} from cluster.yaml, or flash a replacement baked under the same name"
    left = len(servers) - 1
    return (f"done: k3s removed {name}'s etcd member with its Node; {left} servers run etcd, which tolerates"
            f" {(left - 1) // 2} more lost server(s) until {name} is back. Flash a replacement baked under the"
            " same name: it joins as a new member")
