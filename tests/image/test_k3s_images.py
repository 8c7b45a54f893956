"""Issue 5 proof on baked images: an agent's image holds no CA key and no server token anywhere
in its bytes; the server's image does hold them (so the scan is known to see such bytes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ceil.k3s import pki
from ceil.k3s import token as k3s_token
from ceil.catalog import load_flavor
from ceil.secrets import SecretStore
from tests.imagefactory import make_base_image

pytestmark = pytest.mark.image
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def baked(tmp_path_factory, ssh_pubkey, offline_wheels):
    d = tmp_path_factory.mktemp("k3s-bake")
    base = make_base_image(d / "base.img", load_flavor("ubuntu-24.04-raspi"))
    (d / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
        "router: {uplink: {type: ethernet, interface: eth1}}\n"
        "nodes: [{name: one, role: server}, {name: two}]\n"
    )
    env = {**os.environ, "CEIL_CACHE": str(d / "cache"), "XDG_CACHE_HOME": str(offline_wheels)}
    result = subprocess.run([sys.executable, str(REPO / "bake.py"), "--all", "--base-image", str(base), "--any-base-image"],
                            cwd=d, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return d


def secret_needles(store: SecretStore) -> dict[str, bytes]:
    """Byte strings that must never be in an agent image: each CA key's PEM body lines (a FAT
    file's bytes lie in the image as written) and the server token's secret."""
    needles = {"server token secret": k3s_token.server_secret(store).encode()}
    for name, ca in pki.ensure_k3s_cas(store).items():
        body = ca.key_pem.splitlines()[1]  # first base64 line of the key: unique to this key
        needles[f"{name} key"] = body
    return needles


def test_agent_image_holds_no_ca_key_and_no_server_token(baked):
    store = SecretStore(baked / "secrets")
    agent = (baked / "out" / "ceil-two.img").read_bytes()
    server = (baked / "out" / "ceil-one.img").read_bytes()
    for what, needle in secret_needles(store).items():
        assert needle not in agent, f"the agent image contains the {what}"
        assert needle in server, f"the server image lacks the {what}: the scan would prove nothing"
    assert k3s_token.agent_token(store).encode() in agent  # what the agent does carry
