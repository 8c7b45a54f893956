"""Signed requests to the router's status board (nodes; standard library only).

The token (HMAC of the router's key and the node's name, made at bake time) never crosses the
LAN: each POST carries a one-time nonce from the board and an HMAC, keyed with the token, of the
method, path, nonce and the body's sha256. A LAN neighbour who records a request can neither
replay it (the nonce is spent) nor learn the token from it.
"""
import hashlib
import hmac
import json
import urllib.request
from urllib.parse import urlsplit


def signature(token, method, path, nonce, body):
    msg = f"{method} {path}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def post(url, token, body, timeout=10):
    """POST `body` (bytes, JSON) to `url` signed with `token`; the board's JSON answer.
    Raises urllib.error.HTTPError / URLError like urlopen."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    with urllib.request.urlopen(f"{base}/api/nonce", timeout=timeout) as resp:
        nonce = json.loads(resp.read())["nonce"]
    sig = signature(token, "POST", parts.path, nonce, body)
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"CEIL-HMAC nonce={nonce},sig={sig}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")
