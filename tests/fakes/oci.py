#!/usr/bin/env python3
"""A tiny container image made by hand, pushed and pulled with the registry HTTP API v2.

Standard library only, so the infra checks can pipe this file into `python3 -` on a node (nodes
have no docker): `python3 - push https://10.42.0.1:5002 ceil/hello v1 < oci.py` prints JSON.
Also used in-process by the unit tests and by tests/fakes/registry.py to seed its upstream.
HTTPS is verified against the CA file in $OCI_CA (else the system's); the file named by
$OCI_AUTH_FILE (one line, user:password) answers a registry's basic-auth challenge.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import ssl
import sys
import tarfile
import urllib.error
import urllib.request

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join([MANIFEST_TYPE, "application/vnd.oci.image.manifest.v1+json"])


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(text="hello from ceil\n"):
    """(manifest bytes, {digest: blob}) of a one-file image; same text -> same digests."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(text.encode()), 0, 0o644
        tar.addfile(info, io.BytesIO(text.encode()))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "arm64", "os": "linux", "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(raw.getvalue())]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": digest(config)},
        "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": digest(layer)}],
    }, sort_keys=True).encode()
    return manifest, {digest(config): config, digest(layer): layer}


def _request(method, url, data=None, headers=None, timeout=30, auth=None, ca=None):
    """(status, headers, body); `auth` (user, password) and `ca` default to $OCI_AUTH_FILE / $OCI_CA."""
    headers = dict(headers or {})
    if auth is None and os.environ.get("OCI_AUTH_FILE"):
        with open(os.environ["OCI_AUTH_FILE"]) as f:
            auth = tuple(f.read().strip().split(":", 1))
    if auth:
        token = base64.b64encode("{}:{}".format(*auth).encode()).decode()
        headers["Authorization"] = "Basic " + token
    ca = ca or os.environ.get("OCI_CA")
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _expect(status, wanted, what, body=b""):
    if status not in wanted:
        raise RuntimeError("{}: HTTP {} {}".format(what, status, body[:300].decode("utf-8", "replace")))


def push(base, name, tag, image=None, auth=None, ca=None):
    manifest, blobs = image or tiny_image()
    for dgst, blob in blobs.items():
        status, _, _ = _request("HEAD", "{}/v2/{}/blobs/{}".format(base, name, dgst), auth=auth, ca=ca)
        if status == 200:
            continue
        status, headers, body = _request("POST", "{}/v2/{}/blobs/uploads/".format(base, name), b"", auth=auth, ca=ca)
        _expect(status, (202,), "start upload", body)
        location = headers.get("Location") or headers.get("location")
        if location.startswith("/"):
            location = base + location
        sep = "&" if "?" in location else "?"
        status, _, body = _request("PUT", "{}{}digest={}".format(location, sep, dgst), blob,
                                   {"Content-Type": "application/octet-stream"}, auth=auth, ca=ca)
        _expect(status, (201,), "upload " + dgst, body)
    status, _, body = _request("PUT", "{}/v2/{}/manifests/{}".format(base, name, tag), manifest,
                               {"Content-Type": MANIFEST_TYPE}, auth=auth, ca=ca)
    _expect(status, (201,), "put manifest", body)
    return {"pushed": "{}:{}".format(name, tag), "digest": digest(manifest), "blobs": len(blobs)}


def pull(base, name, ref, auth=None, ca=None):
    """Fetch the manifest and every blob, checking each digest; returns what was read."""
    status, _, manifest = _request("GET", "{}/v2/{}/manifests/{}".format(base, name, ref),
                                   headers={"Accept": ACCEPT}, auth=auth, ca=ca)
    _expect(status, (200,), "get manifest", manifest)
    doc = json.loads(manifest)
    wanted = [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]
    for dgst in wanted:
        status, _, blob = _request("GET", "{}/v2/{}/blobs/{}".format(base, name, dgst), auth=auth, ca=ca)
        _expect(status, (200,), "get blob " + dgst, blob)
        if digest(blob) != dgst:
            raise RuntimeError("blob {} came back with digest {}".format(dgst, digest(blob)))
    return {"pulled": "{}:{}".format(name, ref), "digest": digest(manifest), "blobs": len(wanted)}


def main(argv):
    if len(argv) != 4 or argv[0] not in ("push", "pull"):
        print("usage: oci.py push|pull BASE_URL NAME TAG", file=sys.stderr)
        return 2
    verb, base, name, tag = argv
    result = push(base.rstrip("/"), name, tag) if verb == "push" else pull(base.rstrip("/"), name, tag)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
