"""The admin kubeconfig: signed by the baked client CA, trusting the baked server CA, usable by
a real kubectl (against a TLS server on 127.0.0.1 that demands a client-CA-signed certificate,
which is what the k3s API server does; no Kubernetes is started)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
import stat
import subprocess
import time

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ceil.k3s import pki
from ceil.config import load_cluster
from ceil.k3s.kubeconfig import admin_kubeconfig, kubeconfig_command
from ceil.secrets import SecretStore


@pytest.fixture
def setup(cluster_yaml, tmp_path):
    path = cluster_yaml()
    return load_cluster(path), SecretStore(tmp_path / "secrets"), path


def _decode(doc: dict, section: str, key: str) -> bytes:
    entry = doc[section][0]["cluster" if section == "clusters" else "user"]
    return base64.b64decode(entry[key])


def test_kubeconfig_points_at_the_server_with_the_baked_cas(setup, tmp_path):
    cluster, store, _ = setup
    doc = yaml.safe_load(admin_kubeconfig(cluster, store))
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.42.0.11:6443"
    assert _decode(doc, "clusters", "certificate-authority-data") == pki.ensure_ca(store, "server-ca").cert_pem
    client = x509.load_pem_x509_certificate(_decode(doc, "users", "client-certificate-data"))
    client.verify_directly_issued_by(pki.ensure_ca(store, "client-ca").cert)
    (tmp_path / "client-ca.pem").write_bytes(pki.ensure_ca(store, "client-ca").cert_pem)
    (tmp_path / "admin.pem").write_bytes(_decode(doc, "users", "client-certificate-data"))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "client-ca.pem"),
                             str(tmp_path / "admin.pem")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_command_writes_a_private_file_kubectl_reads(setup):
    cluster, store, path = setup
    pki.ensure_k3s_cas(store)  # the bake made them
    out = path.parent / "kc" / "admin.yaml"
    result = CliRunner().invoke(kubeconfig_command, ["--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    view = subprocess.run(["kubectl", "--kubeconfig", str(out), "config", "view", "-o", "json"],
                          capture_output=True, text=True)
    assert view.returncode == 0, view.stderr
    assert '"current-context": "ceil"' in view.stdout


def test_the_default_kubeconfig_is_git_ignored_wherever_the_config_lives(setup):
    """Issue 18: out/kubeconfig holds the cluster-admin key; the repository's .gitignore covers
    only its own out/, so a cluster kept in clusters/home/ had its kubeconfig committable."""
    cluster, store, path = setup
    pki.ensure_k3s_cas(store)
    repo = path.parent
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    result = CliRunner().invoke(kubeconfig_command, ["--config", str(path)])
    assert result.exit_code == 0, result.output
    kubeconfig = repo / "out" / "kubeconfig"
    assert kubeconfig.is_file()
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(kubeconfig)])
    assert ignored.returncode == 0, "out/kubeconfig is not git-ignored"
    # ... by name: a folder given to ceil that holds a project's own files keeps them visible to git.
    (repo / "out" / "notes.txt").write_text("mine")
    assert subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(repo / "out" / "notes.txt")]).returncode == 1


def _server_cert(ca: pki.CertKey, tmp_path) -> tuple[str, str]:
    """A serving certificate for 127.0.0.1 signed by the server CA (k3s makes its own on the Pi)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca.key, hashes.SHA256())
    )
    crt, keyfile = tmp_path / "srv.crt", tmp_path / "srv.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(crt), str(keyfile)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mtls_server(setup, tmp_path):
    """openssl s_server on 127.0.0.1 demanding a client certificate signed by the client CA."""
    _, store, _ = setup
    crt, key = _server_cert(pki.ensure_ca(store, "server-ca"), tmp_path)
    (tmp_path / "client-ca.pem").write_bytes(pki.ensure_ca(store, "client-ca").cert_pem)
    port = _free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", crt, "-key", key,
         "-CAfile", str(tmp_path / "client-ca.pem"), "-Verify", "1", "-verify_return_error", "-www"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=5)


def _kubectl_raw(kubeconfig: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig)
    return subprocess.run(["kubectl", "--kubeconfig", str(path), "--request-timeout=10s", "get", "--raw", "/"],
                          capture_output=True, text=True, timeout=30)


def test_kubectl_completes_mutual_tls_with_the_baked_cas(setup, mtls_server, tmp_path):
    cluster, store, _ = setup
    text = admin_kubeconfig(cluster, store).replace("https://10.42.0.11:6443", f"https://127.0.0.1:{mtls_server}")
    result = _kubectl_raw(text, tmp_path)
    # s_server -www answers with its status page only after both certificates verified.
    assert result.returncode == 0, result.stderr
    assert "s_server" in result.stdout


def test_a_client_cert_from_another_ca_is_refused(setup, mtls_server, tmp_path):
    cluster, store, _ = setup
    doc = yaml.safe_load(admin_kubeconfig(cluster, store))
    stranger = pki.issue_client_cert(pki.make_ca("someone-else"), "system:admin", ["system:masters"])
    doc["users"][0]["user"]["client-certificate-data"] = base64.b64encode(stranger.cert_pem).decode()
    doc["users"][0]["user"]["client-key-data"] = base64.b64encode(stranger.key_pem).decode()
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{mtls_server}"
    result = _kubectl_raw(yaml.safe_dump(doc), tmp_path)
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower() or "tls" in result.stderr.lower(), result.stderr


def test_the_tunnel_kubeconfig_talks_to_the_local_end_of_k8s_proxy(setup):
    """`bake.py kubeconfig --tunnel-port` beside the LAN one, and `bake.py k8s-proxy`'s ssh that
    forwards that local port to the server's API through the router, with pinned host keys."""
    from ceil import workstation

    cluster, store, path = setup
    pki.ensure_k3s_cas(store)  # the bake made them
    result = CliRunner().invoke(kubeconfig_command, ["--config", str(path), "--tunnel-port", "16443"])
    assert result.exit_code == 0, result.output
    out = path.parent / "out" / "kubeconfig-tunnel"
    assert yaml.safe_load(out.read_text())["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:16443"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "k8s-proxy --port 16443" in result.output
    argv = workstation.tunnel_argv(cluster, "192.168.1.50", 16443)
    user = cluster.ssh.user
    assert argv[0] == "ssh" and argv[-3:] == ["-L", "127.0.0.1:16443:10.42.0.11:6443", f"{user}@192.168.1.50"]
    assert "HostKeyAlias=ceil-router" in argv and "-N" in argv
    assert workstation.tunnel_argv(cluster, None, 6443)[-1] == f"{user}@10.42.0.1"


def test_the_workstation_waits_for_a_slow_tls_handshake_and_not_for_a_silent_address(setup, tmp_path):
    """The workstation waits 3 s for the API's address to answer at all (a dropped VPN must not
    cost half a minute), but urllib3 counts the TLS handshake against that wait too: an API
    server that accepted the connection and took 4 s to answer its handshake (a busy one, during
    an upgrade: run ci-art81's rolling upgrade) failed three times with "Read timed out (read
    timeout=3.0)". The short wait is now a TCP probe; the handshake gets the request's 10 s."""
    import ssl
    import threading

    from ceil.addons.job.kube import KubeconfigTransport

    cluster, store, _ = setup
    crt, key = _server_cert(pki.ensure_ca(store, "server-ca"), tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_slowly():
        for _ in range(2):  # the probe's connection, then the request's
            conn, _ = listener.accept()
            time.sleep(4)  # accepted, then slow to begin the handshake
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                b"Connection: close\r\n\r\n{}")
            except (ssl.SSLError, OSError):
                pass  # the probe closes without a handshake

    threading.Thread(target=serve_slowly, daemon=True).start()
    path = tmp_path / "kubeconfig"
    path.write_text(admin_kubeconfig(cluster, store).replace("https://10.42.0.11:6443", f"https://127.0.0.1:{port}"))
    transport = KubeconfigTransport(str(path), timeout=10.0, connect_timeout=3.0, retry_unanswered=False)
    started = time.monotonic()
    assert transport.request("GET", "/api/v1") == (200, b"{}")
    assert time.monotonic() - started < 10
    listener.close()
