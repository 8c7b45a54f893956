"""Who may talk to PiWatch: an ASGI middleware in front of every route.

PiWatch listens on the router's LAN address, where every device of the LAN (and any web page a
LAN user opens) can reach it. Three rules keep a web page on another site from driving the
lights or silencing an alarm through the user's browser:

- the Host header must name PiWatch (its address, the router's names, localhost): a page that
  rebinds its own DNS name to the router's address sends its own name, and is refused (400);
- a request that changes something (any method but GET/HEAD/OPTIONS) must carry
  `Content-Type: application/json`: a browser sends that cross-site only after a CORS preflight,
  which PiWatch never grants (415 otherwise);
- and if it says where it comes from (Origin, Sec-Fetch-Site), that must be PiWatch itself (403).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def host_name(host_header: str) -> str:
    """'10.42.0.1:8080' -> '10.42.0.1', '[::1]:8080' -> '::1', 'Router.lan' -> 'router.lan'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    def __init__(self, app, allowed_hosts: Iterable[str]):
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host) not in self.allowed:
            return await _refuse(send, 400, f"Host {host!r} is not an address of PiWatch (allowed: "
                                            f"{', '.join(sorted(self.allowed))})")
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return await _refuse(send, 403, f"cross-origin request from {origin!r} refused")
            if headers.get("sec-fetch-site") == "cross-site":
                return await _refuse(send, 403, "cross-site request refused")
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                return await _refuse(send, 415, "send JSON: Content-Type: application/json"
                                                f" (got {ctype or 'none'})")
        return await self.app(scope, receive, send)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
