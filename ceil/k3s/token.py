"""k3s join tokens and node passwords, computed on the workstation exactly as k3s does.

A full ("secure") k3s token is `K10<ca-hash>::<user>:<password>` (k3s pkg/clientaccess/token.go).
The joining machine downloads the CA bundle from the server's /cacerts, hashes it with `hashCA`
and refuses the server when the hash differs from the token's: the token pins the cluster CA.

Two tokens, two k3s users (pkg/daemons/control/deps: readTokens/genUsers):
- server token, user `server`: full control-plane join; only server images carry it.
- agent token, user `node` (k3s `--agent-token`): joins agents only; what agent images carry.
The server is given the bare secrets (k3s uses a bare token as the password as-is); agents are
given the full agent token so they pin the CA.

Per-node passwords (/etc/rancher/node/password) are stable across bakes: k3s stores each node's
password hash on the server and rejects a same-named node with another password, so a re-flashed
node only rejoins under its old name when it brings the old password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ..errors import CeilError
from .pki import ensure_ca
from ..secrets import SecretStore

TOKEN_PREFIX = "K10"
TOKEN_RE = re.compile(r"^K10([0-9a-f]{64})::([^:]+):(.+)$")
SERVER_SECRET = "k3s/server-token-secret"
AGENT_SECRET = "k3s/agent-token-secret"
NODE_PASSWORD_DIR = "k3s/node-password"


def hash_ca(bundle: bytes) -> str:
    """k3s's hashCA: hex sha256 of the CA bundle served at /cacerts.

    One certificate: the hash of the exact file bytes (whitespace included). Several: the hash of
    the DER of the root that the first certificate chains to; when no chain verifies, k3s falls
    back to hashing the file bytes, and so does this.
    """
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError as e:
        raise CeilError(f"the CA bundle holds no readable PEM certificate ({e}): expected server-ca.crt") from None
    if len(certs) > 1:
        root = _root_of_first(certs)
        if root is not None:
            bundle = root.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(bundle).hexdigest()


def _root_of_first(certs: list[x509.Certificate]) -> x509.Certificate | None:
    """The root that certs[0] chains to, with k3s's pools: roots are the later certificates
    without an authority key id or with AKI == SKI, the other later ones are intermediates."""
    roots, intermediates = [], []
    for cert in certs[1:]:
        aki, ski = _key_id(cert, x509.AuthorityKeyIdentifier), _key_id(cert, x509.SubjectKeyIdentifier)
        (roots if aki is None or aki == ski else intermediates).append(cert)
    now = dt.datetime.now(dt.timezone.utc)
    current, seen = certs[0], 0
    while seen <= len(certs):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            return None  # Go's Verify rejects expired or not-yet-valid chains
        if any(current == r for r in roots):
            return current
        parent = next((c for c in roots + intermediates if _issued_by(current, c)), None)
        if parent is None:
            return None
        current, seen = parent, seen + 1
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert == issuer:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _key_id(cert: x509.Certificate, kind: type) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    return ext.key_identifier if kind is x509.AuthorityKeyIdentifier else ext.digest


def format_token(ca_bundle: bytes, user: str, password: str) -> str:
    """`K10<hashCA(bundle)>::<user>:<password>`, k3s's FormatTokenBytes."""
    return f"{TOKEN_PREFIX}{hash_ca(ca_bundle)}::{user}:{password}"


def parse_token(token: str) -> tuple[str, str, str]:
    """(ca_hash, user, password) of a full token; raises CeilError for any other form."""
    m = TOKEN_RE.match(token.strip())
    if not m:
        raise CeilError(f"not a full k3s token: expected K10<64 hex>::<user>:<password>, found {token[:12]!r}...")
    return m.group(1), m.group(2), m.group(3)


# ---- the secret store ------------------------------------------------------------------


def server_secret(store: SecretStore) -> str:
    return store.token(SERVER_SECRET)


def agent_secret(store: SecretStore) -> str:
    return store.token(AGENT_SECRET)


def server_token(store: SecretStore) -> str:
    """The full server token (for joining more servers by hand, or `k3s token` comparisons)."""
    return format_token(ensure_ca(store, "server-ca").cert_pem, "server", server_secret(store))


def agent_token(store: SecretStore) -> str:
    """The full agent token: user `node`, CA pinned; the only credential agent images get."""
    return format_token(ensure_ca(store, "server-ca").cert_pem, "node", agent_secret(store))


def node_password(store: SecretStore, node_name: str) -> str:
    """The stable k3s node password of `node_name` (hex, like the ones k3s makes itself)."""
    return store.token(f"{NODE_PASSWORD_DIR}/{node_name}", nbytes=16)
