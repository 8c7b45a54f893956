"""The canary add-on's traffic source (issue 20 #3): Flagger's load tester, the Canary's webhook
that sets it running during an analysis, and who may reach it. Rendered from the catalog here;
the charts themselves (helm template with these values, their keys and requests) are checked in
tests/apiserver/test_addons_canary_charts.py, where the Helm build and the chart sources are."""

from __future__ import annotations

import re
import shlex

import yaml

from ceil.addons.catalog import Catalog
from ceil.addons.render import render_selected
from ceil.config import parse_cluster

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"
# k3s's packaged Traefik: Service kube-system/traefik, port 80 its `web` entry point, which both
# IngressRoutes of the demo use (tests/infra/test_addons.py checks the Service on hardware).
TRAEFIK = "http://traefik.kube-system/"


def canary_addon(domain: str = "ceil.internal"):
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\ndomain: {domain}\n"
                            "nodes: [{name: one, role: server}, {name: two}]\naddons: {enable: [canary]}\n")
    return next(a for a in render_selected(cluster) if a.name == "canary")


def one(manifests, kind, name):
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def seconds(duration: str) -> int:
    found = re.fullmatch(r"(\d+)([sm])", duration)
    assert found, f"{duration!r}: this test reads Ns and Nm"
    return int(found[1]) * (60 if found[2] == "m" else 1)


def hey_args(cmd: str) -> tuple[dict[str, str], list[str]]:
    """hey's flags (each takes a value) and its positional arguments."""
    words = shlex.split(cmd)
    assert words[0] == "hey", cmd
    flags, rest, i = {}, [], 1
    while i < len(words):
        if words[i].startswith("-"):
            assert words[i] not in flags, f"{words[i]} given twice: {cmd}"
            flags[words[i]], i = words[i + 1], i + 2
        else:
            rest, i = [*rest, words[i]], i + 1
    return flags, rest


def test_every_release_is_judged_on_traffic_the_load_tester_sends_through_traefik():
    addon = canary_addon("lab.example.internal")
    tester = one(addon.manifests, "HelmChart", "flagger-loadtester")["spec"]
    flagger = one(addon.manifests, "HelmChart", "flagger")["spec"]
    # From the repository and into the namespace of the Flagger it serves.
    assert (tester["repo"], tester["chart"], tester["targetNamespace"]) == (
        flagger["repo"], "loadtester", flagger["targetNamespace"])
    analysis = one(addon.manifests, "Canary", "rollout")["spec"]["analysis"]
    (hook,) = analysis["webhooks"]
    # `rollout`: called at every step of the analysis, not once before it (pre-rollout).
    assert hook["type"] == "rollout" and hook["metadata"]["type"] == "cmd"
    # The chart names its Service after the release when the release's name holds "loadtester".
    assert hook["url"] == f"http://flagger-loadtester.{tester['targetNamespace']}/"
    flags, targets = hey_args(hook["metadata"]["cmd"])
    # Through Traefik as a visitor: Flagger judges Traefik's series of its weighted service, and
    # only requests that reach the host's route are split by the weights.
    assert targets == [TRAEFIK] and flags["-host"] == "rollout.lab.example.internal"
    assert "rollout" in Catalog().get("canary").ingress_hosts
    assert "-H" not in flags  # no A/B header: that route would bypass the weights
    # A run (restarted at each step once the last one ended) covers each metric's window.
    assert seconds(flags["-z"]) >= max(seconds(m["interval"]) for m in analysis["metrics"])
    assert seconds(flags["-z"]) >= seconds(analysis["interval"])


def test_only_flagger_may_ask_the_load_tester_to_run_a_command():
    """The load tester runs the shell command in whatever request reaches it."""
    addon = canary_addon()
    tester = one(addon.manifests, "HelmChart", "flagger-loadtester")["spec"]
    policy = one(addon.manifests, "NetworkPolicy", "flagger-loadtester")
    assert policy["metadata"]["namespace"] == tester["targetNamespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    # Pod labels of both charts: tests/apiserver/test_addons_canary_charts.py reads them from helm.
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "loadtester"}}
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "flagger"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    # And it serves only canaries in the demo's namespace.
    regexp = yaml.safe_load(tester["valuesContent"])["cmd"]["namespaceRegexp"]
    canary = one(addon.manifests, "Canary", "rollout")
    assert regexp == f"^{canary['metadata']['namespace']}$"


def test_the_load_tester_is_up_before_the_canary_exists():
    addon = canary_addon()
    steps = [[(m["kind"], m["metadata"]["name"]) for m in s.manifests] for s in addon.steps]
    tester_step = next(i for i, s in enumerate(steps) if ("HelmChart", "flagger-loadtester") in s)
    canary_step = next(i for i, s in enumerate(steps) if ("Canary", "rollout") in s)
    assert tester_step < canary_step
    wait = addon.steps[tester_step].wait_for
    assert "kube-system/flagger-loadtester" in wait["helmcharts"]
    assert "flagger-system/flagger-loadtester" in wait["deployments"]
