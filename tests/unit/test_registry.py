"""The router's registries: rendered configs run by the real docker-registry, k3s registries.yaml."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ceil.catalog import load_flavor
from ceil.config import parse_cluster
from ceil.errors import ConfigError
from ceil.features import RoleContext, render_features
from ceil.hooks import registry as hooks
from ceil.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.fakes import oci  # noqa: E402
from tests.fakes.registry import FakeUpstreamRegistry  # noqa: E402

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


def test_configs_bind_the_lan_address_and_cache_the_upstream(tmp_path):
    out = render_router(tmp_path)
    mirror = yaml.safe_load((out / "etc/registry/mirror.yml").read_text())
    private = yaml.safe_load((out / "etc/registry/private.yml").read_text())
    assert mirror["http"]["addr"] == "10.42.0.1:5001" and private["http"]["addr"] == "10.42.0.1:5000"
    assert mirror["proxy"] == {"remoteurl": "https://registry-1.docker.io"} and "proxy" not in private
    assert mirror["storage"]["filesystem"]["rootdirectory"] == "/var/lib/ceil-registry/mirror"
    assert private["storage"]["filesystem"]["rootdirectory"] == "/var/lib/ceil-registry/private"


def test_step_formats_only_the_named_drive(tmp_path):
    plain = (render_router(tmp_path / "a") / "lib/steps/registry.sh").read_text()
    assert 'drive=""' in plain
    with_drive = BASE.replace("router: {uplink: {type: ethernet}}",
                              "router: {uplink: {type: ethernet}, usb_drive: /dev/sda}")
    step = (render_router(tmp_path / "b", with_drive) / "lib/steps/registry.sh").read_text()
    assert 'drive="/dev/sda"' in step and "label=ceil-registry" in step
    for text in (plain, step):
        subprocess.run(["sh", "-n"], input=text, text=True, check=True)


def test_sd_card_is_refused_as_registry_drive(tmp_path):
    bad = BASE.replace("router: {uplink: {type: ethernet}}",
                       "router: {uplink: {type: ethernet}, usb_drive: /dev/mmcblk0}")
    with pytest.raises(ConfigError, match="SD card"):
        render_router(tmp_path, bad)


def test_same_port_twice_is_refused():
    with pytest.raises(ConfigError, match="different ports"):
        hooks.check(parse_cluster(BASE + "registry: {port: 5000, mirror_port: 5000}\n"), "router")


def test_k3s_registries_yaml_points_nodes_at_the_router():
    doc = yaml.safe_load(hooks.k3s_registries_yaml(parse_cluster(BASE)))
    assert doc["mirrors"]["docker.io"] == {"endpoint": ["http://10.42.0.1:5001"]}
    assert doc["mirrors"]["ceil-router.ceil.internal:5000"] == {"endpoint": ["http://10.42.0.1:5000"]}
    assert doc["mirrors"]["10.42.0.1:5000"] == {"endpoint": ["http://10.42.0.1:5000"]}


def test_k3s_registries_yaml_other_upstream_and_disabled():
    ghcr = parse_cluster(BASE + "registry: {upstream: 'https://ghcr.io'}\n")
    assert "ghcr.io" in yaml.safe_load(hooks.k3s_registries_yaml(ghcr))["mirrors"]
    assert hooks.k3s_registries_yaml(parse_cluster(BASE + "registry: {enabled: false}\n")) == ""


# ---- the rendered configs, served by the real docker-registry ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(config: Path, url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            oci._request("GET", url + "/v2/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"docker-registry did not start: {log.read_text()[-2000:]}")


def localize(rendered: Path, dest: Path, storage: Path, port: int, upstream: str | None) -> Path:
    """The rendered config, moved to 127.0.0.1 and tmp storage; everything else as baked."""
    doc = yaml.safe_load(rendered.read_text())
    doc["http"]["addr"] = f"127.0.0.1:{port}"
    doc["storage"]["filesystem"]["rootdirectory"] = str(storage)
    if upstream:
        doc["proxy"]["remoteurl"] = upstream
    dest.write_text(yaml.safe_dump(doc))
    return dest


@pytest.fixture
def registries(tmp_path):
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry not installed (apt install docker-registry)")
    out = render_router(tmp_path)
    procs = []
    with FakeUpstreamRegistry() as upstream:
        urls = {}
        for kind in ("private", "mirror"):
            port = free_port()
            cfg = localize(out / f"etc/registry/{kind}.yml", tmp_path / f"{kind}.yml",
                           tmp_path / f"store-{kind}", port, upstream.url if kind == "mirror" else None)
            urls[kind] = f"http://127.0.0.1:{port}"
            procs.append(serve(cfg, urls[kind], tmp_path / f"{kind}.log"))
        try:
            yield urls, upstream
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


def test_private_registry_push_then_pull(registries):
    urls, _ = registries
    image = oci.tiny_image("pushed by a node\n")
    pushed = oci.push(urls["private"], "ceil/hello", "v1", image)
    pulled = oci.pull(urls["private"], "ceil/hello", "v1")
    assert pulled["digest"] == pushed["digest"] and pulled["blobs"] == 2


def test_private_registry_refuses_deletes(registries):
    """Issue 18 #3: anyone on the LAN could delete a tag the cluster runs."""
    urls, _ = registries
    pushed = oci.push(urls["private"], "ceil/keep", "v1", oci.tiny_image("keep me\n"))
    status, _, body = oci._request("DELETE", f"{urls['private']}/v2/ceil/keep/manifests/{pushed['digest']}")
    assert status == 405 and b"UNSUPPORTED" in body
    assert oci.pull(urls["private"], "ceil/keep", "v1")["digest"] == pushed["digest"]


def test_mirror_serves_the_second_pull_from_its_cache(registries):
    urls, upstream = registries
    first = oci.pull(urls["mirror"], "library/hello", "latest")
    # The cache stores each new blob with its own upstream fetch, in the background.
    upstream.wait_idle()
    blobs_after_first = upstream.blob_gets
    assert blobs_after_first >= 2
    second = oci.pull(urls["mirror"], "library/hello", "latest")
    assert second["digest"] == first["digest"]
    assert upstream.blob_gets == blobs_after_first, "the second pull fetched blobs from upstream again"
    by_digest = oci.pull(urls["mirror"], "library/hello", first["digest"])
    assert by_digest["digest"] == first["digest"] and upstream.blob_gets == blobs_after_first


def test_mirror_refuses_pushes(registries):
    urls, _ = registries
    with pytest.raises(RuntimeError, match="HTTP 405|HTTP 401|UNSUPPORTED"):
        oci.push(urls["mirror"], "library/mine", "v1")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_all_step_scripts_of_these_features_parse(tmp_path):
    with_all = BASE + "ddns: {enabled: true, api_token: t0k, zone: example.com, record: h.example.com}\n"
    out = render_router(tmp_path, with_all)
    for name in ("registry.sh", "wireguard.sh", "ddns.sh"):
        subprocess.run(["sh", "-n", str(out / "lib/steps" / name)], check=True)


def test_vpn_and_ddns_secrets_travel_only_as_secret_files(tmp_path):
    from ceil import wireguard

    text = BASE + "ddns: {enabled: true, api_token: cf-TOKEN-xyz, zone: example.com, record: h.example.com}\n"
    cluster = parse_cluster(text)
    store = SecretStore(tmp_path / "secrets")
    laptop, _ = wireguard.add_client(cluster, store, "laptop")
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), store)
    rendered = render_features(ctx, tmp_path / "payload")
    secrets = ["cf-TOKEN-xyz", wireguard.server_private_key(store), laptop.preshared_key, laptop.private_key]
    for path in (tmp_path / "payload").rglob("*"):
        if path.is_file():
            body = path.read_text(errors="replace")
            assert not [s for s in secrets if s in body], f"{path} holds a secret value"
    assert "cf-TOKEN-xyz" in rendered.secrets["ddns-token"].decode()
    assert wireguard.server_private_key(store) in rendered.secrets["wireguard/wg0.conf"].decode()
    assert laptop.private_key not in rendered.secrets["wireguard/wg0.conf"].decode()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_of_these_features_pass_systemd_analyze_verify(tmp_path):
    with_all = BASE + "ddns: {enabled: true, api_token: t0k, zone: example.com, record: h.example.com}\n"
    units = render_router(tmp_path, with_all) / "units"
    mine = sorted(str(p) for p in units.iterdir() if p.name.startswith(("ceil-registry", "ceil-ddns", "ceil-wireguard")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *mine], capture_output=True, text=True,
                          env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    # Paths that exist only on the router (the step runner, the registry binary) are fine here.
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, "\n".join(problems)
