"""Issue 18 #10: a pinned chart is enforced at install, not only checked.

helm-controller installs whatever a repository serves under a chart's version. With a pin in
addons/pins.yaml the HelmChart is marked with the digest at render time, and the add-on job
downloads the archive from a real HTTP server (here on 127.0.0.1, laid out as a Helm repository),
refuses other bytes before anything of the step is applied, and applies the archive itself as
`chartContent`. The job meets the local Kubernetes API stand-in (tests/fakes/kube_api.py), which
plays helm-controller's part: the ConfigMap it keeps the archive in.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import http.server
import os
import threading
from pathlib import Path

import pytest
import yaml

from ceil.addons.job import charts
from ceil.addons.pins import Pins, chart_key
from ceil.addons.render import build_plan, render_selected
from tests.unit.test_addons_job import NODES, FakeTime, cluster, make_applier

from fakes.kube_api import KubeApiStandIn  # noqa: E402  (tests/ on the path: test_addons_job put it there)

ARCHIVE = os.urandom(4096)  # helm-controller only stores it; the stand-in does not unpack it
DIGEST = "sha256:" + hashlib.sha256(ARCHIVE).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """A chart repository on 127.0.0.1: index.yaml naming metallb's version with a relative URL."""
    root = tmp_path / "repo"
    root.mkdir()

    def publish(version: str, archive: bytes = ARCHIVE) -> None:
        (root / f"metallb-{version}.tgz").write_bytes(archive)
        index = {"apiVersion": "v1", "entries": {"metallb": [
            {"name": "metallb", "version": version, "urls": [f"metallb-{version}.tgz"],
             "digest": hashlib.sha256(archive).hexdigest()}]}}
        (root / "index.yaml").write_text(yaml.safe_dump(index))

    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", publish
    finally:
        server.shutdown()


def served_from(plan: dict, url: str, pin: str | None) -> tuple[dict, str]:
    """The plan with metallb's HelmChart taken from `url` and pinned to `pin`; its version."""
    plan = copy.deepcopy(plan)
    chart = next(m for a in plan["addons"] for s in a["steps"] for m in s["manifests"]
                 if m["kind"] == "HelmChart" and m["metadata"]["name"] == "metallb")
    chart["spec"]["repo"] = url
    if pin:
        chart["metadata"].setdefault("annotations", {})[charts.CHART_PIN] = pin
    return plan, chart["spec"]["version"]


def test_a_pinned_chart_is_marked_with_its_digest_and_an_unpinned_one_is_not():
    c = cluster()
    rendered = render_selected(c, names=["metallb", "monitoring"], pins=Pins(images={}, charts={}))
    helmcharts = {m["metadata"]["name"]: m for a in rendered for m in a.manifests if m["kind"] == "HelmChart"}
    key = chart_key(helmcharts["metallb"]["spec"])
    rendered = render_selected(c, names=["metallb", "monitoring"], pins=Pins(images={}, charts={key: DIGEST}))
    helmcharts = {m["metadata"]["name"]: m for a in rendered for m in a.manifests if m["kind"] == "HelmChart"}
    assert helmcharts["metallb"]["metadata"]["annotations"][charts.CHART_PIN] == DIGEST
    assert charts.CHART_PIN not in (helmcharts["kube-prometheus-stack"]["metadata"].get("annotations") or {})


def test_the_job_installs_the_pinned_archive_itself_and_fetches_nothing_by_version(repo, tmp_path):
    url, publish = repo
    plan, version = served_from(build_plan(cluster()), url, DIGEST)
    publish(version)
    with KubeApiStandIn() as api:
        api.k3s_boot()
        for n in NODES:
            api.add_node(n)
        report = make_applier(api, tmp_path, FakeTime()).run(plan, node_timeout=600)
        assert report.ok, report.messages
        chart = api.find("helm.cattle.io/v1", "HelmChart", "metallb", "kube-system")
        assert base64.b64decode(chart["spec"]["chartContent"]) == ARCHIVE
        assert not {"repo", "chart", "version"} & set(chart["spec"])
        content = api.find("v1", "ConfigMap", "chart-content-metallb", "kube-system")
        assert base64.b64decode(content["data"]["metallb.tgz.base64"]) == ARCHIVE


def test_other_bytes_under_the_pinned_version_fail_the_addon_before_anything_is_applied(repo, tmp_path):
    url, publish = repo
    plan, version = served_from(build_plan(cluster()), url, DIGEST)
    publish(version, archive=b"re-published " + ARCHIVE)
    with KubeApiStandIn() as api:
        api.k3s_boot()
        for n in NODES:
            api.add_node(n)
        report = make_applier(api, tmp_path, FakeTime()).run(plan, node_timeout=600)
        said = report.messages["metallb"]
        assert report.states["metallb"] == "failed", report.messages
        assert f"not the pinned {DIGEST}" in said and "addons pins --check" in said and "--check --write" in said, said
        assert not [n for n in api.applied_names() if n in ("HelmChart/metallb", "Namespace/metallb-system")]
        assert all(report.states[a["name"]] != "ready" for a in plan["addons"] if "metallb" in a["depends_on"])


@pytest.mark.parametrize("case, said", [
    ("no such version", "lists no such version"),
    ("repository down", "cannot read"),
    ("archive too big", "more than helm-controller can hold"),
])
def test_a_pinned_chart_that_cannot_be_had_is_refused_by_name(repo, case, said):
    url, publish = repo
    spec = {"repo": url, "chart": "metallb", "version": "0.15.2"}
    obj = {"kind": "HelmChart", "metadata": {"name": "metallb", "annotations": {charts.CHART_PIN: DIGEST}},
           "spec": spec}
    if case == "no such version":
        publish("0.15.1")
    elif case == "repository down":
        spec["repo"] = "http://127.0.0.1:9/charts"
    else:
        publish("0.15.2", archive=os.urandom(charts.MAX_ARCHIVE + 1))
    with pytest.raises(charts.ChartRefused, match=said):
        charts.pinned_chart(obj)


def test_an_unpinned_chart_and_other_kinds_pass_unchanged():
    chart = {"kind": "HelmChart", "metadata": {"name": "x"}, "spec": {"repo": "https://r", "chart": "x", "version": "1"}}
    assert charts.pinned_chart(chart, get=lambda *a: pytest.fail("fetched")) is chart
    other = {"kind": "ConfigMap", "metadata": {"name": "x", "annotations": {charts.CHART_PIN: DIGEST}}}
    assert charts.pinned_chart(other, get=lambda *a: pytest.fail("fetched")) is other


def test_the_job_ships_every_module_of_its_package():
    """A module of ceil/addons/job left out of JOB_FILES would be missing on the server."""
    from ceil.addons.hooks import JOB_FILES

    package = Path(charts.__file__).parent
    assert set(JOB_FILES) == {p.name for p in package.glob("*.py")}
    templates = Path(__file__).resolve().parents[2] / "firstboot/addons/lib/addons_job"
    assert {p.name.removesuffix(".j2") for p in templates.glob("*.py.j2")} == set(JOB_FILES)


@pytest.mark.parametrize("answer", [
    b"<html><body>Not a chart repository</body></html>",  # a captive portal's page, served with 200
    b"- a\n- list\n",
    b"entries: [metallb]\n",
    b"entries: {metallb: [just-a-string]}\n",
    b"entries: {metallb: 5}\n",
    b"entries: {metallb: [{version: [", # cut off mid-document
    http.client.IncompleteRead(b"entries:"),  # the connection dropped mid-body
    ValueError("unknown url type"),
], ids=["html", "list", "entries-list", "entry-string", "entry-number", "truncated", "dropped", "bad-url"])
def test_a_broken_index_or_connection_is_a_refusal_not_a_crash(answer):
    """The job catches ChartRefused (the add-on fails, the next run tries again); anything else
    escaped it as a traceback, leaving the add-on "applying" and the later ones untried (review)."""
    def get(url: str, limit: int) -> bytes:
        if isinstance(answer, Exception):
            raise answer
        return answer

    obj = {"kind": "HelmChart", "metadata": {"name": "metallb", "annotations": {charts.CHART_PIN: DIGEST}},
           "spec": {"repo": "https://charts.example", "chart": "metallb", "version": "0.15.2"}}
    with pytest.raises(charts.ChartRefused, match="chart metallb 0.15.2"):
        charts.pinned_chart(obj, get)


def test_render_out_embeds_the_checked_archive_for_flux_and_refuses_other_bytes(repo):
    """`addons render --out` feeds Flux, whose helm-controller would fetch the chart by version
    and never read the pin: the written HelmChart carries the archive the pin names."""
    from ceil.addons.render import embed_pinned_charts
    from ceil.errors import CeilError

    url, publish = repo
    c = cluster()
    key = chart_key(next(m for a in render_selected(c, names=["metallb"], pins=Pins(images={}, charts={}))
                         for m in a.manifests if m["kind"] == "HelmChart")["spec"])
    rendered = render_selected(c, names=["metallb"], pins=Pins(images={}, charts={key: DIGEST}))
    chart = next(m for a in rendered for m in a.manifests if m["kind"] == "HelmChart")
    chart["spec"]["repo"] = url  # the publisher, here on 127.0.0.1
    publish(chart["spec"]["version"])
    embed_pinned_charts(rendered)
    chart = next(m for a in rendered for m in a.manifests if m["kind"] == "HelmChart")
    assert base64.b64decode(chart["spec"]["chartContent"]) == ARCHIVE and "repo" not in chart["spec"]
    rendered = render_selected(c, names=["metallb"], pins=Pins(images={}, charts={key: "sha256:" + "0" * 64}))
    next(m for a in rendered for m in a.manifests if m["kind"] == "HelmChart")["spec"]["repo"] = url
    with pytest.raises(CeilError, match="metallb: chart metallb .* not the pinned sha256:0000"):
        embed_pinned_charts(rendered)
