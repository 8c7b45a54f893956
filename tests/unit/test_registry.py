"""The router's registries: rendered configs run by the real docker-registry, k3s registries.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import yaml

from ceil.catalog import load_flavor
from ceil.config import parse_cluster
from ceil.errors import ConfigError
from ceil.features import RoleContext, render_features
from ceil import registry_access as access
from ceil.hooks import registry as hooks
from ceil.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from ceil import oci  # noqa: E402
from tests.registry_lab import BASE, render_router  # noqa: E402


def test_configs_bind_the_lan_address_and_cache_the_upstream(tmp_path):
    out = render_router(tmp_path)
    mirror = yaml.safe_load((out / "etc/registry/mirror.yml").read_text())
    private = yaml.safe_load((out / "etc/registry/private.yml").read_text())
    push = yaml.safe_load((out / "etc/registry/push.yml").read_text())
    assert mirror["http"]["addr"] == "10.42.0.1:5001" and private["http"]["addr"] == "10.42.0.1:5000"
    assert push["http"]["addr"] == "10.42.0.1:5002"
    assert mirror["proxy"] == {"remoteurl": "https://registry-1.docker.io"} and "proxy" not in private
    assert mirror["storage"]["filesystem"]["rootdirectory"] == "/var/lib/ceil-registry/mirror"
    # One storage, two doors: read-only for the nodes' account, writable for the workstation's.
    assert private["storage"]["filesystem"]["rootdirectory"] == "/var/lib/ceil-registry/private"
    assert push["storage"]["filesystem"]["rootdirectory"] == "/var/lib/ceil-registry/private"
    assert private["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert "readonly" not in push["storage"]["maintenance"]
    for doc, unit in ((mirror, "mirror"), (private, "private"), (push, "push")):
        creds = f"/run/credentials/ceil-registry-{unit}.service"
        assert doc["http"]["tls"] == {"certificate": f"{creds}/tls.crt", "key": f"{creds}/tls.key"}, unit
    assert private["auth"]["htpasswd"]["path"].endswith("ceil-registry-private.service/htpasswd")
    assert push["auth"]["htpasswd"]["path"].endswith("ceil-registry-push.service/htpasswd")
    assert mirror["auth"]["htpasswd"]["path"].endswith("ceil-registry-mirror.service/htpasswd")


def test_units_hand_each_registry_only_its_own_account(tmp_path):
    units = render_router(tmp_path) / "units"
    private = (units / "ceil-registry-private.service").read_text()
    push = (units / "ceil-registry-push.service").read_text()
    assert "LoadCredential=htpasswd:/etc/ceil/secrets/registry/htpasswd-pull" in private
    assert "htpasswd-push" not in private and "\nReadWritePaths=" not in private
    assert "LoadCredential=htpasswd:/etc/ceil/secrets/registry/htpasswd-push" in push
    assert "ReadWritePaths=/var/lib/ceil-registry/private" in push
    mirror = (units / "ceil-registry-mirror.service").read_text()
    assert "LoadCredential=htpasswd:/etc/ceil/secrets/registry/htpasswd-pull" in mirror and "htpasswd-push" not in mirror


def test_router_gets_certificate_and_hashes_never_the_passwords(tmp_path):
    from cryptography import x509

    cluster = parse_cluster(BASE)
    store = SecretStore(tmp_path / "secrets")
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), store)
    rendered = render_features(ctx, tmp_path / "payload")
    files = rendered.secrets
    assert {"registry/tls.crt", "registry/tls.key", "registry/htpasswd-pull", "registry/htpasswd-push"} <= set(files)
    cert = x509.load_pem_x509_certificate(files["registry/tls.crt"])
    cert.verify_directly_issued_by(access.ensure_ca(store).cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"ceil-router.ceil.internal", "ceil-router"}
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.42.0.1"]
    for user in ("pull", "push"):
        secret = access.password(store, user)
        line = files[f"registry/htpasswd-{user}"].decode()
        assert line.startswith(f"{user}:$2a$05$") and secret not in line
        assert bcrypt.checkpw(secret.encode(), line.strip().split(":", 1)[1].encode())
    for path in (tmp_path / "payload").rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            assert access.password(store, "push").encode() not in body, path
            assert b"PRIVATE KEY" not in body, path


def test_certificate_is_kept_until_the_router_changes(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    first = access.ensure_server_cert(parse_cluster(BASE), store)
    assert access.ensure_server_cert(parse_cluster(BASE), store).cert_pem == first.cert_pem
    moved = parse_cluster(BASE + "name: other\n")
    again = access.ensure_server_cert(moved, store)
    assert again.cert_pem != first.cert_pem and b"PRIVATE" in again.key_pem


def test_step_formats_only_the_named_drive(tmp_path):
    plain = (render_router(tmp_path / "a") / "lib/steps/registry.sh").read_text()
    assert "\ndrive=''\n" in plain
    with_drive = BASE.replace("router: {uplink: {type: ethernet}}",
                              "router: {uplink: {type: ethernet}, usb_drive: /dev/sda}")
    step = (render_router(tmp_path / "b", with_drive) / "lib/steps/registry.sh").read_text()
    assert "\ndrive=/dev/sda\n" in step and "label=ceil-registry" in step
    for text in (plain, step):
        subprocess.run(["sh", "-n"], input=text, text=True, check=True)


def test_sd_card_is_refused_as_registry_drive(tmp_path):
    bad = BASE.replace("router: {uplink: {type: ethernet}}",
                       "router: {uplink: {type: ethernet}, usb_drive: /dev/mmcblk0}")
    with pytest.raises(ConfigError, match="SD card"):
        render_router(tmp_path, bad)


@pytest.mark.parametrize("ports", ["{port: 5000, mirror_port: 5000}", "{push_port: 5001}", "{port: 5002}"])
def test_same_port_twice_is_refused(ports):
    with pytest.raises(ConfigError, match="different ports") as e:
        hooks.check(parse_cluster(BASE + f"registry: {ports}\n"), "router")
    assert "registry.push_port" in str(e.value)


def test_k3s_registries_yaml_points_nodes_at_the_router(tmp_path):
    store = SecretStore(tmp_path)
    doc = yaml.safe_load(hooks.k3s_registries_yaml(parse_cluster(BASE), store))
    assert doc["mirrors"]["docker.io"] == {"endpoint": ["https://10.42.0.1:5001"]}
    for name in ("ceil-router.ceil.internal:5000", "10.42.0.1:5000", "ceil-router.ceil.internal:5002", "10.42.0.1:5002"):
        assert doc["mirrors"][name] == {"endpoint": ["https://10.42.0.1:5000"]}, name
    ca = {"ca_file": "/etc/rancher/k3s/registry-ca.crt"}
    pull = {"username": "pull", "password": access.password(store, "pull")}
    assert doc["configs"]["10.42.0.1:5001"] == {"auth": pull, "tls": ca}
    assert doc["configs"]["10.42.0.1:5000"] == {"auth": pull, "tls": ca}
    assert access.password(store, "push") not in yaml.safe_dump(doc)


def test_nodes_get_the_registry_ca_and_registries_yaml_as_secrets(tmp_path):
    from ceil.k3s import prep

    store = SecretStore(tmp_path)
    files = prep.secret_files(parse_cluster(BASE), "one", store)
    assert files["k3s/registry-ca.crt"] == access.ensure_ca(store).cert_pem
    assert "password" in files["k3s/registries.yaml"]
    assert prep.secret_files(parse_cluster(BASE + "registry: {enabled: false}\n"), "one", store) == {}


def test_k3s_registries_yaml_other_upstream_and_disabled(tmp_path):
    store = SecretStore(tmp_path)
    ghcr = parse_cluster(BASE + "registry: {upstream: 'https://ghcr.io'}\n")
    assert "ghcr.io" in yaml.safe_load(hooks.k3s_registries_yaml(ghcr, store))["mirrors"]
    assert hooks.k3s_registries_yaml(parse_cluster(BASE + "registry: {enabled: false}\n"), store) == ""


# ---- the rendered configs, served by the real docker-registry ---------------------------



def test_workstation_pushes_and_a_node_pulls_the_same_image(registries):
    r = registries
    image = oci.tiny_image("pushed by the workstation\n")
    pushed = oci.push(r.urls["push"], "ceil/hello", "v1", image, auth=r.push, ca=r.ca)
    pulled = oci.pull(r.urls["private"], "ceil/hello", "v1", auth=r.pull, ca=r.ca)
    assert pulled["digest"] == pushed["digest"] and pulled["blobs"] == 2


def test_a_lan_host_without_the_push_account_cannot_push(registries):
    """Issue 18 #3: anyone on the LAN could replace a tag the cluster runs."""
    r = registries
    pushed = oci.push(r.urls["push"], "ceil/app", "v1", oci.tiny_image("the real one\n"), auth=r.push, ca=r.ca)
    forged = oci.tiny_image("forged\n")
    for url, auth in ((r.urls["push"], None), (r.urls["push"], ("push", "guess")), (r.urls["push"], r.pull),
                      (r.urls["private"], None), (r.urls["private"], ("pull", "guess"))):
        with pytest.raises(RuntimeError, match="HTTP 401"):
            oci.push(url, "ceil/app", "v1", forged, auth=auth, ca=r.ca)
    # What a node holds (the pull account) cannot write through the read-only side either.
    with pytest.raises(RuntimeError, match="HTTP 405"):
        oci.push(r.urls["private"], "ceil/app", "v1", forged, auth=r.pull, ca=r.ca)
    assert oci.pull(r.urls["private"], "ceil/app", "v1", auth=r.pull, ca=r.ca)["digest"] == pushed["digest"]


def test_pulls_need_the_pull_account(registries):
    r = registries
    oci.push(r.urls["push"], "ceil/secret-app", "v1", oci.tiny_image("private\n"), auth=r.push, ca=r.ca)
    with pytest.raises(RuntimeError, match="HTTP 401"):
        oci.pull(r.urls["private"], "ceil/secret-app", "v1", ca=r.ca)


def test_a_client_that_does_not_trust_the_registry_ca_is_refused(registries, tmp_path):
    import ssl as ssl_module

    other = tmp_path / "other-ca.crt"
    other.write_bytes(access.ensure_ca(SecretStore(tmp_path / "other")).cert_pem)
    with pytest.raises(OSError) as e:
        oci.pull(registries.urls["private"], "ceil/x", "v1", auth=registries.pull, ca=str(other))
    assert isinstance(getattr(e.value, "reason", e.value), ssl_module.SSLCertVerificationError)


def test_private_registry_refuses_deletes(registries):
    """Issue 18 #3: anyone on the LAN could delete a tag the cluster runs; not even the push
    account can (a removed tag stops the pods that run it)."""
    r = registries
    pushed = oci.push(r.urls["push"], "ceil/keep", "v1", oci.tiny_image("keep me\n"), auth=r.push, ca=r.ca)
    for url, auth in ((r.urls["push"], r.push), (r.urls["private"], r.pull)):
        status, _, body = oci._request("DELETE", f"{url}/v2/ceil/keep/manifests/{pushed['digest']}", auth=auth, ca=r.ca)
        assert status == 405 and (b"UNSUPPORTED" in body or b"Method not allowed" in body), (url, status, body)
    assert oci.pull(r.urls["private"], "ceil/keep", "v1", auth=r.pull, ca=r.ca)["digest"] == pushed["digest"]


def test_mirror_serves_the_second_pull_from_its_cache(registries):
    r = registries
    urls, upstream = r.urls, r.upstream
    first = oci.pull(urls["mirror"], "library/hello", "latest", auth=r.pull, ca=r.ca)
    # The cache stores each new blob with its own upstream fetch, in the background.
    upstream.wait_idle()
    blobs_after_first = upstream.blob_gets
    assert blobs_after_first >= 2
    second = oci.pull(urls["mirror"], "library/hello", "latest", auth=r.pull, ca=r.ca)
    assert second["digest"] == first["digest"]
    assert upstream.blob_gets == blobs_after_first, "the second pull fetched blobs from upstream again"
    by_digest = oci.pull(urls["mirror"], "library/hello", first["digest"], auth=r.pull, ca=r.ca)
    assert by_digest["digest"] == first["digest"] and upstream.blob_gets == blobs_after_first


def test_the_mirror_serves_only_the_nodes_account(registries):
    """Security review: without an account any LAN device or pod could pull public images through
    the router's cache until its disk (the SD card, without a drive) was full."""
    r = registries
    for auth in (None, ("pull", "guess"), ("push", r.push[1])):
        with pytest.raises(RuntimeError, match="HTTP 401"):
            oci.pull(r.urls["mirror"], "library/hello", "latest", auth=auth, ca=r.ca)
    assert r.upstream.blob_gets == 0, "a refused pull reached the upstream"


def test_mirror_refuses_pushes(registries):
    with pytest.raises(RuntimeError, match="HTTP 405|HTTP 401|UNSUPPORTED"):
        oci.push(registries.urls["mirror"], "library/mine", "v1", ca=registries.ca)


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
    assert any(p.endswith("ceil-registry-push.service") for p in mine)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *mine], capture_output=True, text=True,
                          env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    # Paths that exist only on the router (the step runner, the registry binary) are fine here.
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, "\n".join(problems)
