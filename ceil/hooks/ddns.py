"""Hooks of the `ddns` feature: the Cloudflare token travels only as a secret file."""

from __future__ import annotations

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore

TOKEN_SECRET = "ddns-token"  # -> /etc/ceil/secrets/ddns-token, read by ceil-ddns


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {TOKEN_SECRET: cluster.ddns.api_token.get_secret_value().strip() + "\n"}


def check(cluster: Cluster, role: str) -> None:
    token = cluster.ddns.api_token.get_secret_value().strip() if cluster.ddns.api_token else ""
    if not token or not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(
            "ddns.api_token: expected one Cloudflare API token (printable ASCII, no spaces or line"
            " breaks), found an empty or malformed value: create a token scoped to Zone.DNS edit and set it,"
            " e.g. api_token: ${CLOUDFLARE_API_TOKEN}"
        )
