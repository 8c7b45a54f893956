"""A Git repository served over HTTPS with a login, as GitHub or Gitea serve one, for Flux's
source-controller in the fast layer (test_gitops_flux.py).

Git's own smart-HTTP server (`git http-backend`, a CGI program) answers the clone; this module
only speaks HTTPS and checks HTTP basic authentication in front of it, so a wrong user name or
token is a 401 exactly where a forge refuses one. Nothing here reads what ceil rendered: the
repository holds what the test commits, and the login is what the test set.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ceil.k3s import pki

GIT_ENV = {"GIT_AUTHOR_NAME": "ceil test", "GIT_AUTHOR_EMAIL": "test@ceil.invalid",
           "GIT_COMMITTER_NAME": "ceil test", "GIT_COMMITTER_EMAIL": "test@ceil.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


class GitServer:
    """`root`/<name>.git served at https://<host>:<port>/<name>.git to user `username` with `password`."""

    def __init__(self, root: Path, host: str, username: str, password: str):
        self.root, self.host = root, host
        self.username, self.password = username, password
        self.requests: list[tuple[str, int]] = []  # (path, status) as answered
        self.ca_file = root / "ca.crt"
        self._server: ThreadingHTTPServer | None = None

    # ---- the repository --------------------------------------------------------------------

    def create(self, name: str, branch: str = "main") -> Path:
        """An empty bare repository and a working copy beside it; returns the working copy."""
        bare, work = self.root / f"{name}.git", self.root / f"{name}-work"
        git(self.root, "init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        git(self.root, "init", "--quiet", f"--initial-branch={branch}", str(work))
        git(work, "remote", "add", "origin", str(bare))
        return work

    def commit(self, work: Path, files: dict[str, str | None], message: str) -> str:
        """Write (or with None delete) `files` in the working copy, commit, push; the new commit's sha."""
        for rel, text in files.items():
            path = work / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", message)
        branch = git(work, "rev-parse", "--abbrev-ref", "HEAD").strip()
        git(work, "push", "--quiet", "origin", branch)
        return git(work, "rev-parse", "HEAD").strip()

    # ---- serving ---------------------------------------------------------------------------

    def start(self) -> str:
        """Serve; returns the base URL."""
        cert, key = self.root / "server.crt", self.root / "server.key"
        ca_pem, cert_pem, key_pem = _certificates(self.host)
        self.ca_file.write_bytes(ca_pem)
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer((self.host, 0), _handler(self))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"https://{self.host}:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def authorised(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _handler(server: GitServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the test reads server.requests instead
            pass

        def do_GET(self):
            self._serve()

        def do_POST(self):
            self._serve()

        def _serve(self):
            path, _, query = self.path.partition("?")
            if not server.authorised(self.headers.get("Authorization")):
                server.requests.append((path, 401))
                self._answer(401, {"WWW-Authenticate": 'Basic realm="git"', "Content-Type": "text/plain"},
                             b"login required\n")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {**os.environ, "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                   "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                   "REMOTE_USER": server.username, "REMOTE_ADDR": self.client_address[0],
                   "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                   "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
            done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            headers, status = {}, 200
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers[name] = value.strip()
            server.requests.append((path, status))
            self._answer(status, headers, payload)

        def _answer(self, status: int, headers: dict[str, str], payload: bytes):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _certificates(host: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate for `host`, server key), PEM, made for this run."""
    ca = pki.make_ca("ceil test forge CA")
    server = pki.issue_server_cert(ca, host, [], [host])
    return ca.cert_pem, server.cert_pem, server.key_pem
