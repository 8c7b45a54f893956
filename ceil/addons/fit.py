"""Do the chosen add-ons fit the nodes' memory? Checked only when every node gives `ram_gib`, and
only against numbers someone published (docs/research/addon-resources.md has the sources):

- k3s's own footprint, measured on a Pi 4 (docs.k3s.io, "Resource Profiling"): a server with
  SQLite and one agent 1215 MB, an agent 268 MB. Nothing reserves it (k3s sets no kube- or
  system-reserved), so it is subtracted here to see what pods can really have.
- the memory requests the charts themselves declare (most declare none, so the scheduler counts
  nothing for them, and this check cannot either).
- Longhorn's stated minimum of 4 GiB per node that holds a drive (Longhorn best practices).

A refusal names the node, its memory and the number it falls short of. A server under k3s's
stated 2 GB minimum is a warning: the seed's cluster ran on 1 GiB Pi 3B+ boards.
"""

from __future__ import annotations

from ..config import Cluster
from .catalog import AddonSpec

MIB_PER_GIB = 1024
K3S_SERVER_MIB = 1215 * 1000 * 1000 // 2**20  # "1215 M" on docs.k3s.io, in MiB
K3S_AGENT_MIB = 268 * 1000 * 1000 // 2**20
K3S_SERVER_MIN_GIB = 2  # docs.k3s.io, "Requirements": server 2 GB, agent 512 MB
LONGHORN_MIN_GIB = 4
# Memory requests the charts declare, per pod (MiB), by add-on: the scheduler must place each pod
# on one node, and all of them somewhere. Everything else in the catalog declares none.
POD_REQUESTS_MIB = {
    "dashboard": [200, 200, 200, 200],   # chart 7.14.0: api, auth, web, metrics-scraper
    "monitoring": [200],                 # prometheus-operator's default for Alertmanager
    "demo": [8, 32],                     # ours: httpd, podinfo
    "tunnel": [32],                      # ours: cloudflared, one per tunnel.replicas
    # chart 2.21.0: operator, metrics apiserver, webhooks (ours: the webhooks' 100 kept); HTTP
    # add-on 0.15.0: operator, scaler, interceptor at 20 MiB each (its chart); ours: sleepy at 32
    # only while awake, counted as the worst case.
    "keda": [100, 100, 100, 20, 20, 20, 32],
    "custom-metrics": [128],             # ours: prometheus-adapter (the chart declares none)
    "canary": [32, 32],                  # chart 1.44.0: flagger; ours: the release under test while it runs
    "gitops": [64, 64],                  # ours: Flux source- and kustomize-controller (upstream's requests)
}
K3S_SYSTEM_PODS_MIB = [70, 70]  # k3s's CoreDNS and metrics-server


def headroom_mib(cluster: Cluster) -> dict[str, int] | None:
    """Each node's memory left for pods after k3s itself, or None when a node's memory is unknown."""
    if any(n.ram_gib is None for n in cluster.nodes):
        return None
    return {n.name: n.ram_gib * MIB_PER_GIB - (K3S_SERVER_MIB if n.role == "server" else K3S_AGENT_MIB)
            for n in cluster.nodes}


def pod_requests(cluster: Cluster, chosen: list[AddonSpec]) -> list[tuple[str, int]]:
    pods = [("k3s system", m) for m in K3S_SYSTEM_PODS_MIB]
    for spec in chosen:
        requests = POD_REQUESTS_MIB.get(spec.name, [])
        if spec.name == "tunnel":
            requests = requests * cluster.tunnel.replicas
        pods += [(spec.name, m) for m in requests]
    return pods


def fit_problems(cluster: Cluster, chosen: list[AddonSpec]) -> list[str]:
    room = headroom_mib(cluster)
    if room is None:
        return []
    problems = []
    if any(s.name == "storage" for s in chosen):
        for n in cluster.nodes:
            if n.storage_device and n.ram_gib < LONGHORN_MIN_GIB:
                problems.append(
                    f"nodes[{n.name}].ram_gib is {n.ram_gib}: Longhorn (add-on storage, for its storage_device"
                    f" {n.storage_device}) needs at least {LONGHORN_MIN_GIB} GiB on every node with a drive (Longhorn's"
                    " best practices): remove storage_device from that node, or disable storage (addons.disable)")
    pods = pod_requests(cluster, chosen)
    largest_pod, largest_room = max(m for _, m in pods), max(room.values())
    if largest_pod > largest_room:
        owner = next(a for a, m in pods if m == largest_pod)
        problems.append(f"add-on {owner} asks {largest_pod} MiB for one pod, but no node has that much left after"
                        f" k3s itself (at most {max(largest_room, 0)} MiB): disable {owner} or use a larger Pi")
    asked, free = sum(m for _, m in pods), sum(max(r, 0) for r in room.values())
    if asked > free:
        by_addon: dict[str, int] = {}
        for a, m in pods:
            by_addon[a] = by_addon.get(a, 0) + m
        detail = ", ".join(f"{a} {m}" for a, m in by_addon.items())
        problems.append(f"the add-ons' pods ask {asked} MiB ({detail}) but the nodes have {free} MiB left after k3s"
                        f" itself ({', '.join(f'{k} {max(v, 0)}' for k, v in room.items())}): disable some add-ons"
                        " (addons.disable) or add nodes")
    return problems


def fit_warnings(cluster: Cluster) -> list[str]:
    small = [n for n in cluster.nodes if n.role == "server" and n.ram_gib is not None and n.ram_gib < K3S_SERVER_MIN_GIB]
    return [f"nodes[{n.name}] is a server with {n.ram_gib} GiB: k3s asks {K3S_SERVER_MIN_GIB} GB for a server and"
            f" measures about {K3S_SERVER_MIB} MiB for itself on a Pi 4; it runs, with little room for add-ons"
            for n in small]
