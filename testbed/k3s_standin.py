"""The QEMU test bed's k3s stand-in: upstream Kubernetes started from what ceil baked.

Runs inside a test-bed node as `/usr/local/bin/k3s server|agent` (the self-extracting bundle
testbed/kubenode.py makes unpacks this file and the binaries beside it), under the k3s unit ceil
wrote. It reads what k3s would read, /etc/rancher/k3s/config.yaml and the files it names, and
starts the same upstream programs k3s embeds, with k3s's paths:

server   kine on server/db/state.db (k3s's SQLite file: ceil's snapshots and restores use it),
         kube-apiserver on :6443 with the baked CAs in server/tls/ (serving and client
         certificates issued from them at start, as k3s does; secrets encrypted when the config
         asks), kube-controller-manager (signing node certificates with the baked client CA),
         kube-scheduler, /etc/rancher/k3s/k3s.yaml, then the node part below.
agent    reads the token file; fetches the server's CA without trusting it and refuses it unless
         its SHA-256 is the hash the token pins (k3s's rule for a one-certificate CA); then joins
         with the token's secret, which the server accepts only if it is the agent secret ceil
         gave the server. Kubernetes' own CSR bootstrap turns it into the kubelet's certificate.
both     containerd + runc with a bridge CNI config, and the kubelet with the node name, node IP
         and kubelet-arg values from config.yaml (the kubelet parses them: a bad value stops it).

Not k3s: no supervisor on :6443 (the CA is read from a ConfigMap anonymous requests may read,
nothing else), no flannel (pod traffic between nodes is not routed), no kube-proxy, no
embedded etcd (one server only), no packaged add-ons, no images. Python 3 standard library and
PyYAML and python3-cryptography (cloud-init's dependencies bring both onto the test beds).
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(os.environ.get("CEIL_STANDIN_ROOT", "/"))
DATA = Path(os.environ.get("CEIL_STANDIN_DATA", Path(__file__).resolve().parent))
BIN = DATA / "bin"
VERSION = os.environ.get("K3S_VERSION", "")
CONFIG = ROOT / "etc/rancher/k3s/config.yaml"
ADMIN_KUBECONFIG = ROOT / "etc/rancher/k3s/k3s.yaml"
K3S = ROOT / "var/lib/rancher/k3s"
TLS = K3S / "server/tls"
CRED = K3S / "server/cred"
AGENT = K3S / "agent"
SOCKET = ROOT / "run/k3s/containerd/containerd.sock"
LOGS = ROOT / "var/log/k3s-standin"
API_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"
TOKEN_RE = re.compile(r"^K10([0-9a-f]{64})::([^:]+):(.+)$")
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


class Refused(Exception):
    """What k3s would refuse to start with: logged, and the unit restarts us (as k3s's would)."""


class Stopped(Exception):
    """SIGTERM or SIGINT: whatever the stand-in was waiting for, it stops its programs and exits."""


DAEMONS = ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet")


def log(msg: str) -> None:
    print(f"k3s-standin: {msg}", file=sys.stderr, flush=True)


# ---- certificates ---------------------------------------------------------------------------

def _write_private(path: Path, data: bytes) -> None:
    """Written beside its final name and renamed: a power cut leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def issue(name: str, ca: str, cn: str, orgs: tuple[str, ...] = (), sans: tuple[str, ...] = (),
          server: bool = False, where: Path = TLS) -> tuple[Path, Path]:
    """where/<name>.{crt,key} signed by TLS/<ca>.{crt,key}; kept when present (k3s keeps them).
    Valid from the CA's own notBefore, as k3s's certificates are (dynamiclistener's
    NewSignedCert): a clock that is behind, or a workstation's that is, still accepts them."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    crt, key = where / f"{name}.crt", where / f"{name}.key"
    if crt.exists() and key.exists():
        return crt, key
    ca_cert = x509.load_pem_x509_certificate((TLS / f"{ca}.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((TLS / f"{ca}.key").read_bytes(), None)
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(own.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(ca_cert.not_valid_before_utc)
               .not_valid_after(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               # Key identifiers, as Go and openssl add them: Python 3.13's default verification
               # (VERIFY_X509_STRICT) refuses a certificate without its issuer's key identifier.
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(own.public_key()), critical=False)
               .add_extension(_authority_key_id(ca_cert), critical=False))
    if sans:
        names = [x509.IPAddress(ipaddress.ip_address(s)) if _is_ip(s) else x509.DNSName(s) for s in dict.fromkeys(sans)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key, own.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    _write_private(crt, cert.public_bytes(serialization.Encoding.PEM))
    crt.chmod(0o644)
    return crt, key


def _authority_key_id(ca_cert):
    from cryptography import x509

    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())


def service_key(path: Path) -> None:
    """The service-account signing key, made once (k3s keeps it too)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not path.exists():
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(path, k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption()))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def kubeconfig(path: Path, server: str, ca: Path, cert: Path | None = None, key: Path | None = None,
               token: str | None = None) -> Path:
    user = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "default",
           "clusters": [{"name": "default", "cluster": {"server": server, "certificate-authority": str(ca)}}],
           "users": [{"name": "default", "user": user}],
           "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


# ---- processes --------------------------------------------------------------------------

class Supervisor:
    """Children that die with us (PR_SET_PDEATHSIG: the unit's KillMode=process kills only the
    main process), each logging to LOGS/<name>.log; one that exits ends the whole stand-in."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        LOGS.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        out = (LOGS / f"{name}.log").open("ab")
        log(f"starting {name}")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                                                            **(env or {})},
            # PR_SET_PDEATHSIG: SIGKILL, since kube-apiserver can linger for minutes after one
            # SIGTERM once its datastore is gone (seen on a test-bed server).
            preexec_fn=lambda: libc.prctl(1, int(signal.SIGKILL)))

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
                raise Refused(f"{name} exited ({proc.returncode}); the end of {LOGS / name}.log:\n" + "\n".join(tail))

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def wait_for(self, what: str, probe, timeout: float = 900, every: float = 2):
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            self.check()
            try:
                value = probe()
                if value:
                    return value
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                last = str(exc)
            time.sleep(every)
        raise Refused(f"{what} not ready after {timeout:.0f} s: {last}")


def kill_leftovers(grace: float = 15) -> None:
    """The daemons a previous run left behind (killed before it could stop them, or another
    version's after an upgrade): they would hold the ports and files this run needs. Pod shims
    are left alone, as k3s leaves them; a user's `k3s kubectl` too."""
    data = str(K3S / "data") + "/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if exe.startswith(data) and os.path.basename(exe) in DAEMONS:
            found.append(int(proc.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while (found := [pid for pid in found if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not found:
            return
        log(f"left over from an earlier run, still there after SIGTERM: {found}; killing")


def notify_ready() -> None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)


def https_get(url: str, ca: Path | None = None, cert: tuple[Path, Path] | None = None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return r.read()


# ---- the config ---------------------------------------------------------------------------

def load_config() -> dict:
    if not CONFIG.is_file():
        raise Refused(f"{CONFIG} is missing")
    cfg = yaml.safe_load(CONFIG.read_text()) or {}
    for key in ("node-name", "node-ip"):
        if not cfg.get(key):
            raise Refused(f"{CONFIG} has no {key} (the stand-in, unlike k3s, takes no default)")
    return cfg


def secret_of(path: str) -> str:
    """A token file's secret: the bare secret, or the password of a full K10 token."""
    text = Path(ROOT / path.lstrip("/")).read_text().strip()
    m = TOKEN_RE.match(text)
    return m.group(3) if m else text


def service_ip(cfg: dict, offset: int) -> str:
    net = ipaddress.ip_network(cfg.get("service-cidr", "10.43.0.0/16"))
    return str(net.network_address + offset)


# ---- server -------------------------------------------------------------------------------

BOOTSTRAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {{name: cluster-info, namespace: kube-public}}
data: {data}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ceil-standin-cluster-info, namespace: kube-public}}
rules: [{{apiGroups: [""], resources: [configmaps], resourceNames: [cluster-info], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ceil-standin-cluster-info, namespace: kube-public}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ceil-standin-cluster-info}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:anonymous"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ceil-standin-node-bootstrapper}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ceil-standin-approve-node-client}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ceil-standin-renew-node-client}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}}]
"""


def server(cfg: dict, sup: Supervisor) -> None:
    if cfg.get("cluster-init") or cfg.get("server"):
        raise Refused("this config makes an embedded-etcd server; the stand-in runs one server on kine"
                      " (SQLite) only: several servers are checked on hardware")
    for ca in ("server-ca", "client-ca", "request-header-ca"):
        if not (TLS / f"{ca}.crt").is_file() or not (TLS / f"{ca}.key").is_file():
            raise Refused(f"{TLS / ca}.crt/.key missing: ceil bakes the CA set (k3s would make its own)")
    ip, name = str(cfg["node-ip"]), str(cfg["node-name"])
    sans = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            "localhost", "127.0.0.1", service_ip(cfg, 1), ip, *map(str, cfg.get("tls-san") or []))
    issue("serving-kube-apiserver", "server-ca", "kube-apiserver", sans=sans, server=True)
    issue("client-auth-proxy", "request-header-ca", "system:auth-proxy")
    controller = issue("client-controller", "client-ca", "system:kube-controller-manager")
    scheduler = issue("client-scheduler", "client-ca", "system:kube-scheduler")
    admin = issue("client-admin", "client-ca", "system:admin", ("system:masters",))
    kubelet_client = issue("client-kube-apiserver", "client-ca", "system:kube-apiserver", ("system:masters",))
    service_key(TLS / "service.key")
    CRED.mkdir(parents=True, exist_ok=True)
    # The agents' credential: the agent secret the server was given (agent-token-file), as a
    # static token whose user is a bootstrapper, the rights k3s's node:<secret> login grants.
    tokens = CRED / "ceil-standin-tokens.csv"
    agent_secret = secret_of(cfg["agent-token-file"]) if cfg.get("agent-token-file") else secret_of(cfg["token-file"])
    tokens.write_text(f'{agent_secret},system:bootstrap:ceil-agent,ceil-agent,"system:bootstrappers"\n')
    tokens.chmod(0o600)
    authn = CRED / "ceil-standin-authentication.yaml"
    authn.write_text(yaml.safe_dump({"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AuthenticationConfiguration",
                                     "anonymous": {"enabled": True, "conditions": [{"path": CLUSTER_INFO}]}}))
    encryption = CRED / "encryption-config.json"
    if cfg.get("secrets-encryption") and not encryption.exists():
        import base64
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        encryption.write_text(json.dumps({"kind": "EncryptionConfiguration", "apiVersion": "apiserver.config.k8s.io/v1",
                                          "resources": [{"resources": ["secrets"], "providers": [
                                              {"aescbc": {"keys": [{"name": "aescbckey", "secret": key}]}},
                                              {"identity": {}}]}]}))
        encryption.chmod(0o600)
    db = K3S / "server/db"
    db.mkdir(parents=True, exist_ok=True)
    sup.spawn("kine", [str(BIN / "kine"), "--listen-address", "127.0.0.1:2379", "--endpoint",
                       f"sqlite://{db}/state.db?_journal=WAL&cache=shared&_busy_timeout=30000"])
    t = TLS
    args = {
        "etcd-servers": "http://127.0.0.1:2379", "storage-backend": "etcd3", "cert-dir": str(t / "temporary-certs"),
        "allow-privileged": "true", "authorization-mode": "Node,RBAC",
        "service-account-signing-key-file": str(t / "service.key"), "service-account-key-file": str(t / "service.key"),
        "service-cluster-ip-range": cfg.get("service-cidr", "10.43.0.0/16"), "service-node-port-range": "30000-32767",
        "advertise-address": ip, "secure-port": str(API_PORT), "bind-address": "0.0.0.0",
        "tls-cert-file": str(t / "serving-kube-apiserver.crt"), "tls-private-key-file": str(t / "serving-kube-apiserver.key"),
        "service-account-issuer": f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "api-audiences": f"https://kubernetes.default.svc.{CLUSTER_DOMAIN},k3s",
        "requestheader-client-ca-file": str(t / "request-header-ca.crt"), "requestheader-allowed-names": "system:auth-proxy",
        "proxy-client-cert-file": str(t / "client-auth-proxy.crt"), "proxy-client-key-file": str(t / "client-auth-proxy.key"),
        "requestheader-extra-headers-prefix": "X-Remote-Extra-", "requestheader-group-headers": "X-Remote-Group",
        "requestheader-username-headers": "X-Remote-User", "client-ca-file": str(t / "client-ca.crt"),
        "kubelet-client-certificate": str(kubelet_client[0]), "kubelet-client-key": str(kubelet_client[1]),
        "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
        "enable-admission-plugins": "NodeRestriction", "profiling": "false",
        "token-auth-file": str(tokens), "authentication-config": str(authn),
    }
    if cfg.get("secrets-encryption"):
        args["encryption-provider-config"] = str(encryption)
    sup.spawn("kube-apiserver", [str(BIN / "kube-apiserver"), *(f"--{k}={v}" for k, v in args.items())])
    sup.wait_for("kube-apiserver", lambda: https_get(f"https://127.0.0.1:{API_PORT}/readyz", t / "server-ca.crt", admin) == b"ok",
                 every=3)
    kubeconfig(ADMIN_KUBECONFIG, f"https://127.0.0.1:{API_PORT}", t / "server-ca.crt", *admin)
    data = {"ca.crt": (t / "server-ca.crt").read_text(), "client-ca.crt": (t / "client-ca.crt").read_text()}
    manifest = BOOTSTRAP.format(data=json.dumps(data))
    sup.wait_for("the bootstrap objects", lambda: subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(ADMIN_KUBECONFIG), "apply", "--server-side", "--force-conflicts",
         "--field-manager=k3s-standin", "-f", "-"], input=manifest, text=True, capture_output=True).returncode == 0)
    kcm = kubeconfig(CRED / "controller.kubeconfig", f"https://127.0.0.1:{API_PORT}", t / "server-ca.crt", *controller)
    sup.spawn("kube-controller-manager", [str(BIN / "kube-controller-manager"), *(f"--{k}={v}" for k, v in {
        "kubeconfig": kcm, "authentication-kubeconfig": kcm, "authorization-kubeconfig": kcm,
        "service-account-private-key-file": t / "service.key", "root-ca-file": t / "server-ca.crt",
        "use-service-account-credentials": "true", "allocate-node-cidrs": "true",
        "cluster-cidr": cfg.get("cluster-cidr", "10.42.0.0/16"), "service-cluster-ip-range": cfg.get("service-cidr", "10.43.0.0/16"),
        "cluster-signing-kubelet-client-cert-file": t / "client-ca.crt", "cluster-signing-kubelet-client-key-file": t / "client-ca.key",
        "cluster-signing-kube-apiserver-client-cert-file": t / "client-ca.crt",
        "cluster-signing-kube-apiserver-client-key-file": t / "client-ca.key",
        "cluster-signing-kubelet-serving-cert-file": t / "server-ca.crt", "cluster-signing-kubelet-serving-key-file": t / "server-ca.key",
        "cluster-signing-legacy-unknown-cert-file": t / "server-ca.crt", "cluster-signing-legacy-unknown-key-file": t / "server-ca.key",
        "bind-address": "127.0.0.1", "secure-port": "10257", "leader-elect": "false", "profiling": "false",
        "controllers": "*,tokencleaner,-service,-route,-cloud-node-lifecycle"}.items())])
    sched = kubeconfig(CRED / "scheduler.kubeconfig", f"https://127.0.0.1:{API_PORT}", t / "server-ca.crt", *scheduler)
    sup.spawn("kube-scheduler", [str(BIN / "kube-scheduler"), f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}",
                                 f"--authorization-kubeconfig={sched}", "--bind-address=127.0.0.1", "--secure-port=10259",
                                 "--leader-elect=false", "--profiling=false"])
    if cfg.get("disable-agent"):  # k3s's flag: a control plane with no kubelet of its own
        return
    node_client = issue("client-kubelet", "client-ca", f"system:node:{name}", ("system:nodes",), where=AGENT)
    kubelet_kubeconfig = kubeconfig(AGENT / "kubelet.kubeconfig", f"https://127.0.0.1:{API_PORT}", t / "server-ca.crt",
                                    *node_client)
    node(cfg, sup, ["--kubeconfig", str(kubelet_kubeconfig)], t / "client-ca.crt")


# ---- agent --------------------------------------------------------------------------------

def agent(cfg: dict, sup: Supervisor) -> None:
    url = str(cfg.get("server") or "")
    if not url or not cfg.get("token-file"):
        raise Refused(f"{CONFIG} names no server or no token-file for the agent")
    token = Path(ROOT / str(cfg["token-file"]).lstrip("/")).read_text().strip()
    m = TOKEN_RE.match(token)
    if not m:
        raise Refused(f"{cfg['token-file']} holds no full token (K10<ca-hash>::<user>:<password>): k3s would not"
                      " know which server CA to trust")
    pinned, secret = m.group(1), m.group(3)

    def fetch() -> dict:
        return json.loads(https_get(url + CLUSTER_INFO))["data"]

    # Not trusted until its hash is the one the token pins, as k3s checks /cacerts.
    data = sup.wait_for(f"the server's CA at {url}", fetch, timeout=3600, every=10)
    ca = data["ca.crt"].encode()
    if ca.count(b"-----BEGIN CERTIFICATE-----") != 1:
        raise Refused("the server's CA bundle holds several certificates: the stand-in checks one-certificate CAs only")
    got = hashlib.sha256(ca).hexdigest()
    if got != pinned:
        raise Refused(f"the server at {url} serves a CA whose SHA-256 is {got}, not the {pinned} the token pins:"
                      " not joining (k3s: token CA hash does not match)")
    AGENT.mkdir(parents=True, exist_ok=True)
    (AGENT / "server-ca.crt").write_bytes(ca)
    (AGENT / "client-ca.crt").write_text(data["client-ca.crt"])
    boot = kubeconfig(AGENT / "bootstrap.kubeconfig", url, AGENT / "server-ca.crt", token=secret)
    node(cfg, sup, ["--bootstrap-kubeconfig", str(boot), "--kubeconfig", str(AGENT / "kubelet.kubeconfig")],
         AGENT / "client-ca.crt")


# ---- what every node runs -----------------------------------------------------------------

CONTAINERD = """\
version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "rancher/mirrored-pause:3.6"
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "{certs}"
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{bin}"]
  conf_dir = "{cni}"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true
"""


def node(cfg: dict, sup: Supervisor, credentials: list[str], client_ca: Path) -> None:
    etc = AGENT / "etc"
    cni = etc / "cni/net.d"
    cni.mkdir(parents=True, exist_ok=True)
    (etc / "containerd").mkdir(parents=True, exist_ok=True)
    (etc / "containerd/config.toml").write_text(CONTAINERD.format(
        root=AGENT / "containerd", state=SOCKET.parent, socket=SOCKET, certs=etc / "containerd/certs.d", bin=BIN, cni=cni))
    sup.spawn("containerd", [str(BIN / "containerd"), "--config", str(etc / "containerd/config.toml")])
    sup.wait_for("containerd", SOCKET.exists, timeout=300)
    import_images(sup)
    kubelet_config = AGENT / "kubelet.yaml"
    kubelet_config.write_text(yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd", "clusterDNS": [service_ip(cfg, 10)], "clusterDomain": CLUSTER_DOMAIN,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"}, "failSwapOn": False, "rotateCertificates": True,
        "staticPodPath": str(AGENT / "pod-manifests"), "containerRuntimeEndpoint": f"unix://{SOCKET}"}))
    (AGENT / "pod-manifests").mkdir(exist_ok=True)
    extra = [f"--{arg}" for arg in cfg.get("kubelet-arg") or []]
    labels = ",".join(map(str, cfg.get("node-label") or []))
    taints = ",".join(map(str, cfg.get("node-taint") or []))
    sup.spawn("kubelet", [str(BIN / "kubelet"), f"--config={kubelet_config}", *credentials,
                          f"--cert-dir={AGENT / 'kubelet-pki'}", f"--hostname-override={cfg['node-name']}",
                          f"--node-ip={cfg['node-ip']}", *([f"--node-labels={labels}"] if labels else []),
                          *([f"--register-with-taints={taints}"] if taints else []), *extra])
    # The pod network, as flannel sets it up: on the range the controller-manager gave this Node
    # out of the server's cluster-cidr (a bridge here; traffic between nodes is not routed).
    subnet = sup.wait_for(f"{cfg['node-name']}'s pod range", lambda: node_pod_cidr(cfg), timeout=900, every=3)
    (cni / "10-ceil-standin.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "ceil-standin", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}, indent=2))
    log(f"pod network {subnet}")


def node_pod_cidr(cfg: dict) -> str | None:
    """spec.podCIDR of this Node, read with the kubelet's own credentials once it has them."""
    path = AGENT / "kubelet.kubeconfig"
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text())
    cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
    ca = Path(cluster.get("certificate-authority") or "")
    if "certificate-authority-data" in cluster:
        import base64
        ca = AGENT / "kubelet-api-ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    cert = Path(user["client-certificate"])
    if not cert.is_file():
        return None
    body = https_get(f"{cluster['server']}/api/v1/nodes/{cfg['node-name']}", ca, (cert, Path(user["client-key"])))
    return json.loads(body).get("spec", {}).get("podCIDR")


def import_images(sup: Supervisor) -> None:
    """What k3s imports at start: the tarballs in agent/images/ (ceil's air-gap bundle puts
    them there), and the stand-in's own pause image (no sandbox image can be pulled here)."""
    found = sorted(p for p in (AGENT / "images").glob("*.tar*") if p.is_file()) if (AGENT / "images").is_dir() else []
    for tarball in [DATA / "images/pause.tar", *found]:
        ctr = [str(BIN / "ctr"), "--address", str(SOCKET), "-n", "k8s.io", "images", "import"]
        if tarball.name.endswith(".zst"):
            done = subprocess.run(f"zstd -dcq {shlex.quote(str(tarball))} | {shlex.join(ctr)} -", shell=True,
                                  capture_output=True, text=True)
        else:
            done = subprocess.run([*ctr, str(tarball)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Refused(f"importing {tarball} into containerd failed: {done.stderr.strip()}")
        log(f"imported {tarball.name}")


# ---- the command line k3s has, as far as the stand-in goes -------------------------------

def run(mode: str, flags: list[str]) -> int:
    sup = Supervisor()

    def on_term(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        if ROOT == Path("/"):
            kill_leftovers()
        cfg = load_config()
        for flag in flags:  # k3s takes every config key as a flag too; the stand-in only these
            if flag != "--disable-agent":
                raise Refused(f"{flag}: the stand-in takes its settings from {CONFIG} (and --disable-agent)")
            cfg["disable-agent"] = True
        server(cfg, sup) if mode == "server" else agent(cfg, sup)
        notify_ready()
        log(f"{mode} running (k3s {VERSION} stand-in); logs in {LOGS}")
        while True:
            sup.check()
            time.sleep(2)
    except Stopped:
        log("stopping")
        return 0
    except Refused as exc:
        log(str(exc))
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
        sup.stop()


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd in ("server", "agent"):
        return run(cmd, argv[1:])
    if cmd == "kubectl":
        env = {**os.environ}
        env.setdefault("KUBECONFIG", str(ADMIN_KUBECONFIG))
        os.execve(str(BIN / "kubectl"), [str(BIN / "kubectl"), *argv[1:]], env)
    if cmd == "ctr":
        os.execv(str(BIN / "ctr"), [str(BIN / "ctr"), "--address", str(SOCKET), *argv[1:]])
    print(f"k3s {VERSION} (ceil test-bed stand-in): '{cmd}' is not part of the stand-in"
          " (server, agent, kubectl, ctr, --version)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
