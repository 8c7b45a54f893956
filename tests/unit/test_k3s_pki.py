"""The k3s CA set and the admin certificate: shape, storage, reuse, and `openssl verify`."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ceil.k3s import pki
from ceil.errors import CeilError
from ceil.secrets import SecretStore


@pytest.fixture
def store(tmp_path) -> SecretStore:
    return SecretStore(tmp_path / "secrets")


def openssl_verify(tmp_path, ca_pem: bytes, cert_pem: bytes) -> subprocess.CompletedProcess:
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")],
        capture_output=True, text=True,
    )


def test_ca_set_is_made_like_k3s_makes_it(store):
    cas = pki.ensure_k3s_cas(store)
    assert set(cas) == {"server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"}
    now = dt.datetime.now(dt.timezone.utc)
    for name, ca in cas.items():
        cert = ca.cert
        assert cert.subject == cert.issuer, name
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign
        assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
        assert ca.key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
        # No RTC on a Pi: a day-behind clock must still accept the CA.
        assert now - cert.not_valid_before_utc >= dt.timedelta(days=1)
        assert cert.not_valid_after_utc - now >= dt.timedelta(days=9 * 365)


def test_ca_files_are_private_and_reused(store):
    first = pki.ensure_k3s_cas(store)
    for name in pki.K3S_CAS:
        for path in pki.ca_paths(name):
            mode = stat.S_IMODE(store.path(path).stat().st_mode)
            assert mode == 0o600, path
    again = pki.ensure_k3s_cas(store)
    assert {n: c.cert_pem for n, c in again.items()} == {n: c.cert_pem for n, c in first.items()}
    assert store.path("k3s/tls/server-ca.crt").is_file() and store.path("k3s/tls/etcd/peer-ca.key").is_file()


def test_openssl_verifies_every_ca(store, tmp_path):
    for name, ca in pki.ensure_k3s_cas(store).items():
        result = openssl_verify(tmp_path, ca.cert_pem, ca.cert_pem)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=ca.cert_pem,
                              capture_output=True, check=True).stdout.decode()
        assert "CA:TRUE" in text and "Certificate Sign" in text


def test_admin_cert_is_signed_by_the_client_ca_only(store, tmp_path):
    admin = pki.ensure_admin_cert(store)
    client_ca = pki.ensure_ca(store, "client-ca")
    server_ca = pki.ensure_ca(store, "server-ca")
    ok = openssl_verify(tmp_path, client_ca.cert_pem, admin.cert_pem)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = openssl_verify(tmp_path, server_ca.cert_pem, admin.cert_pem)
    assert wrong.returncode != 0
    subject = admin.cert.subject
    assert subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "system:admin"
    assert subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    eku = admin.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert pki.ensure_admin_cert(store).cert_pem == admin.cert_pem  # stable while valid


def test_admin_cert_renewed_near_its_end(store):
    old = pki.ensure_admin_cert(store, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=350))
    new = pki.ensure_admin_cert(store)
    assert new.cert_pem != old.cert_pem
    new.cert.verify_directly_issued_by(pki.ensure_ca(store, "client-ca").cert)


def test_half_a_ca_pair_is_an_error_not_a_new_ca(store):
    pki.ensure_k3s_cas(store)
    store.path("k3s/tls/server-ca.key").unlink()
    with pytest.raises(CeilError, match="server-ca.key does not: the pair is broken.*backup"):
        pki.ensure_ca(store, "server-ca")


def test_mismatched_pair_is_an_error(store):
    pki.ensure_k3s_cas(store)
    store.write("k3s/tls/server-ca.key", store.read("k3s/tls/client-ca.key"))
    with pytest.raises(CeilError, match="is not the key of"):
        pki.ensure_ca(store, "server-ca")
