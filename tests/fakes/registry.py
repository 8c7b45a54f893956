"""A fake upstream registry (stands in for Docker Hub) serving one tiny image, read-only.

It counts every manifest and blob request, so a test can prove the router's pull-through cache
served the second pull itself (the upstream's blob count stays put). Serves on 127.0.0.1.
  GET|HEAD /v2/                          200 (no auth, like a public mirror)
  GET|HEAD /v2/<name>/manifests/<ref>    tag or digest
  GET|HEAD /v2/<name>/blobs/<digest>
  GET      /_fake/state                  {"requests": [...], "blob_gets": N, "manifest_gets": N}

In-process: `with FakeUpstreamRegistry() as up: up.url, up.blob_gets`. As a process for the e2e
harness: `python tests/fakes/registry.py --port 5055` (image library/hello:latest).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    from ceil import oci
except ImportError:  # run as a script from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ceil import oci

ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class FakeUpstreamRegistry:
    def __init__(self, images: dict[str, oci.Artifact] | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        # "name:tag" -> a one-manifest image
        self.images = images or {"library/hello:latest": oci.tiny_image("hello through the cache\n")}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = _QuietServer((host, port), _handler_for(self))

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str, kind: str) -> int:
        with self.lock:
            return sum(1 for m, path in self.requests if m == method and f"/{kind}/" in path)

    @property
    def blob_gets(self) -> int:
        return self.count("GET", "blobs")

    @property
    def manifest_gets(self) -> int:
        return self.count("GET", "manifests")

    def wait_idle(self, quiet_seconds: float = 1.0, timeout: float = 30.0) -> None:
        """Return once no request came for `quiet_seconds`: a pull-through cache stores a new
        blob with a second upstream fetch in the background, after the client got it."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                now = len(self.requests)
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_seconds:
                return
            time.sleep(0.1)

    def lookup(self, name: str, kind: str, ref: str) -> tuple[bytes, str] | None:
        for key, image in self.images.items():
            manifest, blobs = image.manifest, image.blobs
            image_name, tag = key.rsplit(":", 1)
            if image_name != name:
                continue
            if kind == "manifests" and ref in (tag, oci.digest(manifest)):
                return manifest, image.media_type
            if kind == "blobs" and ref in blobs:
                return blobs[ref], "application/octet-stream"
        return None

    def start(self) -> FakeUpstreamRegistry:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstreamRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Clients closing idle keep-alive connections are normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeUpstreamRegistry):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/_fake/state":
                doc = {"requests": fake.requests, "blob_gets": fake.blob_gets,
                       "manifest_gets": fake.manifest_gets}
                return self._send(200, json.dumps(doc).encode(), "application/json")
            with fake.lock:
                fake.requests.append((self.command, path))
            if path in ("/v2", "/v2/"):
                return self._send(200, b"{}", "application/json")
            m = ROUTE.match(path)
            found = m and fake.lookup(m["name"], m["kind"], m["ref"])
            if not found:
                err = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown", "detail": path}]}
                return self._send(404, json.dumps(err).encode(), "application/json")
            body, ctype = found
            self._send(200, body, ctype, {"Docker-Content-Digest": oci.digest(body)})

        do_HEAD = do_GET

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeUpstreamRegistry(host=args.host, port=args.port)
    print(f"fake upstream registry on {fake.url} (image library/hello:latest)", flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
