"""The fake internet: local services on 127.0.0.1 that guests reach through QEMU guestfwd.

Nothing a test does leaves this machine. The router's uplink is QEMU user networking with
restrict=on, so a guest can reach only what is listed here: each fake listens on an ephemeral
port on 127.0.0.1, and `Internet.guestfwds()` maps a guest-visible address (in 10.0.2.0/24) to it.
guestfwd's `cmd:` form starts one `socat` per guest connection, so concurrent connections work
(the `tcp:` chardev form serves only one connection at a time).

Extend it by registering a service: anything with `.port` (its 127.0.0.1 port) and `.close()`:

    internet.add("cloudflare", "10.0.2.102", 80, HttpFake())   # then .route(...) on it

guestfwd carries TCP only. UDP services (a DNS upstream) cannot be faked this way; see
docs/testing.md for the options.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.registry import FakeUpstreamRegistry

# Guest-visible addresses of the built-in fakes. 10.0.2.2 (host) and .3 (slirp DNS) are taken.
APT_ADDR = ("10.0.2.100", 80)       # http://10.0.2.100/debian : the test bed's local apt repo
WEB_ADDR = ("10.0.2.101", 80)       # http://10.0.2.101/       : "some website on the internet"


class Service(Protocol):
    port: int

    def close(self) -> None: ...


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})


Handler = Callable[[Request], Response]


class HttpFake:
    """A threaded HTTP server on 127.0.0.1 with prefix routes: static directories or handlers.

    Every request is recorded in `.requests` (tests assert on them, e.g. "exactly one DNS update").
    """

    def __init__(self, name: str = "http", log: Path | None = None):
        self.name = name
        self.requests: list[Request] = []
        self._routes: list[tuple[str, str, Path | Handler]] = []  # (method or "*", prefix, target)
        self._lock = threading.Lock()
        self._log = open(log, "a", buffering=1) if log else None
        fake = self

        class _H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                if fake._log:
                    fake._log.write(f"{time.strftime('%H:%M:%S')} {fake.name} {self.address_string()} {fmt % args}\n")

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, dict(self.headers.items()), self.rfile.read(length), time.time())
                with fake._lock:
                    fake.requests.append(req)
                target = fake._match(self.command, self.path)
                if isinstance(target, tuple):
                    self._send_file(*target)
                    return
                resp = target(req) if target else Response(404, b"no such fake route\n")
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            def _send_file(self, path: Path, found: bool):
                if not found:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, self.wfile)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = _Server(("127.0.0.1", 0), _H)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fake-{name}", daemon=True)
        self._thread.start()

    def route(self, prefix: str, target: Path | Handler, method: str = "*") -> "HttpFake":
        """Serve `prefix` from a directory, or answer it with a handler(Request) -> Response."""
        self._routes.append((method, prefix, target))
        self._routes.sort(key=lambda r: len(r[1]), reverse=True)  # longest prefix wins
        return self

    def _match(self, method: str, path: str):
        path = urllib.parse.unquote(path.split("?", 1)[0])  # apt asks for pool/..._1.2%2bdeb13u1_...
        for m, prefix, target in self._routes:
            if (m in ("*", method)) and path.startswith(prefix):
                if callable(target):
                    return target
                rel = path[len(prefix):].lstrip("/")
                full = (target / rel).resolve()
                ok = full.is_file() and str(full).startswith(str(target.resolve()))
                return (full, ok)
        return None

    def requests_to(self, prefix: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix) and (method is None or r.method == method)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._log:
            self._log.close()


class Internet:
    """Registry of the fakes one test run exposes to its guests."""

    def __init__(self):
        self.services: dict[str, tuple[str, int, Service]] = {}

    def add(self, name: str, guest_ip: str, guest_port: int, service: Service) -> Service:
        for other, (ip, port, _) in self.services.items():
            if (ip, port) == (guest_ip, guest_port):
                raise ValueError(f"fake {name}: {guest_ip}:{guest_port} is taken by {other}")
        self.services[name] = (guest_ip, guest_port, service)
        return service

    def __getitem__(self, name: str) -> Service:
        return self.services[name][2]

    def guestfwds(self) -> list[str]:
        return [
            f"tcp:{ip}:{port}-cmd:socat STDIO TCP:127.0.0.1:{svc.port}"
            for ip, port, svc in self.services.values()
        ]

    def url(self, name: str, path: str = "/") -> str:
        ip, port, _ = self.services[name]
        return f"http://{ip}{'' if port == 80 else f':{port}'}{path}"

    def close(self) -> None:
        for _, _, svc in self.services.values():
            svc.close()
        self.services.clear()


WEB_BODY = b"hello from the fake internet\n"
# The one "internet" name the fake upstream DNS (l2dns) knows, and its address.
DNS_NAME = "www.example-internet.test"
DNS_ANSWER = "198.19.80.80"  # benchmark space (RFC 2544): the router's stop-dns-rebind drops TEST-NET answers


def standard_internet(repo: Path | None, log: Path | None = None, dists: Path | None = None) -> Internet:
    """The fakes every e2e run has: the local apt repo and a plain web server. `dists`: the
    repository's release files from elsewhere (e.g. signed later: testbed.repo.signed_at)."""
    net = Internet()
    apt = HttpFake("apt", log)
    if repo is not None:
        apt.route("/", repo)  # repo/debian/... -> http://10.0.2.100/debian/...
    if dists is not None:
        apt.route("/debian/dists/", dists)
    net.add("apt", *APT_ADDR, apt)
    web = HttpFake("web", log).route("/", lambda req: Response(200, WEB_BODY))
    net.add("web", *WEB_ADDR, web)
    return net


class _Adapter:
    """Gives a fake from tests/fakes (own HTTP server) the Service shape: .port and .close()."""

    def __init__(self, fake, stop):
        self.fake = fake
        self.port = fake.server.server_address[1]
        self._stop = stop

    def close(self) -> None:
        self._stop()


CLOUDFLARE_ADDR = ("10.0.2.102", 80)   # fake Cloudflare API v4 + "what is my IP"
REGISTRY_ADDR = ("10.0.2.103", 80)     # fake upstream registry (Docker Hub stand-in)
DDNS = {"token": "e2e-cloudflare-token", "zone": "example.com", "record": "home.example.com",
        "public_ip": "203.0.113.7"}


@dataclass
class ServiceFakes:
    """The other engineers' fakes (tests/fakes/*), wired into the run: registered on the
    Internet, and the cluster.yaml overrides that point the router at them."""

    cloudflare: object | None = None
    upstream_registry: object | None = None
    overrides: dict = field(default_factory=dict)
    hostfwds: list[str] = field(default_factory=list)
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        for c in self._closers:
            try:
                c()
            except Exception:
                pass


def wire_service_fakes(net: Internet) -> ServiceFakes:
    """Start the Cloudflare fake (DDNS updates land there) and the upstream registry that the
    router's pull-through mirror fetches from. Both are part of this repository: a failure to
    import or start one fails the run instead of quietly dropping the checks that need it."""
    out = ServiceFakes()
    cf = FakeCloudflare(token=DDNS["token"], zone=DDNS["zone"], public_ip=DDNS["public_ip"]).start()
    out.cloudflare = cf
    net.add("cloudflare", *CLOUDFLARE_ADDR, _Adapter(cf, lambda: None))
    out._closers.append(cf.stop)
    base = f"http://{CLOUDFLARE_ADDR[0]}"
    out.overrides["ddns"] = {
        "enabled": True, "api_token": DDNS["token"], "zone": DDNS["zone"], "record": DDNS["record"],
        "api_url": f"{base}/client/v4", "ip_url": f"{base}/ip", "interval_minutes": 1,
    }
    up = FakeUpstreamRegistry().start()
    out.upstream_registry = up
    net.add("upstream-registry", *REGISTRY_ADDR, _Adapter(up, lambda: None))
    out._closers.append(up.stop)
    out.overrides["registry"] = {"upstream": f"http://{REGISTRY_ADDR[0]}"}
    return out


# No k3s binary can be had here (docs/testing.md), so the router's k3s cache is filled with a
# stand-in release: upstream Kubernetes pieces built from their Go modules and the starter that runs
# them from ceil's config and secrets (testbed/kubenode.py, testbed/k3s_standin.py), packed into one
# self-extracting file named like the release's binary. The nodes fetch it from the router, verify
# its sha256 and run it under the k3s units ceil wrote, like the real binary.
# The cache the builds live in, as it was before any test pointed CEIL_CACHE at a folder of its
# own (tests/conftest.py does, for every test).
REAL_CACHE = os.environ.get("CEIL_CACHE") or str(Path.home() / ".cache" / "ceil")


@contextmanager
def real_cache():
    """CEIL_CACHE set to REAL_CACHE for the block (testbed's builds read it when called)."""
    before = os.environ.get("CEIL_CACHE")
    os.environ["CEIL_CACHE"] = REAL_CACHE
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CEIL_CACHE", None)
        else:
            os.environ["CEIL_CACHE"] = before


def k3s_release_stand_in(root: Path, version: str, arch: str) -> Path:
    """Write <root>/<version>/ the way the workstation's k3s cache holds a release: the binary
    named as the release asset, and the release's sha256sum file listing it. The build must
    exist (`make kubenode`, which `make test` runs): a missing one fails here, saying so."""
    import hashlib

    from ceil.k3s.release import ASSETS
    from testbed import kubenode

    names = ASSETS[arch]
    d = root / version
    d.mkdir(parents=True, exist_ok=True)
    with real_cache():
        binary = kubenode.bundle(arch, version, d / names["binary"])
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    (d / names["sums"]).write_text(f"{digest}  {names['binary']}\n")
    return root


def stand_in_sha256(root: Path, version: str, arch: str) -> str:
    """The digest k3s_release_stand_in wrote for `version`'s binary (its sums file's line)."""
    from ceil.k3s.release import ASSETS, parse_sums

    names = ASSETS[arch]
    digest = parse_sums((root / version / names["sums"]).read_text(), names["binary"])
    assert digest, f"{root / version} holds no sums line for {names['binary']}"
    return digest
