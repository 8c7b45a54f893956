"""Resource fit (issue 20 #6): the chosen add-ons packed onto the nodes' memory and CPU, from
our manifests' numbers (read back from the rendered add-ons here) and published ones
(ceil/addons/fit.py, docs/research/addon-resources.md), and docs/addons.md's tables."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ceil.addons import fit
from ceil.addons.catalog import Catalog, selected
from ceil.addons.fit import Pod, Workload, fit_problems, fit_warnings, headroom_mib, place, pod_count, pod_requests
from ceil.addons.render import render_selected
from ceil.catalog import load_flavor
from ceil.config import parse_cluster
from ceil.errors import ConfigError
from ceil.features import preflight

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"


def make(nodes: str, extra: str = ""):
    return parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\nnodes: {nodes}\n{extra}")


def problems(cluster):
    return fit_problems(cluster, selected(cluster, Catalog()))


SEED = "[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}, {name: three, ram_gib: 1}, {name: four, ram_gib: 1}]"


def test_unknown_memory_is_not_checked_and_the_bake_says_so_once_with_the_way_to_turn_it_on():
    cluster = make("[{name: one, role: server}, {name: two, ram_gib: 1}, {name: three}]")
    assert headroom_mib(cluster) is None and problems(cluster) == []
    (warning,) = fit_warnings(cluster)
    assert "not checked" in warning and "one, three give no ram_gib" in warning and "nodes[].ram_gib" in warning
    # Said once for the whole bake (the hook runs per server role; preflight keeps one of each).
    three_servers = make("[{name: one, role: server}, {name: two, role: server}, {name: three, role: server}]")
    warnings = preflight(three_servers, ["router", "one", "two", "three"], load_flavor(three_servers.flavor))
    assert sum("ram_gib" in w for w in warnings) == 1


def test_the_seeds_four_pi_3b_plus_fit_the_default_add_ons_with_a_warning_for_the_server():
    cluster = make(SEED)
    assert problems(cluster) == []
    (warning,) = fit_warnings(cluster)
    assert "nodes[one] is a server with 1 GiB" in warning and "2 GB" in warning


def test_longhorn_on_a_node_under_its_4_gib_minimum_is_refused():
    cluster = make("[{name: one, role: server, ram_gib: 4}, {name: two, ram_gib: 2, storage_device: /dev/sda},"
                   " {name: three, ram_gib: 4, storage_device: /dev/sda}]")
    (problem,) = problems(cluster)
    assert "nodes[two].ram_gib is 2" in problem and "at least 4 GiB" in problem and "/dev/sda" in problem


def test_too_little_memory_for_the_add_ons_requests_is_refused_with_the_numbers():
    cluster = make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]")
    (problem,) = problems(cluster)
    # 1024 MiB less k3s (1159 on a server, 256 on an agent) and the kubelet's 100 MiB threshold.
    assert "the pods ask 1188 MiB and 660m CPU in all" in problem and "dashboard 800" in problem
    assert "one 0 MiB/4000m, two 668 MiB/4000m" in problem and "100 MiB eviction threshold" in problem
    assert "no node has room for dashboard's metrics-scraper (200 MiB, 100m CPU)" in problem
    # Without the dashboard (800 MiB of requests) the same two boards fit.
    assert problems(make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]",
                         "addons: {disable: [dashboard]}\n")) == []


def test_the_bake_refuses_before_writing_anything():
    cluster = make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]")
    with pytest.raises(ConfigError, match="(?s)nothing was baked.*no node has room for"):
        preflight(cluster, ["router", "one", "two"], load_flavor(cluster.flavor))


def test_ram_must_be_a_pi_size():
    with pytest.raises(ConfigError, match="ram_gib"):
        make("[{name: one, role: server, ram_gib: 3}]")


# ---- packing -----------------------------------------------------------------------------

def test_first_fit_decreasing_refuses_pods_that_fit_the_sum_but_no_single_node():
    room = {"a": [300, 4000], "b": [300, 4000]}
    pods = [Pod("x", "p", 200, 0)] * 3  # 600 MiB asked, 600 free, but no node holds two
    assert place(pods, room) == [Pod("x", "p", 200, 0)] and room == {"a": [100, 4000], "b": [100, 4000]}
    # Largest first: the small pods fill what the large ones leave, whatever order they come in.
    room = {"a": [300, 4000], "b": [200, 4000]}
    assert place([Pod("x", "s", 100, 0), Pod("x", "l", 200, 0), Pod("x", "m", 200, 0)], room) == []
    # CPU counts too: a node with the memory but not the cores is passed over.
    room = {"a": [500, 100], "b": [500, 4000]}
    assert place([Pod("x", "busy", 50, 250)], room) == [] and room == {"a": [500, 100], "b": [450, 3750]}


def test_a_pod_no_node_can_hold_is_refused_even_when_the_sum_fits(monkeypatch):
    # Three agents with 668 MiB each after k3s: four 450 MiB pods ask 1800 of 2004, one per node.
    monkeypatch.setattr(fit, "WORKLOADS", {"demo": [Workload("big", 450, 10, pods=4, chart="a test's")]})
    (problem,) = problems(make(SEED))
    assert "no node has room for demo's big (450 MiB, 10m CPU)" in problem
    assert "the pods ask 1940 MiB" in problem and "two 668 MiB/4000m" in problem  # with k3s's 140
    # k3s's CoreDNS and metrics-server (70 MiB, 100m each) went where room was left.
    assert "they leave one 0 MiB/4000m, two 78 MiB/3790m, three 218 MiB/3990m, four 218 MiB/3990m" in problem


def test_a_daemonsets_pod_is_counted_on_every_node(monkeypatch):
    # 3500m on each of the four nodes leaves 500m: a 1000m pod fits nowhere, though the cores' sum
    # (16000m) holds 4 x 3500 + 1000 and k3s's 200.
    monkeypatch.setattr(fit, "WORKLOADS", {"demo": [Workload("agent", 0, 3500, per_node=True, chart="a test's"),
                                                    Workload("busy", 1, 1000, chart="a test's")]})
    assert [p.name for p in pod_requests(make(SEED), selected(make(SEED), Catalog())) if p.per_node] == ["agent"]
    (problem,) = problems(make(SEED))
    assert "no node has room for demo's busy (1 MiB, 1000m CPU)" in problem and "15200m CPU in all" in problem
    # A 1 GiB server has nothing left after k3s: a DaemonSet's pod asking memory is refused there.
    monkeypatch.setattr(fit, "WORKLOADS", {"demo": [Workload("agent", 100, 0, per_node=True, chart="a test's")]})
    (problem,) = problems(make(SEED))
    assert problem.startswith("demo's agent (100 MiB, 0m CPU) runs on every node, but node one has 0 MiB/4000m")


def test_longhorns_instance_manager_takes_12_percent_of_every_nodes_cpu():
    nodes = "[{name: one, role: server, ram_gib: 4}, {name: two, ram_gib: 4, storage_device: /dev/sda}]"
    pods = pod_requests(make(nodes), selected(make(nodes), Catalog()))
    assert [(p.name, p.cpu_m, p.per_node) for p in pods if p.addon == "storage"] == [("instance-manager", 480, True)]
    without_drives = make("[{name: one, role: server, ram_gib: 4}]")
    assert not [p for p in pod_requests(without_drives, selected(without_drives, Catalog())) if p.addon == "storage"]


def test_too_many_cpu_requests_are_refused(monkeypatch):
    monkeypatch.setattr(fit, "WORKLOADS", {"demo": [Workload("spin", 1, 3000, pods=2, chart="a test's")]})
    (problem,) = problems(make("[{name: one, role: server, ram_gib: 8}]"))
    assert "no node has room for demo's spin (1 MiB, 3000m CPU)" in problem and "6200m CPU in all" in problem


def test_the_canary_counts_flagger_its_load_tester_the_primary_and_the_release_under_test():
    cluster = make(SEED, "addons: {enable: [canary]}\n")
    canary = [(p.name, p.memory_mib) for p in pod_requests(cluster, selected(cluster, Catalog())) if p.addon == "canary"]
    assert canary == [("flagger", 32), ("loadtester", 64), ("rollout", 32), ("rollout", 32)]


def test_a_workload_names_its_manifest_or_cites_its_chart():
    with pytest.raises(ValueError, match="either the manifest"):
        Workload("x", 1, 1)
    with pytest.raises(ValueError, match="either the manifest"):
        Workload("x", 1, 1, manifest="Deployment a/b", chart="c")


def test_the_eviction_threshold_is_the_one_ceils_k3s_config_sets():
    from ceil.k3s.node_config import KUBELET_EVICTION_HARD

    assert f"memory.available<{fit.eviction_mib()}Mi" in KUBELET_EVICTION_HARD


# ---- our numbers, read back from what ceil renders ----------------------------------------

DRIVES = ("[{name: one, role: server, ram_gib: 4}, {name: two, ram_gib: 4, storage_device: /dev/sda},"
          " {name: three, ram_gib: 4, storage_device: /dev/sda}, {name: four, ram_gib: 4, storage_device: /dev/sda}]")
TOKEN = "eyJhIjoiMTIzNDU2Nzg5MCJ9" * 3
EVERYTHING = ("addons: {enable: [keda, custom-metrics, canary]}\npiwatch: {enabled: true}\n"
              f"tunnel: {{enabled: true, token: {TOKEN}, replicas: 3}}\n"
              "gitops: {enabled: true, url: 'https://github.com/me/cluster.git'}\n")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
VALUES_KINDS = {"HelmChart", "HelmChartConfig"}


def memory_mib(q) -> int:
    found = re.fullmatch(r"(\d+)(Mi|Gi)", str(q))
    if not found:
        pytest.fail(f"memory request {q!r}: this test reads Mi and Gi; teach it the unit")
    return int(found[1]) * (1024 if found[2] == "Gi" else 1)


def cpu_m(q) -> int:
    q = str(q)
    if re.fullmatch(r"\d+m", q):
        return int(q[:-1])
    if re.fullmatch(r"\d+(\.\d+)?", q):
        return round(float(q) * 1000)
    pytest.fail(f"CPU request {q!r}: this test reads millicores and cores")


def requests_in(tree, path=()):
    """(path, requests) of every `requests` mapping that asks memory or CPU, anywhere in tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "requests" and isinstance(value, dict) and {"memory", "cpu"} & value.keys():
                yield path, value
            else:
                yield from requests_in(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from requests_in(value, (*path, str(i)))


def pod_spec(m) -> dict:
    if m["kind"] == "Pod":
        return m["spec"]
    if m["kind"] == "CronJob":
        return m["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return m["spec"]["template"]["spec"]


def pods_of(m, manifests) -> int | str:
    """How many pods a workload runs in use, read from the manifests that own its replicas."""
    if m["kind"] == "DaemonSet":
        return "per node"
    if "replicas" in m["spec"]:
        return m["spec"]["replicas"]
    name, ns = m["metadata"]["name"], m["metadata"].get("namespace")
    for o in manifests:
        if o["metadata"].get("namespace") != ns:
            continue
        if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == name:
            return o["spec"].get("minReplicas", 1)
        if o["kind"] == "ScaledObject" and o["spec"]["scaleTargetRef"]["name"] == name:
            return max(o["spec"].get("minReplicaCount", 0), 1)  # zero until a request wakes one
        if o["kind"] == "Canary" and o["spec"]["targetRef"]["name"] == name:
            return 2  # Flagger's primary copy, and the target itself as the canary of a release
    return 1


def rendered_requests(cluster) -> dict[str, tuple[str, int, int, int | str | None]]:
    """Every request the rendered add-ons set: where -> (add-on, MiB, millicores, pods)."""
    addons = render_selected(cluster)
    everything = [m for a in addons for m in a.manifests]
    found = {}
    for addon in addons:
        for m in addon.manifests:
            kind, name, ns = m["kind"], m["metadata"]["name"], m["metadata"].get("namespace")
            if kind in VALUES_KINDS:
                values = yaml.safe_load(m["spec"].get("valuesContent") or "{}")
                for path, req in requests_in(values):
                    found[f"{kind} {name}: {'.'.join(path)}"] = (
                        addon.name, memory_mib(req.get("memory", "0Mi")), cpu_m(req.get("cpu", "0m")), None)
            elif kind in POD_KINDS:
                spec = pod_spec(m)
                asks = [c.get("resources", {}).get("requests", {}) for c in spec["containers"]]
                init = [c.get("resources", {}).get("requests", {}) for c in spec.get("initContainers", [])]
                if not any(asks + init):
                    continue
                mem = max([sum(memory_mib(r.get("memory", "0Mi")) for r in asks)]
                          + [memory_mib(r.get("memory", "0Mi")) for r in init])
                cpu = max([sum(cpu_m(r.get("cpu", "0m")) for r in asks)] + [cpu_m(r.get("cpu", "0m")) for r in init])
                found[f"{kind} {ns}/{name}"] = (addon.name, mem, cpu, pods_of(m, everything))
            else:
                assert not list(requests_in(m)), f"{addon.name}: {kind} {name} asks for resources this test does not read"
    return found


def test_everything_is_enabled_for_the_tie():
    cluster = make(DRIVES, EVERYTHING)
    assert {s.name for s in selected(cluster, Catalog())} == set(Catalog().specs)


def test_fits_numbers_for_our_manifests_are_the_rendered_ones():
    """A request changed in a manifest or in our chart values, and not in fit.py, fails here."""
    cluster = make(DRIVES, EVERYTHING)
    rendered = rendered_requests(cluster)
    ours = {w.manifest: (addon, w) for addon, ws in fit.WORKLOADS.items() for w in ws if w.manifest}
    assert set(rendered) == set(ours), "fit.WORKLOADS and the rendered requests name different workloads"
    for where, (addon, memory, cpu, pods) in rendered.items():
        counted, w = ours[where]
        assert (counted, w.memory_mib, w.cpu_m) == (addon, memory, cpu), where
        if pods is not None:  # a chart's replicas are the chart's; ours are in the manifest
            assert ("per node" if w.per_node else pod_count(cluster, w)) == pods, where


# ---- docs/addons.md ------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "addons.md"


def table_after(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after the line that starts with `heading`."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    assert rows and set(rows[1][0]) == {"-"}, f"docs/addons.md: no table after {heading!r}"
    return rows[2:]


BOARDS = {"4 x Pi 3B+ (1 GiB)": [1] * 4, "3 x Pi 3B+ (1 GiB)": [1] * 3, "2 x Pi 3B+ (1 GiB)": [1] * 2,
          "4 x Pi 4/5 (2 GiB)": [2] * 4, "4 x Pi 4/5 (4 GiB)": [4] * 4}
ADDONS = {"default": "", "default without dashboard": "addons: {disable: [dashboard]}\n",
          "all": EVERYTHING.replace("replicas: 3", "replicas: 2"), "all, tunnel.replicas 3": EVERYTHING}
NAMES = ["one", "two", "three", "four"]


def board_cluster(boards: str, addons: str):
    drives = addons.endswith(", Longhorn")
    rams = BOARDS[boards]
    nodes = ", ".join(f"{{name: {n}, {'role: server, ' if i == 0 else ''}ram_gib: {r}"
                      f"{', storage_device: /dev/sda' if drives and i else ''}}}"
                      for i, (n, r) in enumerate(zip(NAMES, rams)))
    return make(f"[{nodes}]", ADDONS[addons.removesuffix(", Longhorn")])


def test_docs_what_fits_table_is_what_fit_computes():
    rows = table_after("What fits the default four nodes")
    assert len(rows) >= 4
    for boards, addons, left, ask, verdict in rows:
        cluster = board_cluster(boards, addons)
        chosen = selected(cluster, Catalog())
        pods = pod_requests(cluster, chosen)
        per_node = len(cluster.nodes)
        memory = sum(p.memory_mib * (per_node if p.per_node else 1) for p in pods)
        cpu = sum(p.cpu_m * (per_node if p.per_node else 1) for p in pods)
        room = headroom_mib(cluster)
        assert left == ", ".join(str(max(m, 0)) for m in room.values()) + " MiB", (boards, addons)
        assert ask == f"{memory} MiB, {cpu}m", (boards, addons)
        refused = bool(fit_problems(cluster, chosen))
        assert verdict.startswith("**refused**" if refused else "fits"), (boards, addons, verdict)


def test_docs_per_add_on_table_is_what_fit_counts():
    """Each row's "counted" cell: the add-on's pods on four Pi 4 nodes, three of them with drives,
    tunnel.replicas at its default."""
    cluster = board_cluster("4 x Pi 4/5 (4 GiB)", "all, Longhorn")
    pods = pod_requests(cluster, selected(cluster, Catalog()))
    memory, cpu = Counter(), Counter()
    for p in pods:
        memory[p.addon] += p.memory_mib * (len(cluster.nodes) if p.per_node else 1)
        cpu[p.addon] += p.cpu_m * (len(cluster.nodes) if p.per_node else 1)
    rows = table_after("## Resource fit")
    seen = set()
    for row in rows:
        name, counted = row[0].split()[0], row[3]
        if name == "k3s" and "itself" in row[0]:
            assert f"server {fit.K3S_SERVER_MIB} MiB" in counted and f"agent {fit.K3S_AGENT_MIB} MiB" in counted
            assert f"{fit.eviction_mib()} MiB" in counted
            continue
        assert counted.split(" (")[0] == f"{memory[name]} MiB, {cpu[name]}m", row[0]
        seen.add(name)
    assert rows and seen == set(Catalog().specs) | {"k3s"}
