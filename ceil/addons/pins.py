"""Digest pins for what the add-ons fetch: container images named in our manifests and charts.

Tags and chart versions can be re-pushed; a digest cannot. `addons/pins.yaml` records, for every
image reference and chart the catalog renders, the digest it was checked against (null: not
pinned yet; each pin is read from the registry by `python bake.py addons pins --check --write`,
or, where no registry can be asked, taken from public records that agree, which its `source`
names; never made up). Rendering
turns a pinned image `name:tag` into `name:tag@sha256:...`, which containerd then refuses to run
with other bytes. A pinned chart's HelmChart is marked with its digest: the add-on job downloads
the archive, refuses other bytes, and gives helm-controller the archive itself (job/charts.py).

The check asks each registry over the distribution API (HEAD /v2/<name>/manifests/<tag>, with
the anonymous bearer token flow Docker Hub and ghcr.io use) and each chart repository's
index.yaml (the entry's `digest`). CEIL_REGISTRY_ENDPOINTS (host=url,...) points a registry host
at another address (tests: a local registry).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from ..errors import CeilError

if TYPE_CHECKING:  # imported where a registry is asked (pins --check): a bake never loads it
    import requests


PINS_FILE = Path(__file__).resolve().parents[2] / "addons" / "pins.yaml"
# The source `--check --write` records for a digest it read.
REGISTRY_SOURCE = "read from the registry by `python bake.py addons pins --check --write`"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
TIMEOUT = 20


# ---- what the catalog references ---------------------------------------------------------------


def _containers(doc: Any) -> Iterator[dict]:
    """Every container spec in a manifest (pods, workloads, jobs, cron jobs)."""
    if isinstance(doc, dict):
        for key in ("containers", "initContainers"):
            for c in doc.get(key) or []:
                if isinstance(c, dict) and "image" in c:
                    yield c
        for value in doc.values():
            yield from _containers(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _containers(value)


def chart_key(spec: dict) -> str | None:
    """"repo chart version" for a chart from a repository; the archive's URL for a chart named by URL."""
    chart = str(spec.get("chart") or "")
    if chart.startswith(("https://", "http://")):
        return chart
    if spec.get("repo") and chart and spec.get("version"):
        return f"{spec['repo']} {chart} {spec['version']}"
    return None


def references(manifests: list[dict]) -> tuple[set[str], set[str]]:
    """(image references, chart keys "repo chart version") in rendered manifests, unpinned form."""
    images, charts = set(), set()
    for doc in manifests:
        for c in _containers(doc):
            images.add(str(c["image"]).split("@", 1)[0])
        if doc.get("kind") == "HelmChart" and (key := chart_key(doc.get("spec") or {})):
            charts.add(key)
    return images, charts


# ---- the pins file -----------------------------------------------------------------------------


@dataclass
class Pins:
    images: dict[str, str | None]
    charts: dict[str, str | None]
    path: Path = PINS_FILE
    # Where each digest was read ({(kind, ref): text}, kind "image" or "chart"): a registry by
    # `--check --write`, or the public records it was taken from where no registry could be asked.
    # Keyed by kind too: an image and a chart are two namespaces, and one's source must never
    # answer for the other.
    sources: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None, *, unsourced: str | None = None) -> Pins:
        """`unsourced`: the source given to a digest that names none (a file `--check --write`
        wrote before sources were recorded; it replaces them with the registry's), instead of
        refusing it."""
        path = path or PINS_FILE
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CeilError(f"{path}: cannot read the add-on pins: {e}") from None
        out = cls({}, {}, path)
        for kind in ("images", "charts"):
            for ref, entry in (data.get(kind) or {}).items():
                value, source = (entry or {}).get("digest"), (entry or {}).get("source")
                if value is not None and not DIGEST_RE.match(str(value)):
                    raise CeilError(f"{path}: {kind} {ref!r}: digest {value!r} is not sha256:<64 hex digits>")
                if source is not None and not isinstance(source, str):
                    raise CeilError(f"{path}: {kind} {ref!r}: source {source!r} is not text: say in words where"
                                    f" the digest was read")
                if value is not None and not (source or "").strip():
                    if unsourced is None:
                        raise CeilError(
                            f"{path}: {kind} {ref!r}: digest {value} names no source: add a `source:` saying"
                            f" where it was read, or run `python bake.py addons pins --check --write`, which"
                            f" reads it from the registry again and records that")
                    source = unsourced
                getattr(out, kind)[ref] = value
                if value is not None:
                    out.sources[kind.rstrip("s"), ref] = source.strip()
        return out

    def table(self, kind: str) -> dict[str, str | None]:
        return {"image": self.images, "chart": self.charts}[kind]

    def source(self, kind: str, ref: str) -> str | None:
        """Where the pin of `ref` (kind "image" or "chart") was read; None when it is not pinned."""
        return self.sources.get((kind, ref))

    def record(self, kind: str, ref: str, digest: str, source: str) -> None:
        self.table(kind)[ref] = digest
        self.sources[kind, ref] = source

    def save(self) -> None:
        unsourced = [(kind, ref) for kind in ("image", "chart") for ref, v in self.table(kind).items()
                     if v and (kind, ref) not in self.sources]
        assert not unsourced, f"pins without a source would not load again: {unsourced}"

        def entries(kind: str) -> dict:
            return {k: {"digest": v, **({"source": self.sources[kind, k]} if v else {})}
                    for k, v in sorted(self.table(kind).items())}

        body = yaml.safe_dump({"images": entries("image"), "charts": entries("chart")},
                              sort_keys=False, width=200)
        tmp = self.path.with_suffix(".yaml.tmp")
        tmp.write_text(PINS_HEADER + body)
        tmp.replace(self.path)

    def pinned_image(self, ref: str) -> str:
        """`ref` with its digest appended when pinned (`name:tag@sha256:...`), else `ref`."""
        base = ref.split("@", 1)[0]
        digest = self.images.get(base)
        return f"{base}@{digest}" if digest else ref


PINS_HEADER = """\
# Digests of the container images and charts the add-on catalog references (ceil/addons/pins.py).
# null: not pinned yet. Filled in from the registries themselves, by
#   python bake.py addons pins --check --write
# which reads each tag's digest (and each chart version's digest from its repository's index),
# says what changed, and records the registry as the pin's source. Where no registry could be
# asked, a digest may be taken from public records instead: only one that at least three
# independent repositories pin for the tag, with at most one record naming another digest, and
# with those records described in `source`; `--check` then compares it with the registry like any
# other, and `--write` records the registry instead. A digest without a source is refused.
# A pinned image renders as name:tag@sha256:...
"""


def apply_image_pins(manifests: list[dict], pins: Pins) -> None:
    """Rewrite every pinned container image in place to its digest form."""
    for doc in manifests:
        for c in _containers(doc):
            c["image"] = pins.pinned_image(str(c["image"]))


def apply_chart_pins(manifests: list[dict], pins: Pins) -> None:
    """Mark every HelmChart whose chart is pinned with its digest: the job fetches the archive,
    checks it and installs those bytes (ceil/addons/job/charts.py)."""
    from .job.charts import CHART_PIN

    for doc in manifests:
        if doc.get("kind") == "HelmChart" and (key := chart_key(doc.get("spec") or {})) and pins.charts.get(key):
            doc.setdefault("metadata", {}).setdefault("annotations", {})[CHART_PIN] = pins.charts[key]


# ---- asking the registries -------------------------------------------------------------------


def split_image(ref: str) -> tuple[str, str, str]:
    """(registry host, repository, tag) of `host/name:tag` (Docker Hub's short forms expanded)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        first, rest = "docker.io", name
    if first == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    return first, rest, tag


def _endpoints() -> dict[str, str]:
    out = {"docker.io": "https://registry-1.docker.io"}
    for item in filter(None, os.environ.get("CEIL_REGISTRY_ENDPOINTS", "").split(",")):
        host, _, url = item.partition("=")
        out[host.strip()] = url.strip().rstrip("/")
    return out


def _rewrite(url: str) -> str:
    """`url` with its scheme and host replaced when CEIL_REGISTRY_ENDPOINTS names the host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    base = _endpoints().get(parts.hostname or "")
    if not base or parts.hostname == "docker.io":
        return url
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def _bearer(session: requests.Session, challenge: str, repo: str) -> str | None:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if "realm" not in params:
        return None
    query = {"service": params.get("service", ""), "scope": params.get("scope", f"repository:{repo}:pull")}
    r = session.get(params["realm"], params=query, timeout=TIMEOUT)
    r.raise_for_status()
    data = r.json()
    return data.get("token") or data.get("access_token")


def image_digest(ref: str, session: requests.Session) -> str:
    """The digest the registry gives `ref`'s tag today (the index's, for multi-arch images)."""
    import requests

    host, repo, tag = split_image(ref)
    base = _endpoints().get(host, f"https://{host}")
    url = f"{base}/v2/{repo}/manifests/{tag}"
    headers = {"Accept": ACCEPT}
    try:
        r = session.head(url, headers=headers, timeout=TIMEOUT)
        if r.status_code == 401 and (token := _bearer(session, r.headers.get("WWW-Authenticate", ""), repo)):
            headers["Authorization"] = f"Bearer {token}"
            r = session.head(url, headers=headers, timeout=TIMEOUT)
        r.raise_for_status()
    except requests.RequestException as e:
        raise CeilError(f"{ref}: could not ask {base} for the digest of {repo}:{tag}: {e}") from None
    digest = r.headers.get("Docker-Content-Digest", "")
    if not DIGEST_RE.match(digest):
        raise CeilError(f"{ref}: {base} gave no sha256 digest for {repo}:{tag} (Docker-Content-Digest: {digest!r})")
    return digest


def chart_digest(key: str, session: requests.Session) -> str:
    """The digest the chart repository's index.yaml gives that chart version (its .tgz); for a
    chart named by its archive's URL, the sha256 of that archive."""
    import requests

    if " " not in key:
        try:
            r = session.get(_rewrite(key), timeout=TIMEOUT)
            r.raise_for_status()
        except requests.RequestException as e:
            raise CeilError(f"chart {key}: could not download it: {e}") from None
        return "sha256:" + hashlib.sha256(r.content).hexdigest()
    repo, chart, version = key.split(" ")
    url = f"{repo.rstrip('/')}/index.yaml"
    try:
        r = session.get(_rewrite(url), timeout=TIMEOUT)
        r.raise_for_status()
        index = yaml.safe_load(r.text) or {}
    except (requests.RequestException, yaml.YAMLError) as e:
        raise CeilError(f"chart {chart} {version}: could not read {url}: {e}") from None
    for entry in (index.get("entries") or {}).get(chart) or []:
        if str(entry.get("version")) == version:
            value = str(entry.get("digest") or "")
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return f"sha256:{value}"
            raise CeilError(f"chart {chart} {version}: {url} lists no sha256 digest for it")
    raise CeilError(f"chart {chart} {version}: {url} has no such version (removed upstream?)")


@dataclass
class Finding:
    kind: str      # "image" or "chart"
    ref: str
    pinned: str | None
    current: str | None
    error: str | None = None

    @property
    def state(self) -> str:
        if self.error:
            return "unreachable"
        if self.pinned is None:
            return "unpinned"
        return "ok" if self.pinned == self.current else "CHANGED"


def check(images: set[str], charts: set[str], pins: Pins, session: requests.Session | None = None) -> list[Finding]:
    import requests

    session = session or requests.Session()
    out = []
    for kind, refs, ask, table in (("image", images, image_digest, pins.images),
                                   ("chart", charts, chart_digest, pins.charts)):
        for ref in sorted(refs):
            try:
                out.append(Finding(kind, ref, table.get(ref), ask(ref, session)))
            except CeilError as e:
                out.append(Finding(kind, ref, table.get(ref), None, str(e)))
    return out
