"""A k3s server's control plane, minus k3s, in a network namespace on this machine.

Started from what a ceil server image carries: the CA files the bake put in the payload
(`server_secret_files`) and the k3s config ceil renders for the server (`server_config`: node
IP, TLS SANs, service CIDR, secrets encryption). From them the lab does what k3s does at
start (pkg/daemons/control/deps: GenServerDeps; server.go: apiServer): issues the API server's
serving certificate from the server CA, the front-proxy client certificate from the
request-header CA and client certificates for its controllers from the client CA, writes an
aescbc encryption config, then runs kine (SQLite), kube-apiserver with k3s's flags,
kube-controller-manager and k3s's helm-controller.

Network: namespace `ceilapi<suffix>`, a veth to this machine, and the server's cluster address
(10.42.0.11 by default) on the namespace's side with a /32 route to it here, so the
workstation's kubeconfig is used exactly as `bake.py kubeconfig` wrote it. Needs root.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import secrets as pysecrets
import signal
import subprocess
import time
from pathlib import Path

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ceil.config import Cluster
from ceil.k3s import pki
from ceil.k3s.kubeconfig import API_PORT
from ceil.k3s.node_config import TLS_ON_TARGET, init_server, server_config, server_secret_files
from ceil.secrets import SecretStore

HOST_SIDE, NS_SIDE = "198.18.7.1", "198.18.7.2"  # benchmark range: never routed off this machine
CLUSTER_DOMAIN = "cluster.local"


class LabError(RuntimeError):
    pass


class ApiServerLab:
    def __init__(self, build, cluster: Cluster, store: SecretStore, workdir: Path, suffix: str):
        self.build, self.cluster, self.store, self.dir = build, cluster, store, workdir
        self.ns = f"ceilapi{suffix}"
        self.veth = f"vapi{suffix}"[:15]
        self.node = init_server(cluster)
        self.config = server_config(cluster, self.node)  # what k3s would read from config.yaml
        self.ip = str(self.node.ip)
        self.url = f"https://{self.ip}:{API_PORT}"
        self.tls = workdir / "server" / "tls"
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 240) -> None:
        self._install_server_files()
        self._issue_certs()
        self._network()
        self.spawn("kine", [str(self.build.kine), "--listen-address", "127.0.0.1:2379", "--endpoint",
                            f"sqlite://{self.dir}/db/state.db?_journal=WAL&cache=shared&_busy_timeout=30000"])
        self.spawn("kube-apiserver", [str(self.build.apiserver), *self.apiserver_args()])
        self.wait_ready(timeout)
        self.spawn("kube-controller-manager", [str(self.build.controller_manager), *self.controller_manager_args()])
        self.spawn("helm-controller", [str(self.build.helm_controller), "--kubeconfig",
                                       str(self.kubeconfig("helm-controller", "system:masters"))])

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name)
        subprocess.run(["ip", "route", "del", f"{self.ip}/32", "via", NS_SIDE], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def tails(self, *names: str, chars: int = 2500) -> str:
        """The end of each process's log, for a failure message."""
        return "\n".join(f"{name}:\n{self.log(name)[-chars:]}" for name in names)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        admin = self.client_cert("ceil-lab-probe", "system:masters")
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise LabError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
            try:
                r = requests.get(f"{self.url}/readyz", cert=admin, verify=str(self.tls / "server-ca.crt"), timeout=5)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[-300:]}"
            except requests.RequestException as e:
                last = str(e)
            time.sleep(1)
        raise LabError(f"kube-apiserver not ready within {timeout:.0f} s: {last}\n{self.log('kube-apiserver')[-3000:]}")

    # ---- what k3s does at start ----------------------------------------------------------

    def _install_server_files(self) -> None:
        """The CA files exactly as the bake put them in the server's payload (k3s-node.sh copies
        /etc/ceil/secrets/k3s/tls/ to server/tls/ the same way)."""
        prefix = TLS_ON_TARGET + "/"
        for name, data in server_secret_files(self.cluster, self.node, self.store).items():
            if name.startswith(prefix):
                path = self.tls / name[len(prefix):]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data if isinstance(data, bytes) else data.encode())
                path.chmod(0o600)
        (self.dir / "db").mkdir(exist_ok=True)

    def _ca(self, name: str) -> pki.CertKey:
        return pki.CertKey((self.tls / f"{name}.crt").read_bytes(), (self.tls / f"{name}.key").read_bytes())

    def _issue_certs(self) -> None:
        service_ip = str(next(ipaddress.ip_network(self.config["service-cidr"]).hosts()))
        sans = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
                "localhost", "127.0.0.1", service_ip, self.config["node-ip"], *self.config.get("tls-san", [])]
        self._write_pair("serving-kube-apiserver", _serving_cert(self._ca("server-ca"), "kube-apiserver", sans))
        self._write_pair("client-auth-proxy", pki.issue_client_cert(self._ca("request-header-ca"), "system:auth-proxy", []))
        # The service-account key and the encryption key are made once and kept across a restart,
        # as k3s keeps them: on disk, and in the bootstrap data it stores in the datastore under
        # the server token, from where a new card whose datastore was restored takes them back
        # (test_datastore_restore.py restarts this lab).
        if not (self.tls / "service.key").exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            (self.tls / "service.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
        (self.dir / "cred").mkdir(exist_ok=True)
        if (self.dir / "cred" / "encryption-config.json").exists():
            return
        secret = base64.b64encode(pysecrets.token_bytes(32)).decode()
        (self.dir / "cred" / "encryption-config.json").write_text(yaml.safe_dump({
            "kind": "EncryptionConfiguration", "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": [
                {"aescbc": {"keys": [{"name": "aescbckey", "secret": secret}]}}, {"identity": {}}]}]}))

    def _write_pair(self, name: str, pair: pki.CertKey) -> None:
        (self.tls / f"{name}.crt").write_bytes(pair.cert_pem)
        (self.tls / f"{name}.key").write_bytes(pair.key_pem)
        (self.tls / f"{name}.key").chmod(0o600)

    def client_cert(self, cn: str, org: str) -> tuple[str, str]:
        """(cert file, key file) of a client certificate from the cluster's client CA."""
        path = self.tls / f"client-{cn.replace(':', '-')}"
        if not Path(f"{path}.crt").exists():
            self._write_pair(path.name, pki.issue_client_cert(self._ca("client-ca"), cn, [org] if org else []))
        return f"{path}.crt", f"{path}.key"

    def kubeconfig(self, cn: str, org: str) -> Path:
        """A kubeconfig for a client certificate, for a process in the namespace (127.0.0.1)."""
        crt, key = self.client_cert(cn, org)
        path = self.dir / "cred" / f"{cn.replace(':', '-')}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": f"https://127.0.0.1:{API_PORT}",
                                                     "certificate-authority": str(self.tls / "server-ca.crt")}}],
            "users": [{"name": "lab", "user": {"client-certificate": crt, "client-key": key}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
        return path

    def apiserver_args(self) -> list[str]:
        """k3s's kube-apiserver flags (pkg/daemons/control/server.go apiServer), with its files."""
        t = self.tls
        args = {
            "etcd-servers": "http://127.0.0.1:2379", "storage-backend": "etcd3",
            "cert-dir": str(t / "temporary-certs"), "allow-privileged": "true", "authorization-mode": "Node,RBAC",
            "service-account-signing-key-file": str(t / "service.key"), "service-account-key-file": str(t / "service.key"),
            "service-cluster-ip-range": self.config["service-cidr"], "service-node-port-range": "30000-32767",
            "advertise-address": self.ip, "secure-port": str(API_PORT), "bind-address": "0.0.0.0",
            "tls-cert-file": str(t / "serving-kube-apiserver.crt"), "tls-private-key-file": str(t / "serving-kube-apiserver.key"),
            "service-account-issuer": f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            "api-audiences": f"https://kubernetes.default.svc.{CLUSTER_DOMAIN},k3s",
            "requestheader-client-ca-file": str(t / "request-header-ca.crt"),
            "requestheader-allowed-names": "system:auth-proxy",
            "proxy-client-cert-file": str(t / "client-auth-proxy.crt"), "proxy-client-key-file": str(t / "client-auth-proxy.key"),
            "requestheader-extra-headers-prefix": "X-Remote-Extra-", "requestheader-group-headers": "X-Remote-Group",
            "requestheader-username-headers": "X-Remote-User", "client-ca-file": str(t / "client-ca.crt"),
            "enable-admission-plugins": "NodeRestriction", "anonymous-auth": "false", "profiling": "false",
            # k3s sets this unless its egress selector is off: an aggregated API (prometheus-adapter's
            # custom.metrics.k8s.io) is reached at its endpoints' addresses, not its Service's. k3s
            # dials them through its agent tunnel; the lab has no agent and dials them directly.
            "enable-aggregator-routing": "true",
        }
        if self.config.get("secrets-encryption"):
            args["encryption-provider-config"] = str(self.dir / "cred" / "encryption-config.json")
        return [f"--{k}={v}" for k, v in args.items()]

    def controller_manager_args(self) -> list[str]:
        """k3s's kube-controller-manager flags (server.go controllerManager), its cloud and node
        controllers left out: no node runs here."""
        kubeconfig = str(self.kubeconfig("system:kube-controller-manager", ""))
        args = {
            "kubeconfig": kubeconfig, "authentication-kubeconfig": kubeconfig, "authorization-kubeconfig": kubeconfig,
            "service-account-private-key-file": str(self.tls / "service.key"),
            "root-ca-file": str(self.tls / "server-ca.crt"), "use-service-account-credentials": "true",
            "allocate-node-cidrs": "true", "cluster-cidr": self.config["cluster-cidr"],
            "service-cluster-ip-range": self.config["service-cidr"],
            "bind-address": "127.0.0.1", "secure-port": "10257", "leader-elect": "false", "profiling": "false",
            "controllers": "*,tokencleaner,-service,-route,-cloud-node-lifecycle",
        }
        return [f"--{k}={v}" for k, v in args.items()]

    # ---- plumbing ----------------------------------------------------------------------

    def _network(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)  # a leftover from a killed run
        run = lambda *cmd: _run(*cmd)  # noqa: E731
        run("ip", "netns", "add", self.ns)
        run("ip", "-n", self.ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        run("ip", "addr", "add", f"{HOST_SIDE}/30", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        run("ip", "-n", self.ns, "addr", "add", f"{NS_SIDE}/30", "dev", "eth0")
        run("ip", "-n", self.ns, "addr", "add", f"{self.ip}/32", "dev", "eth0")
        run("ip", "-n", self.ns, "link", "set", "eth0", "up")
        run("ip", "route", "replace", f"{self.ip}/32", "via", NS_SIDE, "dev", self.veth)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Run `cmd` in the namespace, its output in <name>.log; stopped by kill(name) or stop()."""
        out = (self.dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.dir, start_new_session=True, env={**os.environ, **(env or {})})

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")


def _serving_cert(ca: pki.CertKey, cn: str, sans: list[str]) -> pki.CertKey:
    """A TLS server certificate from `ca`, as k3s issues serving-kube-apiserver.crt."""
    from cryptography.hazmat.primitives.asymmetric import ec

    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for san in dict.fromkeys(sans):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return pki.CertKey(cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
