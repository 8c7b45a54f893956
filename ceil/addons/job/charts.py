"""Pinned charts, enforced at install: the job fetches the chart's archive itself, checks it
against the digest addons/pins.yaml holds for it, and hands helm-controller the bytes it checked.

helm-controller takes a repository, a chart and a version, and its install Job downloads what the
repository serves under them on the day: a re-published version would be installed unseen. With a
pin (the HelmChart's CHART_PIN annotation, set at render time), the job reads the repository's
index.yaml for the archive's URL, downloads it, refuses it unless its sha256 is the pin, and
applies the HelmChart with the archive as `spec.chartContent` (base64) instead of the repository:
helm-controller then installs those bytes and fetches nothing. This runs on the server from the
card, with python3 and python3-kubernetes (and so python3-yaml) only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import urllib.parse
import urllib.request
from typing import Any, Callable

import yaml  # python3-yaml: python3-kubernetes depends on it

# A big repository's index.yaml runs to tens of MiB: libyaml's parser (Debian's python3-yaml has
# it) reads one in a fraction of the pure-Python parser's time and memory.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# What a download can raise besides a refusal by status: a dropped connection mid-body
# (IncompleteRead), a malformed answer (BadStatusLine), a malformed URL (ValueError).
_FETCH_ERRORS = (OSError, http.client.HTTPException, ValueError)

CHART_PIN = "ceil.io/chart-sha256"
TIMEOUT = 60
# helm-controller keeps the archive in a ConfigMap (chart-content-<name>), which the API server
# holds to 1 MiB; base64 makes 4 bytes of 3.
MAX_ARCHIVE = (1 << 20) * 3 // 4 - 4096
MAX_INDEX = 256 << 20  # a big repository's index.yaml runs to tens of MiB


class ChartRefused(Exception):
    """The chart could not be had, or was not the pinned one: nothing of it is applied."""


def _get(url: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of `url` (one more than allowed tells "too big")."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:  # noqa: S310 (http(s) from our own manifests)
        return r.read(limit + 1)


def pinned_chart(obj: dict[str, Any], get: Callable[[str, int], bytes] = _get) -> dict[str, Any]:
    """`obj` unchanged unless it is a HelmChart with a pin; else a copy whose spec carries the
    checked archive as chartContent in place of repo, chart and version."""
    pin = ((obj.get("metadata") or {}).get("annotations") or {}).get(CHART_PIN)
    if obj.get("kind") != "HelmChart" or not pin:
        return obj
    spec = obj.get("spec") or {}
    chart, repo, version = str(spec.get("chart") or ""), spec.get("repo"), spec.get("version")
    if chart.startswith(("https://", "http://")):  # a chart named by its archive's URL
        what = url = chart
    else:
        what, url = f"chart {chart} {version} from {repo}", archive_url(repo, chart, version, get)
    try:
        archive = get(url, MAX_ARCHIVE)
    except _FETCH_ERRORS as e:
        raise ChartRefused(f"{what}: cannot download {url}: {e}") from None
    if len(archive) > MAX_ARCHIVE:
        raise ChartRefused(f"{what}: the archive at {url} is over {MAX_ARCHIVE} bytes, more than helm-controller"
                           " can hold as chart content: unpin it in addons/pins.yaml")
    got = "sha256:" + hashlib.sha256(archive).hexdigest()
    if got != pin:
        raise ChartRefused(
            f"{what}: the archive served at {url} has {got}, not the pinned {pin}: not installed. Ask"
            " `python bake.py addons pins --check` what the repository's index gives it now; if the"
            " publisher re-released it on purpose, `--check --write` records that digest (compare it with"
            f" {got}), then bake the server again")
    out = copy.deepcopy(obj)
    for key in ("repo", "chart", "version"):
        out["spec"].pop(key, None)
    out["spec"]["chartContent"] = base64.b64encode(archive).decode()
    return out


def archive_url(repo: str | None, chart: str, version: str | None, get: Callable[[str, int], bytes] = _get) -> str:
    """The URL index.yaml gives for that chart version, resolved against the repository."""
    index_url = f"{str(repo).rstrip('/')}/index.yaml"
    try:
        raw = get(index_url, MAX_INDEX)
        if len(raw) > MAX_INDEX:
            raise ChartRefused(f"chart {chart} {version}: {index_url} is over {MAX_INDEX >> 20} MiB")
        index = yaml.load(raw, Loader=_LOADER)
    except (*_FETCH_ERRORS, yaml.YAMLError) as e:
        raise ChartRefused(f"chart {chart} {version}: cannot read {index_url}: {e}") from None
    entries = index.get("entries") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        raise ChartRefused(f"chart {chart} {version}: {index_url} is not a chart repository's index (no entries)")
    listed = entries.get(chart)
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, dict) and str(entry.get("version")) == str(version) and entry.get("urls"):
            return urllib.parse.urljoin(index_url, str(entry["urls"][0]))
    raise ChartRefused(f"chart {chart} {version}: {index_url} lists no such version (removed upstream?)")
