"""The k3s certificate authorities, made once on the workstation and reused by every bake.

k3s accepts pre-created CA files in /var/lib/rancher/k3s/server/tls/ and only generates what is
missing (k3s pkg/daemons/control/deps: createSigningCertKey returns early when both files
exist). Making them here lets the workstation know the cluster's trust root before any machine
boots: agents pin it in their join token and the admin kubeconfig is signed by the client CA.

The certificates are made the way k3s makes its own: EC P-256 keys, self-signed, CA:true,
keyCertSign, ten years. Two differences on purpose: `NotBefore` lies days in the past (a Pi has
no RTC), and the common names carry no timestamp suffix (k3s uses `<prefix>-ca@<unix time>`,
which is only informational).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import CeilError
from ..secrets import SecretStore

# Secret-store directory; the layout below it mirrors k3s's server/tls/ directory.
TLS_DIR = "k3s/tls"
# name under tls/ -> common name (k3s: "k3s-server-ca@<time>", "etcd-peer-ca@<time>", ...)
K3S_CAS: dict[str, str] = {
    "server-ca": "k3s-server-ca",
    "client-ca": "k3s-client-ca",
    "request-header-ca": "k3s-request-header-ca",
    "etcd/server-ca": "etcd-server-ca",
    "etcd/peer-ca": "etcd-peer-ca",
}
ADMIN_DIR = "k3s/admin"
ADMIN_CN = "system:admin"
ADMIN_ORG = "system:masters"

# No RTC on a Pi: a clock a little behind must still accept certificates made just now.
BACKDATE = dt.timedelta(days=2)
CA_LIFETIME = dt.timedelta(days=3650)
CLIENT_LIFETIME = dt.timedelta(days=365)
# `bake.py kubeconfig` issues a fresh admin certificate when the stored one ends sooner.
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertKey:
    """A certificate and its private key, both PEM, exactly as stored and installed."""

    cert_pem: bytes
    key_pem: bytes

    @cached_property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @cached_property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return serialization.load_pem_private_key(self.key_pem, password=None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # "EC PRIVATE KEY" (SEC1), the form k3s itself writes and reads.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str, now: dt.datetime | None = None) -> CertKey:
    """A self-signed CA as k3s would make it, backdated for clocks that lag."""
    now = now or _now()
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(_cert_pem(cert), _key_pem(key))


def issue_client_cert(
    ca: CertKey, common_name: str, organizations: list[str], now: dt.datetime | None = None
) -> CertKey:
    """A client certificate (TLS client auth) signed by `ca`, as k3s issues its users'."""
    now = now or _now()
    key = _new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CLIENT_LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertKey(_cert_pem(cert), _key_pem(key))


def issue_server_cert(
    ca: CertKey, common_name: str, dns_names: list[str], ips: list[str], now: dt.datetime | None = None
) -> CertKey:
    """A TLS server certificate signed by `ca` for these names and addresses (SANs).

    It lives as long as its CA: the machine serving it cannot renew it (the CA key stays on the
    workstation), and a registry whose certificate ran out would stop every image pull."""
    now = now or _now()
    key = _new_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertKey(_cert_pem(cert), _key_pem(key))


def _usage(sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=True,
        key_cert_sign=sign,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# ---- the secret store ------------------------------------------------------------------


def ca_paths(name: str) -> tuple[str, str]:
    """Secret-store names of CA `name`'s certificate and key (e.g. k3s/tls/server-ca.crt)."""
    return f"{TLS_DIR}/{name}.crt", f"{TLS_DIR}/{name}.key"


def load_pair(store: SecretStore, crt: str, key: str, what: str) -> CertKey | None:
    has_crt, has_key = store.exists(crt), store.exists(key)
    if not has_crt and not has_key:
        return None
    if has_crt != has_key:
        present, missing = (crt, key) if has_crt else (key, crt)
        raise CeilError(
            f"{what}: {store.path(present)} exists but {store.path(missing)} does not: the pair is"
            f" broken. Restore the missing file from a backup of secrets/; making a new pair would"
            f" lock every baked machine out of the cluster"
        )
    pair = CertKey(store.read(crt), store.read(key))
    if pair.cert.public_key() != pair.key.public_key():
        raise CeilError(f"{what}: {store.path(key)} is not the key of {store.path(crt)}: restore both from one backup")
    return pair


def ensure_ca(store: SecretStore, name: str) -> CertKey:
    """CA `name` from the store, made and stored (0600) the first time it is asked for."""
    crt, key = ca_paths(name)
    pair = load_pair(store, crt, key, f"k3s CA {name}")
    if pair is None:
        store.refuse_new(crt, f"cluster CA ({name})")
        pair = make_ca(K3S_CAS[name])
        store.write_pair(key, pair.key_pem, crt, pair.cert_pem)
    return pair


def ensure_k3s_cas(store: SecretStore) -> dict[str, CertKey]:
    """The whole k3s CA set, keyed by name under tls/ (server-ca, etcd/peer-ca, ...)."""
    return {name: ensure_ca(store, name) for name in K3S_CAS}


def ensure_admin_cert(store: SecretStore, now: dt.datetime | None = None) -> CertKey:
    """The workstation's cluster-admin client certificate, renewed when it nears its end."""
    now = now or _now()
    client_ca = ensure_ca(store, "client-ca")
    crt, key = f"{ADMIN_DIR}/client.crt", f"{ADMIN_DIR}/client.key"
    pair = load_pair(store, crt, key, "admin client certificate")
    if pair is not None and _still_good(pair, client_ca, now):
        return pair
    pair = issue_client_cert(client_ca, ADMIN_CN, [ADMIN_ORG], now)
    store.write_pair(key, pair.key_pem, crt, pair.cert_pem)
    return pair


def _still_good(pair: CertKey, ca: CertKey, now: dt.datetime) -> bool:
    try:
        pair.cert.verify_directly_issued_by(ca.cert)
    except (InvalidSignature, ValueError, TypeError):  # another CA, or a bad signature: reissue
        return False
    return pair.cert.not_valid_after_utc - now > RENEW_BEFORE
