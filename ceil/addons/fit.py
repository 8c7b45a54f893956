"""Do the chosen add-ons fit the nodes? Checked only when every node gives `ram_gib` (unknown
memory cannot be checked; fit_warnings then says how to turn the check on), and only against
numbers that are ours or published (docs/research/addon-resources.md has the sources):

- k3s's own footprint, measured on a Pi 4 (docs.k3s.io, "Resource Profiling"): a server with
  SQLite and one agent 1215 MB, an agent 268 MB. Nothing reserves it (k3s sets no kube- or
  system-reserved), so it is subtracted here to see what pods can really have, and so is the
  kubelet's memory eviction threshold that ceil sets (ceil/k3s/node_config.py).
- each pod's requests: ours where our manifests or chart values set them
  (tests/unit/test_addons_fit.py reads them from the rendered add-ons), else the chart's default,
  cited. Most charts declare none, so the scheduler counts nothing for them, and this check
  cannot either.
- Longhorn's stated minimum of 4 GiB per node that holds a drive (Longhorn best practices).

The pods are packed as the scheduler would have to place them: one node each, largest first,
each on the first node with room for both its memory and its CPU (first-fit decreasing); a
DaemonSet's pod takes its share on every node. A refusal names the pod no node has room for and
every node's numbers. A server under k3s's stated 2 GB minimum is a warning: the seed's cluster
ran on 1 GiB Pi 3B+ boards.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..config import Cluster
from ..errors import CeilError
from ..k3s.node_config import KUBELET_EVICTION_HARD
from .catalog import AddonSpec
from .render import storage_facts

MIB_PER_GIB = 1024


def _mb_in_mib(mb: int) -> int:
    """docs.k3s.io measures in MB (10^6 bytes); rounded up, as a footprint should be."""
    return -(-mb * 1000 * 1000 // 2**20)


K3S_SERVER_MIB = _mb_in_mib(1215)  # 1159
K3S_AGENT_MIB = _mb_in_mib(268)  # 256
K3S_SERVER_MIN_GIB = 2  # docs.k3s.io, "Requirements": server 2 GB, agent 512 MB
LONGHORN_MIN_GIB = 4
# Every Pi ceil bakes for (3B+, 4, 5) has four cores, and cluster.yaml does not name the model.
# k3s reserves none of them (allocatable = capacity), and CPU is shared by time, not refused:
# k3s's own use (a quarter of a core on a server) is not subtracted, since the scheduler leaves
# a pod Pending only when the requests pass the cores.
NODE_CPU_M = 4 * 1000


def eviction_mib() -> int:
    """The free memory below which the kubelet evicts pods, as ceil's k3s config sets it: pods
    never get it."""
    found = re.search(r"memory\.available<(\d+)Mi", KUBELET_EVICTION_HARD)
    if found is None:
        raise CeilError(f"ceil/k3s/node_config.py: KUBELET_EVICTION_HARD is {KUBELET_EVICTION_HARD!r}, with no"
                        " memory.available<NMi, which the add-on fit check subtracts from every node: give one")
    return int(found[1])


@dataclass(frozen=True)
class Workload:
    """Pods of one kind, and what each asks the scheduler for."""

    name: str
    memory_mib: int
    cpu_m: int
    pods: int | str = 1  # a number, or the cluster.yaml key that sets it
    # Ours: where the rendered add-on sets the requests, "<kind> <namespace>/<name>" or
    # "HelmChart <name>: <values path>"; tests/unit/test_addons_fit.py reads them there.
    manifest: str | None = None
    chart: str | None = None  # else the chart's (or its operator's) default, cited
    per_node: bool = False  # a DaemonSet's: one pod on every node

    def __post_init__(self) -> None:
        if (self.manifest is None) == (self.chart is None):
            raise ValueError(f"workload {self.name}: name either the manifest that sets its requests or the"
                             " chart whose default they are")


# Per add-on, every pod that declares requests; nothing else in the catalog declares any. A
# workload counts the pods it runs in use: its replicas, an autoscaler's minimum (sleepy's zero
# counted as the one pod a request wakes), Flagger's primary and the canary of a release. Pods an
# autoscaler adds above that are its to place or leave Pending, not the bake's to refuse.
WORKLOADS: dict[str, list[Workload]] = {
    "dashboard": [Workload(n, 200, 100, chart="kubernetes-dashboard 7.14.0 values")
                  for n in ("api", "auth", "web", "metrics-scraper")],
    "monitoring": [Workload("alertmanager", 200, 0,
                            chart="prometheus-operator's default where kube-prometheus-stack 79.5.0 sets none")],
    "demo": [Workload("httpd", 8, 5, pods=2, manifest="Deployment demo/httpd"),
             Workload("podinfo", 32, 50, manifest="Deployment demo/podinfo")],  # its HPA's minReplicas
    "tunnel": [Workload("cloudflared", 32, 20, pods="tunnel.replicas", manifest="Deployment tunnel/cloudflared")],
    "keda": [
        Workload("operator", 100, 100, manifest="HelmChart keda: resources.operator"),
        Workload("metrics apiserver", 100, 100, manifest="HelmChart keda: resources.metricServer"),
        Workload("webhooks", 100, 50, manifest="HelmChart keda: resources.webhooks"),
        # One of each (our values); the requests are the chart's, read from a chart older than 0.15.0.
        *(Workload(f"http-add-on {n}", 20, 250, chart="keda-add-ons-http values (older than 0.15.0)")
          for n in ("operator", "scaler", "interceptor")),
        Workload("sleepy", 32, 50, manifest="Deployment demo/sleepy"),
    ],
    "custom-metrics": [Workload("prometheus-adapter", 128, 50, manifest="HelmChart prometheus-adapter: resources")],
    "canary": [
        Workload("flagger", 32, 10, manifest="HelmChart flagger: resources"),
        # The load tester sends the release's traffic during analysis (the chart's request, ours too).
        Workload("loadtester", 64, 10, manifest="HelmChart flagger-loadtester: resources"),
        # Flagger copies `rollout` to rollout-primary, which always runs, and brings `rollout`
        # itself up beside it as the canary for the length of a release: two pods at worst.
        Workload("rollout", 32, 50, pods=2, manifest="Deployment demo/rollout"),
    ],
    "gitops": [Workload("source-controller", 64, 50, manifest="HelmChart flux2: sourceController.resources"),
               Workload("kustomize-controller", 64, 100, manifest="HelmChart flux2: kustomizeController.resources")],
}
K3S_SYSTEM_PODS = [Workload("coredns", 70, 100, chart="k3s manifests/coredns.yaml"),
                   Workload("metrics-server", 70, 100, chart="k3s v1.36 metrics-server v0.8.1")]
# Longhorn keeps 12 % of every node's CPU for its instance manager, drive or not.
LONGHORN_INSTANCE_MANAGER = Workload("instance-manager", 0, NODE_CPU_M * 12 // 100, per_node=True,
                                     chart="Longhorn 1.11.3 guaranteedInstanceManagerCPU, 12 %")


@dataclass(frozen=True)
class Pod:
    addon: str
    name: str
    memory_mib: int
    cpu_m: int
    per_node: bool = False

    def __str__(self) -> str:
        return f"{self.addon}'s {self.name} ({self.memory_mib} MiB, {self.cpu_m}m CPU)"


def headroom_mib(cluster: Cluster) -> dict[str, int] | None:
    """Each node's memory left for pods after k3s itself and the kubelet's eviction threshold
    (below 0 on a 1 GiB server), or None when a node's memory is unknown."""
    if any(n.ram_gib is None for n in cluster.nodes):
        return None
    evict = eviction_mib()
    return {n.name: n.ram_gib * MIB_PER_GIB - (K3S_SERVER_MIB if n.role == "server" else K3S_AGENT_MIB) - evict
            for n in cluster.nodes}


def pod_count(cluster: Cluster, workload: Workload) -> int:
    if isinstance(workload.pods, int):
        return workload.pods
    value: object = cluster
    for part in workload.pods.split("."):
        value = getattr(value, part)
    return int(value)


def pod_requests(cluster: Cluster, chosen: list[AddonSpec]) -> list[Pod]:
    """Every pod with requests the chosen add-ons run, k3s's own system pods first."""
    pods = [Pod("k3s", w.name, w.memory_mib, w.cpu_m) for w in K3S_SYSTEM_PODS]
    for spec in chosen:
        workloads = list(WORKLOADS.get(spec.name, []))
        if spec.name == "storage" and storage_facts(cluster)["longhorn"]:
            workloads.append(LONGHORN_INSTANCE_MANAGER)
        for w in workloads:
            pods += [Pod(spec.name, w.name, w.memory_mib, w.cpu_m, w.per_node)] * pod_count(cluster, w)
    return pods


def place(pods: list[Pod], room: dict[str, list[int]]) -> list[Pod]:
    """First-fit decreasing: the largest pod first (memory, then CPU), each onto the first node in
    cluster.yaml order with room for both. `room` ([MiB, millicores] per node) is taken from as the
    pods are placed. Returns the pods no node had room for."""
    unplaced = []
    for pod in sorted(pods, key=lambda p: (p.memory_mib, p.cpu_m), reverse=True):
        node = next((r for r in room.values() if pod.memory_mib <= r[0] and pod.cpu_m <= r[1]), None)
        if node is None:
            unplaced.append(pod)
        else:
            node[0] -= pod.memory_mib
            node[1] -= pod.cpu_m
    return unplaced


def longhorn_problems(cluster: Cluster, chosen: list[AddonSpec]) -> list[str]:
    if not any(s.name == "storage" for s in chosen):
        return []
    return [f"nodes[{n.name}].ram_gib is {n.ram_gib}: Longhorn (add-on storage, for its storage_device"
            f" {n.storage_device}) needs at least {LONGHORN_MIN_GIB} GiB on every node with a drive (Longhorn's"
            " best practices): remove storage_device from that node, or disable storage (addons.disable)"
            for n in cluster.nodes if n.storage_device and n.ram_gib < LONGHORN_MIN_GIB]


def _rooms(room: dict[str, list[int]]) -> str:
    return ", ".join(f"{name} {m} MiB/{c}m" for name, (m, c) in room.items())


def _asked(pods: list[Pod], room: dict[str, list[int]]) -> str:
    by_addon: Counter[str] = Counter()
    for p in pods:
        by_addon[p.addon] += p.memory_mib * (len(room) if p.per_node else 1)
    cpu = sum(p.cpu_m * (len(room) if p.per_node else 1) for p in pods)
    return (f"the pods ask {sum(by_addon.values())} MiB and {cpu}m CPU in all"
            f" ({', '.join(f'{a} {m}' for a, m in by_addon.items())})")


def fit_problems(cluster: Cluster, chosen: list[AddonSpec]) -> list[str]:
    memory = headroom_mib(cluster)
    if memory is None:
        return []
    problems = longhorn_problems(cluster, chosen)
    pods = pod_requests(cluster, chosen)
    room = {name: [max(m, 0), NODE_CPU_M] for name, m in memory.items()}
    free = _rooms(room)
    where = f"after k3s itself and the kubelet's {eviction_mib()} MiB eviction threshold"
    for pod in (p for p in pods if p.per_node):
        for name, r in room.items():
            if pod.memory_mib > r[0] or pod.cpu_m > r[1]:
                problems.append(f"{pod} runs on every node, but node {name} has {r[0]} MiB/{r[1]}m left {where}"
                                f" and the other pods on every node: disable {pod.addon} (addons.disable) or use a"
                                " larger Pi")
            else:
                r[0] -= pod.memory_mib
                r[1] -= pod.cpu_m
    if unplaced := place([p for p in pods if not p.per_node], room):
        names = ", ".join(f"{k} x {p}" if k > 1 else str(p) for p, k in Counter(unplaced).items())
        problems.append(f"no node has room for {names}: {_asked(pods, room)}, and the nodes have {free} {where};"
                        f" placed largest first, each on the first node with room, they leave {_rooms(room)}:"
                        " disable some add-ons (addons.disable), add nodes or use Pis with more memory")
    return problems


def fit_warnings(cluster: Cluster) -> list[str]:
    warnings = []
    if unknown := [n.name for n in cluster.nodes if n.ram_gib is None]:
        warnings.append(f"the add-ons were not checked against the nodes' memory and CPU: {', '.join(unknown)} give no"
                        " ram_gib, and unknown memory cannot be checked; set nodes[].ram_gib on every node (1 for a"
                        " Pi 3B+; 1, 2, 4 or 8 for a Pi 4; up to 16 for a Pi 5) and the bake refuses add-ons that"
                        " cannot fit (docs/addons.md, \"Resource fit\")")
    small = [n for n in cluster.nodes
             if n.role == "server" and n.ram_gib is not None and n.ram_gib < K3S_SERVER_MIN_GIB]
    warnings += [f"nodes[{n.name}] is a server with {n.ram_gib} GiB: k3s asks {K3S_SERVER_MIN_GIB} GB for a server and"
                 f" measures about {K3S_SERVER_MIB} MiB for itself on a Pi 4; it runs, with little room for add-ons"
                 for n in small]
    return warnings
