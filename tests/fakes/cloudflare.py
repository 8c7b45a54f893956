"""A fake Cloudflare API v4 (the parts ceil-ddns uses) plus a "what is my IP" endpoint.

Serves on 127.0.0.1 only. Routes, under /client/v4 like the real API:
  GET   /zones?name=Z                          GET  /zones/{id}/dns_records?type=A&name=N
  POST  /zones/{id}/dns_records                PATCH|PUT /zones/{id}/dns_records/{rid}
  GET   /ip                                    the public address it is told to report
  GET   /_fake/state                           requests seen, records, writes (for tests)
  POST  /_fake/config {"public_ip": ..., "fail_next": N}   inject 503s, change the address

In-process: `with FakeCloudflare(token=..., zone=...) as cf: cf.api_url, cf.ip_url, cf.writes`.
As a process (for the e2e harness): `python tests/fakes/cloudflare.py --port 8053 --token T
--zone example.com --ip 203.0.113.7 [--record home.example.com=198.51.100.1]`.
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API_PREFIX = "/client/v4"


class FakeCloudflare:
    def __init__(self, token: str = "test-token", zone: str = "example.com",
                 public_ip: str = "203.0.113.7", records: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.token, self.zone, self.public_ip = token, zone, public_ip
        self.zone_id = uuid.uuid4().hex
        self.records: dict[str, dict] = {}
        for name, content in (records or {}).items():
            self._add_record(name, content)
        self.requests: list[dict] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.thread: threading.Thread | None = None

    # ---- addresses ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def ip_url(self) -> str:
        return self.base_url + "/ip"

    # ---- what tests look at ------------------------------------------------------------
    @property
    def writes(self) -> list[dict]:
        """Requests that changed a record (POST/PATCH/PUT) and succeeded."""
        return [r for r in self.requests if r["method"] in ("POST", "PATCH", "PUT") and r["status"] == 200]

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": list(self.requests), "records": list(self.records.values()),
                    "writes": self.writes, "public_ip": self.public_ip}

    def export_state(self) -> dict:
        """Everything a later run needs to carry on from here (JSON): see import_state."""
        with self.lock:
            return {"zone_id": self.zone_id, "public_ip": self.public_ip,
                    "records": list(self.records.values()), "requests": list(self.requests)}

    def import_state(self, state: dict) -> None:
        """Carry on from an exported state, as if this fake had served those requests itself
        (the e2e first-boot cache restores the machines that made them)."""
        with self.lock:
            self.zone_id, self.public_ip = state["zone_id"], state["public_ip"]
            self.records = {r["id"]: dict(r) for r in state["records"]}
            self.requests = list(state["requests"])

    def _add_record(self, name: str, content: str) -> dict:
        rec = {"id": uuid.uuid4().hex, "type": "A", "name": name, "content": content,
               "ttl": 1, "proxied": False, "zone_id": self.zone_id, "zone_name": self.zone}
        self.records[rec["id"]] = rec
        return rec

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeCloudflare:
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeCloudflare:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the API -----------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, auth: str, body: dict | None) -> tuple[int, object]:
        if path == "/ip":
            return 200, self.public_ip
        if not path.startswith(API_PREFIX + "/"):
            return 404, _envelope(None, [{"code": 7000, "message": "No route for that URI"}])
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, _envelope(None, [{"code": 10000, "message": "injected: service unavailable"}])
        if auth != f"Bearer {self.token}":
            return 403, _envelope(None, [{"code": 10000, "message": "Authentication error"}])
        parts = path[len(API_PREFIX) + 1:].split("/")
        return self._route(method, parts, query, body)

    def _route(self, method: str, parts: list[str], query: dict, body: dict | None) -> tuple[int, object]:
        if parts == ["zones"] and method == "GET":
            found = [{"id": self.zone_id, "name": self.zone}] if query.get("name") == self.zone else []
            return 200, _envelope(found)
        if len(parts) < 3 or parts[0] != "zones" or parts[1] != self.zone_id or parts[2] != "dns_records":
            return 404, _envelope(None, [{"code": 7003, "message": "Could not route to that zone"}])
        if len(parts) == 3 and method == "GET":
            found = [r for r in self.records.values()
                     if r["type"] == query.get("type", r["type"]) and r["name"] == query.get("name", r["name"])]
            return 200, _envelope(found)
        if len(parts) == 3 and method == "POST":
            return 200, _envelope(self._add_record(body["name"], body["content"]))
        if len(parts) == 4 and method in ("PATCH", "PUT") and parts[3] in self.records:
            rec = self.records[parts[3]]
            rec.update({k: v for k, v in (body or {}).items() if k in ("type", "name", "content", "ttl", "proxied")})
            return 200, _envelope(rec)
        return 404, _envelope(None, [{"code": 81044, "message": "Record does not exist"}])

    def admin(self, method: str, path: str, body: dict | None) -> tuple[int, object]:
        if path == "/_fake/state":
            return 200, self.snapshot()
        if path == "/_fake/config" and method == "POST":
            self.public_ip = (body or {}).get("public_ip", self.public_ip)
            self.fail_next = int((body or {}).get("fail_next", self.fail_next))
            return 200, {"ok": True}
        return 404, {"error": "unknown fake admin route"}


def _envelope(result, errors=None) -> dict:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result}


def _handler_for(fake: FakeCloudflare):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _serve(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            if url.path.startswith("/_fake/"):
                status, doc = fake.admin(self.command, url.path, body)
            else:
                with fake.lock:
                    status, doc = fake.handle(self.command, url.path, query,
                                              self.headers.get("Authorization", ""), body)
                    fake.requests.append({"method": self.command, "path": url.path, "query": query,
                                          "body": body, "status": status})
            data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(doc, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--zone", default="example.com")
    parser.add_argument("--ip", default="203.0.113.7", help="address the /ip endpoint reports")
    parser.add_argument("--record", action="append", default=[], metavar="NAME=IP",
                        help="an A record that exists at start")
    args = parser.parse_args()
    records = dict(r.split("=", 1) for r in args.record)
    fake = FakeCloudflare(args.token, args.zone, args.ip, records, args.host, args.port)
    print(f"fake cloudflare on {fake.base_url} (api {fake.api_url}, ip {fake.ip_url})", flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
