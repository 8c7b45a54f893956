"""Issue 18 #10: the add-ons' images and charts pinned by digest (addons/pins.yaml), and
`bake.py addons pins --check` reading today's digests from registries and chart repositories,
here a local fake that speaks the distribution API with Docker Hub's anonymous token flow and
serves chart indexes and archives; its digests are computed from the bytes it serves."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from ceil.addons import pins as pins_mod
from ceil.addons.cli import addons_group, catalog_references
from ceil.addons.catalog import Catalog
from ceil.addons.render import render_selected
from router_lan_render import KEY, REPO, cluster_from

from ceil import oci

MANIFEST = oci.tiny_image("busybox stand-in\n").manifest
IMAGE_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
CHART_TGZ = b"a chart archive\n"
# (repo, chart, version) of every repository chart addons/pins.yaml lists ("URL CHART VERSION" keys).
CATALOG_CHARTS = [tuple(k.split(" ")) for k in yaml.safe_load((REPO / "addons/pins.yaml").read_text())["charts"]
                  if len(k.split(" ")) == 3]
CHART_DIGEST = hashlib.sha256(CHART_TGZ).hexdigest()


def full_cluster():
    """Every add-on of the catalog renders (storage needs a node with a drive)."""
    return cluster_from({"addons": {"enabled": True},
                         "nodes": [{"name": "one", "role": "server"}, {"name": "two", "storage_device": "/dev/sda"}]})


@pytest.fixture
def config(tmp_path) -> str:
    """A cluster.yaml on which every add-on renders."""
    data = yaml.safe_load((REPO / "cluster.example.yaml").read_text())
    data["ssh"] = {"authorized_keys": [KEY]}
    data["router"]["uplink"] = {"type": "ethernet"}
    data["addons"] = {"enabled": True}
    data["nodes"] = [{"name": "one", "role": "server"}, {"name": "two", "storage_device": "/dev/sda"}]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Fake(BaseHTTPRequestHandler):
    """/<host>/v2/<repo>/manifests/<tag> (bearer token from /<host>/token), /<host>/.../index.yaml,
    /<host>/....tgz. `moved` tags answer with another digest (a re-pushed tag)."""
    moved: set = set()
    token = "fake-token"

    def _reply(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        m = re.fullmatch(r"/([^/]+)/v2/(.+)/manifests/([^/]+)", self.path)
        if not m:
            return self._reply(404)
        host = m.group(1)
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            realm = f"http://{self.headers['Host']}/{host}/token"
            return self._reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{host}",'
                                             f'scope="repository:{m.group(2)}:pull"'})
        digest = IMAGE_DIGEST if m.group(3) not in self.moved else "sha256:" + "e" * 64
        self._reply(200, headers={"Docker-Content-Digest": digest})

    def do_GET(self):
        if self.path.split("?")[0].endswith("/token"):
            return self._reply(200, json.dumps({"token": self.token}).encode())
        if self.path.endswith("/index.yaml"):
            entries = {}
            for repo, chart, version in CATALOG_CHARTS:  # every chart the catalog pins, in each repo's index
                entries.setdefault(chart, []).append({"version": version, "digest": CHART_DIGEST})
            return self._reply(200, yaml.safe_dump({"apiVersion": "v1", "entries": entries}).encode())
        if self.path.endswith(".tgz"):
            return self._reply(200, CHART_TGZ)
        self._reply(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    hosts = {"docker.io", "ghcr.io", "github.com"} | {urlsplit(repo).hostname for repo, _, _ in CATALOG_CHARTS}
    monkeypatch.setenv("CEIL_REGISTRY_ENDPOINTS", ",".join(f"{h}={base}/{h}" for h in hosts))
    pins_file = tmp_path / "pins.yaml"  # the catalog's entries, none pinned yet
    shipped = yaml.safe_load((REPO / "addons/pins.yaml").read_text())
    pins_file.write_text(yaml.safe_dump({kind: {ref: {"digest": None} for ref in shipped[kind]}
                                         for kind in ("images", "charts")}))
    monkeypatch.setattr(pins_mod, "PINS_FILE", pins_file)
    Fake.moved = set()
    yield pins_file
    server.shutdown()


def test_every_image_and_chart_of_the_catalog_has_a_pin_entry():
    """A new add-on cannot skip the pins: its references must be listed (null until --write)."""
    images, charts = catalog_references(full_cluster())
    pins = pins_mod.Pins.load()
    assert images and charts
    assert images <= set(pins.images), f"add to addons/pins.yaml: {sorted(images - set(pins.images))}"
    assert charts <= set(pins.charts), f"add to addons/pins.yaml: {sorted(charts - set(pins.charts))}"


def test_image_references_are_split_the_way_registries_name_them():
    assert pins_mod.split_image("docker.io/library/busybox:1.37") == ("docker.io", "library/busybox", "1.37")
    assert pins_mod.split_image("busybox:1.37") == ("docker.io", "library/busybox", "1.37")
    assert pins_mod.split_image("ghcr.io/stefanprodan/podinfo:6.9.2") == ("ghcr.io", "stefanprodan/podinfo", "6.9.2")
    assert pins_mod.split_image("localhost:5000/x") == ("localhost:5000", "x", "latest")


def test_check_reads_the_digests_writes_them_and_pinned_images_render_by_digest(fake, config):
    result = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check", "--write"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"unpinned    image docker.io/library/busybox:1.37: {IMAGE_DIGEST}" in result.output
    written = pins_mod.Pins.load()
    assert written.images["docker.io/library/busybox:1.37"] == IMAGE_DIGEST
    assert written.charts["https://metallb.github.io/metallb metallb 0.15.3"] == f"sha256:{CHART_DIGEST}"
    url = next(k for k in written.charts if k.endswith(".tgz"))
    assert written.charts[url] == f"sha256:{CHART_DIGEST}"
    images = [c["image"] for a in render_selected(full_cluster()) for m in a.manifests
              for c in pins_mod._containers(m)]
    assert f"docker.io/library/busybox:1.37@{IMAGE_DIGEST}" in images
    # A second check finds everything as pinned.
    again = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check"])
    assert again.exit_code == 0 and "CHANGED" not in again.output and "unpinned" not in again.output


def test_a_re_pushed_tag_is_reported_and_never_adopted_silently(fake, config):
    args = ["--config", config, "pins", "--check"]
    env = {}
    assert CliRunner().invoke(addons_group, [*args, "--write"], env=env).exit_code == 0
    Fake.moved = {"1.37"}
    result = CliRunner().invoke(addons_group, args, env=env)
    assert result.exit_code == 1
    assert f"CHANGED     image docker.io/library/busybox:1.37: pinned {IMAGE_DIGEST}" in result.output
    assert str(result.exception) == "1 pinned tag(s) now point at other bytes: see CHANGED above"
    assert pins_mod.Pins.load().images["docker.io/library/busybox:1.37"] == IMAGE_DIGEST


def test_an_unreachable_registry_fails_the_check_and_a_bad_pin_is_refused(fake, monkeypatch):
    monkeypatch.setenv("CEIL_REGISTRY_ENDPOINTS", "docker.io=http://127.0.0.1:9,ghcr.io=http://127.0.0.1:9")
    findings = pins_mod.check({"docker.io/library/busybox:1.37"}, set(), pins_mod.Pins.load())
    assert findings[0].state == "unreachable" and "could not ask" in findings[0].error
    fake.write_text("images:\n  docker.io/library/busybox:1.37: {digest: 'sha256:abc'}\n")
    with pytest.raises(Exception, match="not sha256:<64 hex digits>"):
        pins_mod.Pins.load()


def test_a_check_where_no_registry_answers_says_nothing_was_compared_and_what_to_do(fake, config, monkeypatch):
    """Offline, `pins --check` printed a line per reference and exited 1 without a word of what
    that meant, where `flavors --check` and `k3s digests --check` say it and what to do."""
    hosts = {"docker.io", "ghcr.io", "github.com"} | {urlsplit(repo).hostname for repo, _, _ in CATALOG_CHARTS}
    monkeypatch.setenv("CEIL_REGISTRY_ENDPOINTS", ",".join(f"{h}=http://127.0.0.1:9" for h in hosts))
    result = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check"])
    assert result.exit_code == 1
    said = str(result.exception)
    assert re.fullmatch(r"(\d+) of \1 pins not checked: their registry or chart repository did not answer"
                        r" \(no internet here\?\), so nothing was compared for them; run it again where they are"
                        r" reachable", said), said


def test_every_shipped_pin_names_its_source_and_a_pin_without_one_is_refused(tmp_path):
    pins = pins_mod.Pins.load()
    pinned = {(kind, ref) for kind in ("image", "chart") for ref, digest in pins.table(kind).items() if digest}
    assert pinned and pinned == set(pins.sources), "every digest in addons/pins.yaml says where it was read"
    for kind, ref in pinned:
        source = pins.source(kind, ref)
        assert source.startswith(pins_mod.REGISTRY_SOURCE) or "independent repositories" in source, (ref, source)
    bare = tmp_path / "pins.yaml"
    bare.write_text(f"images:\n  docker.io/library/busybox:1.37: {{digest: '{IMAGE_DIGEST}'}}\n")
    with pytest.raises(Exception, match="names no source"):
        pins_mod.Pins.load(bare)


def test_the_tunnels_cloudflared_renders_by_the_digest_public_records_agree_on():
    """The one pin taken from public records (six repositories agree; no registry can be asked
    here): containerd will run no other bytes under that tag."""
    pins = pins_mod.Pins.load()
    ref = "docker.io/cloudflare/cloudflared:2026.6.1"
    assert pins.images[ref] == "sha256:6d91c121b803126f7a5344005d17a9324788fc09d305b6e2560ec6040a7ae283"
    catalog = Catalog()
    rendered = render_selected(full_cluster(), catalog, names=["tunnel"])
    images = [c["image"] for a in rendered for m in a.manifests for c in pins_mod._containers(m)]
    assert images == [f"{ref}@{pins.images[ref]}"]


def test_a_pin_from_public_records_becomes_the_registrys_when_it_agrees_and_is_reported_when_not(fake, config):
    ref = "docker.io/library/busybox:1.37"
    fake.write_text(yaml.safe_dump({"images": {ref: {"digest": IMAGE_DIGEST, "source": "three independent repositories"}},
                                    "charts": {}}))
    listing = CliRunner().invoke(addons_group, ["--config", config, "pins"], catch_exceptions=False)
    assert f"image {ref}: {IMAGE_DIGEST} (three independent repositories)" in listing.output
    result = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check", "--write"])
    assert f"ok          image {ref}" in result.output, result.output
    assert pins_mod.Pins.load().source("image", ref).startswith(pins_mod.REGISTRY_SOURCE)
    fake.write_text(yaml.safe_dump({"images": {ref: {"digest": "sha256:" + "f" * 64, "source": "three repositories"}},
                                    "charts": {}}))
    result = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check"])
    assert result.exit_code == 1 and f"CHANGED     image {ref}: pinned sha256:{'f' * 64}" in result.output
    assert "its source is not the registry (three repositories)" in result.output, result.output


def test_a_pins_file_written_before_sources_is_refused_and_rewritten_by_check_write(fake, config):
    """The refusal names the fix, and the fix runs: --write reads every digest again and records
    the registry as its source."""
    ref = "docker.io/library/busybox:1.37"
    fake.write_text(yaml.safe_dump({"images": {ref: {"digest": IMAGE_DIGEST}}, "charts": {}}))
    with pytest.raises(Exception, match="names no source.*--check --write"):
        pins_mod.Pins.load()
    listing = CliRunner().invoke(addons_group, ["--config", config, "pins"])
    assert listing.exit_code != 0 and "names no source" in str(listing.exception)
    result = CliRunner().invoke(addons_group, ["--config", config, "pins", "--check", "--write"])
    assert result.exit_code == 0, result.output
    assert pins_mod.Pins.load().source("image", ref).startswith(pins_mod.REGISTRY_SOURCE)
    fake.write_text(yaml.safe_dump({"images": {ref: {"digest": IMAGE_DIGEST, "source": 42}}}))
    with pytest.raises(Exception, match="is not text"):
        pins_mod.Pins.load()


def test_the_pins_file_round_trips_with_its_sources(tmp_path):
    copy = tmp_path / "pins.yaml"
    copy.write_text((REPO / "addons/pins.yaml").read_text())
    pins = pins_mod.Pins.load(copy)
    pins.save()
    assert copy.read_text() == (REPO / "addons/pins.yaml").read_text()
    assert pins_mod.Pins.load(copy) == pins


def test_an_image_and_a_chart_of_one_name_keep_their_own_sources(tmp_path):
    """Images and charts are two namespaces: the source recorded for one never answers for the
    other, nor is lost when the other is written."""
    path = tmp_path / "pins.yaml"
    path.write_text(yaml.safe_dump({"images": {"x": {"digest": IMAGE_DIGEST, "source": "the image's registry"}},
                                    "charts": {"x": {"digest": "sha256:" + "e" * 64, "source": "the chart's index"}}}))
    pins = pins_mod.Pins.load(path)
    assert (pins.source("image", "x"), pins.source("chart", "x")) == ("the image's registry", "the chart's index")
    pins.record("chart", "x", "sha256:" + "d" * 64, "the chart's index, again")
    pins.save()
    again = pins_mod.Pins.load(path)
    assert again.source("image", "x") == "the image's registry" and again.images["x"] == IMAGE_DIGEST
    assert again.source("chart", "x") == "the chart's index, again"
    assert pins_mod.Pins.load(path).source("image", "y") is None


def test_each_bake_of_the_server_says_what_no_digest_holds_until_it_is_pinned():
    """Issue 18 #10: the charts and most images are pinned by version or tag only (no registry
    reachable here to read their digests), and nothing said so when a cluster was baked."""
    from ceil.addons.hooks import pin_warning, warnings

    cluster = cluster_from({"addons": {"enabled": True}})
    pins = pins_mod.Pins.load()
    images, charts = pins_mod.references([m for a in render_selected(cluster, pins=pins) for m in a.manifests])
    loose = [i for i in images if not pins.images.get(i)], [c for c in charts if not pins.charts.get(c)]
    said = pin_warning(cluster, pins)
    assert said.startswith(f"add-ons: {len(loose[0])} of {len(images)} container images and {len(loose[1])} of"
                           f" {len(charts)} Helm charts are pinned by tag or version only")
    assert "pins --check --write" in said and said in warnings(cluster, "one")
    for ref in images:
        pins.images[ref] = "sha256:" + "a" * 64
    for key in charts:
        pins.charts[key] = "sha256:" + "b" * 64
    assert pin_warning(cluster, pins) is None  # all held by digest: nothing to say
