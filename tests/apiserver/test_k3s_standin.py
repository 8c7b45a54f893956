"""The QEMU test bed's k3s stand-in lets in only what ceil's baked keys let in (testbed/k3s_standin.py).

The QEMU suite runs the stand-in on booted nodes (tests/infra/test_cluster.py: nodes Ready).
Here its server part runs on this machine, in a network namespace, from the files a baked server
card holds (config.yaml and the CA set, as ceil renders them), with k3s's --disable-agent; then
what an agent meets: the CA anyone may read is the one ceil's agent token pins, nothing else is
readable without a credential, the agent token's secret is a bootstrap credential and a wrong one
is not, and the stand-in's agent refuses a server whose CA the token does not pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ceil.config import load_cluster
from ceil.k3s.kubeconfig import API_PORT
from ceil.k3s.node_config import TLS_ON_TARGET, agent_config, init_server, server_config, server_secret_files
from ceil.k3s.token import agent_token, parse_token
from ceil.secrets import SecretStore
from testbed import kubenode

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "testbed" / "k3s_standin.py"
BUILD = kubenode.lookup(kubenode.host_arch())  # at import: the unit tests' fixture moves CEIL_CACHE
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def _ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], **kw)


def _card(root: Path, files: dict[str, str | bytes], config: dict) -> None:
    """What the payload's k3s-node.sh leaves on a card: config.yaml, secrets, the CA set."""
    (root / "etc/rancher/k3s").mkdir(parents=True, exist_ok=True)
    (root / "etc/rancher/k3s/config.yaml").write_text(yaml.safe_dump(config))
    for name, data in files.items():
        dest = (root / "var/lib/rancher/k3s/server/tls" / name[len(TLS_ON_TARGET) + 1:]
                if name.startswith(TLS_ON_TARGET + "/") else root / "etc/ceil/secrets" / name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.fixture(scope="module")
def standin(workstation, kubeconfig, tmp_path_factory):
    if BUILD is None:
        pytest.fail("the k3s stand-in is not built for this machine: run `make kubenode ARCH=amd64`"
                    " (python -m testbed.kubenode --arch host)")
    if os.geteuid() != 0:
        pytest.fail("the stand-in's server runs in a network namespace: run it as root")
    cluster = load_cluster(workstation / "cluster.yaml")
    store = SecretStore(workstation / "secrets")
    server = init_server(cluster)
    root = tmp_path_factory.mktemp("card")
    _card(root, server_secret_files(cluster, server, store), server_config(cluster, server))
    ns = f"ceilstandin{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    _ns(ns, "ip", "link", "set", "lo", "up", check=True)
    _ns(ns, "ip", "addr", "add", f"{server.ip}/32", "dev", "lo", check=True)
    env = {**os.environ, "CEIL_STANDIN_ROOT": str(root), "CEIL_STANDIN_DATA": str(BUILD),
           "K3S_VERSION": cluster.kubernetes.k3s_version}
    log = (root / "standin.log").open("w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(STANDIN), "server", "--disable-agent"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"https://{server.ip}:{API_PORT}"
    try:
        deadline = time.monotonic() + 240
        while "server running" not in (root / "standin.log").read_text():
            assert proc.poll() is None, (root / "standin.log").read_text()
            assert time.monotonic() < deadline, (root / "standin.log").read_text()
            time.sleep(1)
        yield {"ns": ns, "url": url, "root": root, "cluster": cluster, "store": store, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _get(standin, path: str, token: str | None = None) -> tuple[int, str]:
    """curl from inside the namespace, trusting no CA (as an agent does before the check)."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    done = _ns(standin["ns"], "curl", "-sk", "-o", "/dev/stdout", "-w", "\n%{http_code}", *auth,
               standin["url"] + path, capture_output=True, text=True, timeout=30)
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_the_ca_anyone_may_read_is_the_one_ceils_agent_token_pins(standin):
    code, body = _get(standin, CLUSTER_INFO)
    assert code == 200, body
    ca = json.loads(body)["data"]["ca.crt"]
    pinned, _, _ = parse_token(agent_token(standin["store"]))
    assert hashlib.sha256(ca.encode()).hexdigest() == pinned
    # ... and the only thing: no other object, no listing, not even the API's root.
    for path in ("/api", "/api/v1/namespaces/kube-public/configmaps", "/api/v1/namespaces/kube-system/secrets"):
        assert _get(standin, path)[0] == 401, path


def test_the_agent_tokens_secret_is_a_bootstrap_credential_and_nothing_else_is(standin):
    _, _, secret = parse_token(agent_token(standin["store"]))
    code, body = _get(standin, "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=secret)
    assert code == 200, body
    assert _get(standin, "/api/v1/namespaces/kube-system/secrets", token=secret)[0] == 403
    assert _get(standin, "/api", token=secret[:-1] + ("x" if secret[-1] != "x" else "y"))[0] == 401


def test_an_agent_whose_token_pins_another_ca_refuses_the_server(standin, tmp_path):
    cluster = standin["cluster"]
    other = SecretStore(tmp_path / "another-clusters-secrets")
    from ceil.k3s.pki import ensure_k3s_cas

    ensure_k3s_cas(other)
    agent = next(n for n in cluster.nodes if n.role == "agent")
    root = tmp_path / "agent-card"
    config = agent_config(cluster, agent)
    _card(root, {"k3s/agent-token": agent_token(other) + "\n"}, config)
    done = _ns(standin["ns"], sys.executable, str(STANDIN), "agent", env={**standin["env"], "CEIL_STANDIN_ROOT": str(root)},
               capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "not the" in done.stderr and "the token pins: not joining" in done.stderr, done.stderr
    assert not (root / "var/lib/rancher/k3s/agent/server-ca.crt").exists()


def test_the_admin_kubeconfig_ceil_bakes_is_accepted_by_the_standin(standin, kubeconfig):
    """The workstation's kubeconfig (bake.py kubeconfig) against the stand-in's API: the same CA
    set, so the same trust both ways (as test_pki.py shows for the fast layer's own lab)."""
    import base64

    doc = yaml.safe_load(kubeconfig.read_text())
    user = doc["users"][0]["user"]
    ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
    d = standin["root"] / "ws"
    d.mkdir(exist_ok=True)
    for name, data in (("ca.crt", ca), ("admin.crt", base64.b64decode(user["client-certificate-data"])),
                       ("admin.key", base64.b64decode(user["client-key-data"]))):
        (d / name).write_bytes(data)
    done = _ns(standin["ns"], "curl", "-s", "--cacert", str(d / "ca.crt"), "--cert", str(d / "admin.crt"),
               "--key", str(d / "admin.key"), standin["url"] + "/version", capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout)["gitVersion"] == standin["cluster"].kubernetes.k3s_version, done.stdout
