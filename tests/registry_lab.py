"""The router's registries as baked, served by the real docker-registry on loopback.

Shared by the registry tests and the app-delivery tests: the router's rendered registry configs
(private read-only, push, mirror), moved to 127.0.0.1 with a certificate from the baked registry
CA, and the workstation's folder they were baked from (cluster.yaml and secrets/), so `bake.py`
commands run against them exactly as a user's would.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ceil import oci
from ceil import registry_access as access
from ceil.catalog import load_flavor
from ceil.config import parse_cluster
from ceil.features import RoleContext, render_features
from ceil.k3s.pki import issue_server_cert
from ceil.secrets import SecretStore
from tests.fakes.registry import FakeUpstreamRegistry

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
BASE = f"""
ssh: {{authorized_keys: ["{KEY}"]}}
router: {{uplink: {{type: ethernet}}}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}]
vpn: {{endpoint: vpn.example.com}}
"""
REGISTRY_BIN = "/usr/bin/docker-registry"


def render_router(tmp_path: Path, text: str = BASE) -> Path:
    cluster = parse_cluster(text)
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path / "secrets"))
    render_features(ctx, tmp_path / "payload")
    return tmp_path / "payload"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(config: Path, url: str, log: Path, ca: Path) -> subprocess.Popen:
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            oci._request("GET", url + "/v2/", timeout=2, ca=str(ca))
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"docker-registry did not start: {log.read_text()[-2000:]}")


def localize(rendered: Path, dest: Path, storage: Path, port: int, creds: Path, upstream: str | None) -> Path:
    """The rendered config, moved to 127.0.0.1, tmp storage and a tmp credentials folder (what
    systemd's LoadCredential gives the unit on the router); everything else as baked."""
    doc = yaml.safe_load(rendered.read_text())
    doc["http"]["addr"] = f"127.0.0.1:{port}"
    doc["storage"]["filesystem"]["rootdirectory"] = str(storage)
    doc["http"]["tls"] = {k: str(creds / Path(v).name) for k, v in doc["http"]["tls"].items()}
    if "auth" in doc:
        doc["auth"]["htpasswd"]["path"] = str(creds / "htpasswd")
    if upstream:
        doc["proxy"]["remoteurl"] = upstream
    dest.write_text(yaml.safe_dump(doc))
    return dest


@dataclass
class Registries:
    urls: dict[str, str]
    upstream: FakeUpstreamRegistry
    ca: str
    pull: tuple[str, str]
    push: tuple[str, str]
    workstation: Path  # cluster.yaml (BASE) and secrets/ the router was rendered from


@contextlib.contextmanager
def running_registries(tmp_path: Path) -> Iterator[Registries]:
    """The router's three registries as baked, on loopback: private and push share a storage.
    The served certificate comes from the baked registry CA, for 127.0.0.1 (the router's own
    names 10.42.0.1 and ceil-router are not this machine)."""
    out = render_router(tmp_path)
    (tmp_path / "cluster.yaml").write_text(BASE)
    store = SecretStore(tmp_path / "secrets")
    ca = access.ensure_ca(store)
    local = issue_server_cert(ca, "localhost", ["localhost"], ["127.0.0.1"])
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    files = access.router_files(parse_cluster(BASE), store)
    procs = []
    with FakeUpstreamRegistry() as upstream:
        urls = {}
        try:
            for kind in ("private", "push", "mirror"):
                creds = tmp_path / f"creds-{kind}"
                creds.mkdir()
                (creds / "tls.crt").write_bytes(local.cert_pem)
                (creds / "tls.key").write_bytes(local.key_pem)
                # the accounts file the baked unit hands its registry (LoadCredential), as systemd would
                unit = (out / f"units/ceil-registry-{kind}.service").read_text()
                if m := re.search(r"^LoadCredential=htpasswd:/etc/ceil/secrets/(\S+)$", unit, re.M):
                    (creds / "htpasswd").write_bytes(files[m.group(1)])
                port = free_port()
                storage = tmp_path / ("store-mirror" if kind == "mirror" else "store-private")
                cfg = localize(out / f"etc/registry/{kind}.yml", tmp_path / f"{kind}.yml", storage, port, creds,
                               upstream.url if kind == "mirror" else None)
                urls[kind] = f"https://127.0.0.1:{port}"
                procs.append(serve(cfg, urls[kind], tmp_path / f"{kind}.log", ca_file))
            yield Registries(urls, upstream, str(ca_file), ("pull", access.password(store, "pull")),
                             ("push", access.password(store, "push")), tmp_path)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


@pytest.fixture
def registries(tmp_path):
    """The running registries for one test (import this fixture into the test module)."""
    if not Path(REGISTRY_BIN).exists():
        pytest.fail("docker-registry is not installed: make setup-host (apt install docker-registry)")
    with running_registries(tmp_path) as r:
        yield r


def write_layout(root: Path, artifact: oci.Artifact) -> Path:
    """An OCI image layout holding `artifact`, as a builder writes one."""
    (root / "blobs/sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = {c.digest: c.manifest for c in artifact.children}
    for d, data in {**artifact.all_blobs(), **manifests, artifact.digest: artifact.manifest}.items():
        (root / "blobs/sha256" / d.split(":")[1]).write_bytes(data)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": artifact.media_type, "digest": artifact.digest, "size": len(artifact.manifest)}]}))
    return root


def ci_archive(folder: Path) -> tuple[oci.Artifact, Path]:
    """A two-platform image index as a CI job leaves it for `bake.py app push`: a tar of its OCI
    layout, in `folder`. (the index, the archive's path)."""
    import tarfile

    index = oci.image_index({p: oci.scratch_image({"ceil": p.encode()}, arch=p.split("/")[1])
                             for p in ("linux/arm64", "linux/amd64")})
    layout = write_layout(folder / "layout", index)
    archive = folder / "app.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return index, archive
