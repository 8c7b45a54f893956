"""k3s's hashCA and the K10 tokens, checked against independent tools (sha256sum, openssl)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ceil.k3s import pki
from ceil.k3s import token as k3s_token
from ceil.errors import CeilError
from ceil.secrets import SecretStore


@pytest.fixture
def store(tmp_path) -> SecretStore:
    return SecretStore(tmp_path / "secrets")


def _intermediate(root: pki.CertKey) -> pki.CertKey:
    """A CA signed by `root` (a k3s 'custom CA' set has server-ca signed by a root)."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    root_ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s-server-ca")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return pki.CertKey(cert.public_bytes(serialization.Encoding.PEM), b"")


def test_single_cert_hash_is_sha256_of_the_exact_file_bytes(store, tmp_path):
    pem = pki.ensure_ca(store, "server-ca").cert_pem
    (tmp_path / "server-ca.crt").write_bytes(pem)
    sha256sum = subprocess.run(["sha256sum", str(tmp_path / "server-ca.crt")], capture_output=True,
                               text=True, check=True).stdout.split()[0]
    assert k3s_token.hash_ca(pem) == sha256sum
    # Exact bytes, not the certificate: one more newline is another hash (k3s's legacy hash).
    assert k3s_token.hash_ca(pem + b"\n") == hashlib.sha256(pem + b"\n").hexdigest() != sha256sum


def test_bundle_hash_is_sha256_of_the_root_der(tmp_path):
    root = pki.make_ca("my-root-ca")
    server_ca = _intermediate(root)
    bundle = server_ca.cert_pem + root.cert_pem
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    fingerprint = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tmp_path / "root.pem")],
        capture_output=True, text=True, check=True,
    ).stdout.split("=", 1)[1].strip().replace(":", "").lower()
    assert k3s_token.hash_ca(bundle) == fingerprint
    assert k3s_token.hash_ca(bundle) != hashlib.sha256(bundle).hexdigest()


def test_bundle_without_a_verifiable_chain_falls_back_to_file_bytes():
    a, b = pki.make_ca("unrelated-a"), pki.make_ca("unrelated-b")
    # b is a root, but a does not chain to it: k3s's Verify fails and it hashes the bytes.
    bundle = a.cert_pem + b.cert_pem
    assert k3s_token.hash_ca(bundle) == hashlib.sha256(bundle).hexdigest()


def test_not_a_certificate_is_a_clear_error():
    with pytest.raises(CeilError, match="no readable PEM certificate"):
        k3s_token.hash_ca(b"hello")


def test_agent_and_server_tokens_pin_the_server_ca(store):
    ca_hash = k3s_token.hash_ca(pki.ensure_ca(store, "server-ca").cert_pem)
    agent = k3s_token.agent_token(store)
    server = k3s_token.server_token(store)
    assert re.fullmatch(r"K10[0-9a-f]{64}::node:[0-9a-f]{64}", agent)
    assert re.fullmatch(r"K10[0-9a-f]{64}::server:[0-9a-f]{64}", server)
    assert k3s_token.parse_token(agent) == (ca_hash, "node", k3s_token.agent_secret(store))
    assert k3s_token.parse_token(server) == (ca_hash, "server", k3s_token.server_secret(store))
    assert k3s_token.agent_secret(store) != k3s_token.server_secret(store)
    assert k3s_token.agent_token(store) == agent  # generated once, reused


def test_node_passwords_are_stable_and_distinct(store):
    one = k3s_token.node_password(store, "one")
    assert re.fullmatch(r"[0-9a-f]{32}", one)  # like the ones k3s writes itself
    assert k3s_token.node_password(store, "one") == one
    assert k3s_token.node_password(store, "two") != one


def test_parse_token_rejects_short_tokens():
    with pytest.raises(CeilError, match="not a full k3s token"):
        k3s_token.parse_token("abcdef.0123456789abcdef")
