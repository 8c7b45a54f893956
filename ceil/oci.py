#!/usr/bin/env python3
"""Images and Helm charts in a registry, over the distribution HTTP API v2: ceil's one OCI client.

`bake.py app` pushes what the user's builder made (an OCI image layout: docker buildx, podman
and buildah all write one) and their packaged chart through it, so the router's CA and the push
account are handled in one place whatever builder made the image, and nothing is written into
the user's docker/podman/helm login state. Standard library only and one file, so the infra
checks can pipe it into `python3 -` on a node (nodes have no docker):

    python3 - push https://10.42.0.1:5002 ceil/hello v1 [image|index|chart] < oci.py   # a sample
    python3 - pull https://10.42.0.1:5001 ceil/hello sha256:...  < oci.py

HTTPS is verified against the CA file in $OCI_CA (else the system's); the file named by
$OCI_AUTH_FILE (one line, user:password) answers a registry's basic-auth challenge.
Everything read back is checked against its digest; a tag is only a name for one.
"""

from __future__ import annotations

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
from pathlib import Path

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# What `helm push` writes (helm.sh/docs/topics/registries): Chart.yaml as JSON, the .tgz as is.
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
# Kept for the callers that build Docker-typed images (the fake upstream serves one).
MANIFEST_TYPE = DOCKER_MANIFEST


class OciError(RuntimeError):
    pass


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Artifact:
    """A manifest (image, chart or index), its blobs by digest, and for an index its manifests.

    A blob is bytes or a Path to read it from (a layout's layers can be large)."""

    def __init__(self, manifest: bytes, media_type: str, blobs: dict | None = None, children: list | None = None):
        self.manifest = manifest
        self.media_type = media_type
        self.blobs = dict(blobs or {})
        self.children = list(children or [])

    @property
    def digest(self) -> str:
        return digest(self.manifest)

    @property
    def doc(self) -> dict:
        return json.loads(self.manifest)

    def all_blobs(self) -> dict:
        found = dict(self.blobs)
        for child in self.children:
            found.update(child.all_blobs())
        return found


def _descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "size": len(data), "digest": digest(data), **extra}


def _manifest(config_type: str, config: bytes, layer_type: str, layers: list, media_type: str = OCI_MANIFEST,
              annotations: dict | None = None) -> Artifact:
    doc = {"schemaVersion": 2, "mediaType": media_type, "config": _descriptor(config_type, config),
           "layers": [_descriptor(layer_type, layer) for layer in layers]}
    if annotations:
        doc["annotations"] = annotations
    blobs = {digest(config): config, **{digest(layer): layer for layer in layers}}
    return Artifact(json.dumps(doc, sort_keys=True).encode(), media_type, blobs)


def _tar(files: dict, executable: tuple = ()) -> bytes:
    """A reproducible tar of {path: bytes}: same files, same bytes, same digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name.lstrip("/"))
            run = name.endswith(".sh") or name in executable
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o755 if run else 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return raw.getvalue()


def scratch_image(files: dict, arch: str = "arm64", cmd: list | None = None, docker_types: bool = False,
                  executable: tuple = ()) -> Artifact:
    """A FROM-scratch image of one layer holding `files` ({path: bytes}) for linux/`arch`
    (`executable`: the names among them that get mode 0755, besides *.sh)."""
    tar = _tar(files, executable)
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Cmd": cmd or ["/" + sorted(files)[0].lstrip("/")]},
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
    }, sort_keys=True).encode()
    if docker_types:
        return _manifest(DOCKER_CONFIG, config, DOCKER_LAYER, [layer], DOCKER_MANIFEST)
    return _manifest(OCI_CONFIG, config, OCI_LAYER, [layer])


def tiny_image(text: str = "hello from ceil\n") -> Artifact:
    """A one-file image (Docker media types, as most registries' own tests use)."""
    return scratch_image({"hello.txt": text.encode()}, cmd=["/hello.txt"], docker_types=True)


def image_index(images: dict) -> Artifact:
    """A multi-arch index of {"linux/arm64": Artifact, ...}."""
    manifests = []
    for platform, image in sorted(images.items()):
        os_name, arch = platform.split("/", 1)
        manifests.append(_descriptor(image.media_type, image.manifest, platform={"os": os_name, "architecture": arch}))
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return Artifact(json.dumps(doc, sort_keys=True).encode(), OCI_INDEX,
                    children=[images[p] for p in sorted(images)])


def chart_artifact(chart_tgz: bytes, metadata: dict) -> Artifact:
    """A packaged Helm chart as `helm push` stores it; `metadata` is its Chart.yaml (parsed by
    the caller: this file has no YAML parser)."""
    for key in ("name", "version"):
        if not metadata.get(key):
            raise OciError(f"Chart.yaml has no {key}")
    config = json.dumps(metadata, sort_keys=True).encode()
    annotations = {"org.opencontainers.image.title": str(metadata["name"]),
                   "org.opencontainers.image.version": str(metadata["version"])}
    return _manifest(HELM_CONFIG, config, HELM_LAYER, [chart_tgz], annotations=annotations)


def tiny_chart(name: str = "ceil-hello", version: str = "0.1.0") -> Artifact:
    """A packaged Helm chart of one ConfigMap, as `helm package` lays it out (NAME/Chart.yaml)."""
    chart_yaml = "apiVersion: v2\nname: {}\nversion: {}\n".format(name, version).encode()
    template = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
    tgz = gzip.compress(_tar({name + "/Chart.yaml": chart_yaml, name + "/templates/cm.yaml": template}), mtime=0)
    return chart_artifact(tgz, {"apiVersion": "v2", "name": name, "version": version})


def tiny_index() -> Artifact:
    """A FROM-scratch image for the Pis and for amd64 under one tag, as `bake.py app build` pushes."""
    return image_index({"linux/" + arch: scratch_image({"hello.txt": ("hello from " + arch + "\n").encode()}, arch=arch)
                        for arch in ("arm64", "amd64")})


# ---- OCI image layouts (what builders write) ------------------------------------------------


def read_layout(root: Path) -> Artifact:
    """The artifact an OCI image layout directory holds (its index.json's one manifest, or an
    index over several). Blobs stay on disk; each is checked against its digest when pushed."""
    root = Path(root)
    try:
        layout = json.loads((root / "oci-layout").read_text())
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise OciError(f"{root} is not an OCI image layout ({e}); build with an OCI output, e.g."
                       " docker buildx build --output type=oci,dest=app.tar") from None
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise OciError(f"{root}/oci-layout: imageLayoutVersion {layout.get('imageLayoutVersion')!r}, expected 1.0.0")
    entries = index.get("manifests") or []
    if len(entries) == 1:
        return _from_layout(root, entries[0])
    if not entries:
        raise OciError(f"{root}/index.json lists no image")
    images = {}
    for entry in entries:
        platform = entry.get("platform") or {}
        key = f"{platform.get('os', 'linux')}/{platform.get('architecture', 'unknown')}"
        images[key] = _from_layout(root, entry)
    return image_index(images)


def _blob_path(root: Path, dgst: str) -> Path:
    algo, _, hexa = dgst.partition(":")
    if algo != "sha256" or len(hexa) != 64 or not all(c in "0123456789abcdef" for c in hexa):
        raise OciError(f"unsupported digest {dgst!r} in {root}")
    path = root / "blobs" / "sha256" / hexa
    if not path.is_file():
        raise OciError(f"{root}: blob {dgst} is missing")
    return path


def _from_layout(root: Path, entry: dict) -> Artifact:
    data = _blob_path(root, entry["digest"]).read_bytes()
    if digest(data) != entry["digest"]:
        raise OciError(f"{root}: manifest {entry['digest']} does not match its digest")
    media_type = entry.get("mediaType") or json.loads(data).get("mediaType") or OCI_MANIFEST
    doc = json.loads(data)
    if media_type in INDEX_TYPES:
        return Artifact(data, media_type, children=[_from_layout(root, m) for m in doc["manifests"]])
    wanted = [doc["config"]] + list(doc.get("layers", []))
    return Artifact(data, media_type, {d["digest"]: _blob_path(root, d["digest"]) for d in wanted})


def open_layout(path: Path, workdir: Path) -> Artifact:
    """A layout directory, or a tar of one (buildx's type=oci, podman's oci-archive:), unpacked
    into `workdir` (members that would land outside it are refused)."""
    path = Path(path)
    if path.is_dir():
        return read_layout(path)
    workdir = Path(workdir).resolve()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                target = (workdir / member.name).resolve()
                if workdir not in target.parents and target != workdir:
                    raise OciError(f"{path}: member {member.name!r} would land outside the layout")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():  # links and devices have no place in a layout
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, target.open("wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
    except (OSError, tarfile.TarError) as e:
        raise OciError(f"cannot read {path} as an OCI archive: {e}") from None
    return read_layout(workdir)


# ---- the registry --------------------------------------------------------------------------


def _auth_from_env():
    if os.environ.get("OCI_AUTH_FILE"):
        with open(os.environ["OCI_AUTH_FILE"]) as f:
            return tuple(f.read().strip().split(":", 1))
    return None


def _request(method, url, data=None, headers=None, timeout=60, auth=None, ca=None):
    """(status, headers, body); `auth` (user, password) and `ca` default to $OCI_AUTH_FILE / $OCI_CA.
    `data` may be bytes or a Path (sent from the file)."""
    headers = dict(headers or {})
    auth = auth or _auth_from_env()
    if auth:
        token = base64.b64encode("{}:{}".format(*auth).encode()).decode()
        headers["Authorization"] = "Basic " + token
    ca = ca or os.environ.get("OCI_CA")
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    body = data
    if isinstance(data, Path):
        headers["Content-Length"] = str(data.stat().st_size)
        body = data.open("rb")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    finally:
        if isinstance(data, Path):
            body.close()


def _expect(status, wanted, what, body=b""):
    if status not in wanted:
        hint = {401: " (the registry wants a login: wrong or missing account)",
                403: " (this account may not do that)",
                405: " (the registry does not allow this here, e.g. pushing to a read-only port)"}.get(status, "")
        raise OciError("{}: HTTP {}{} {}".format(what, status, hint, body[:300].decode("utf-8", "replace")).rstrip())


def _file_digest(path: Path) -> str:
    # Not ceil.fetch.sha256_file: this file also runs alone on guests (`python3 - < oci.py`).
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class Registry:
    """One registry endpoint (base URL such as https://ceil-router.lan:5002), with its account and CA."""

    def __init__(self, base: str, auth=None, ca=None, progress=None):
        self.base = base.rstrip("/")
        self.auth, self.ca = auth, ca
        self.progress = progress or (lambda what, size: None)

    def _call(self, method, path, data=None, headers=None):
        return _request(method, self.base + path, data, headers, auth=self.auth, ca=self.ca)

    def push(self, name: str, ref: str, artifact: Artifact) -> dict:
        """Blobs, then each manifest of an index, then the top manifest under `ref`. Blobs read
        from disk are checked against their digests first, so a changed file sends nothing."""
        blobs = artifact.all_blobs()
        for dgst, blob in blobs.items():
            have = _file_digest(blob) if isinstance(blob, Path) else dgst
            if have != dgst:
                raise OciError("blob {} changed on disk (now {}): build again".format(dgst, have))
        sent = sum(self._push_blob(name, dgst, blob) for dgst, blob in blobs.items())
        for child in artifact.children:
            self._put_manifest(name, child.digest, child)
        self._put_manifest(name, ref, artifact)
        return {"pushed": "{}:{}".format(name, ref), "digest": artifact.digest, "blobs": len(blobs), "uploaded": sent}

    def _push_blob(self, name, dgst, blob) -> int:
        status, _, _ = self._call("HEAD", "/v2/{}/blobs/{}".format(name, dgst))
        if status == 200:
            return 0
        status, headers, body = self._call("POST", "/v2/{}/blobs/uploads/".format(name), b"")
        _expect(status, (202,), "start upload to " + name, body)
        location = headers.get("Location") or headers.get("location")
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        size = blob.stat().st_size if isinstance(blob, Path) else len(blob)
        status, _, body = _request("PUT", "{}{}digest={}".format(location, sep, dgst), blob,
                                   {"Content-Type": "application/octet-stream"}, auth=self.auth, ca=self.ca)
        _expect(status, (201,), "upload " + dgst, body)
        self.progress(dgst, size)
        return size

    def _put_manifest(self, name, ref, artifact):
        status, headers, body = self._call("PUT", "/v2/{}/manifests/{}".format(name, ref), artifact.manifest,
                                           {"Content-Type": artifact.media_type})
        _expect(status, (201,), "put manifest {}:{}".format(name, ref), body)
        said = headers.get("Docker-Content-Digest") or headers.get("docker-content-digest")
        if said and said != artifact.digest:
            raise OciError("registry stored {}:{} as {}, expected {}".format(name, ref, said, artifact.digest))

    def manifest(self, name: str, ref: str) -> Artifact:
        status, headers, data = self._call("GET", "/v2/{}/manifests/{}".format(name, ref), headers={"Accept": ACCEPT})
        _expect(status, (200,), "get manifest {}:{}".format(name, ref), data)
        if ref.startswith("sha256:") and digest(data) != ref:
            raise OciError("manifest {}@{} came back with digest {}".format(name, ref, digest(data)))
        media_type = json.loads(data).get("mediaType") or headers.get("Content-Type", "").split(";")[0]
        return Artifact(data, media_type)

    def blob(self, name: str, dgst: str) -> bytes:
        status, _, data = self._call("GET", "/v2/{}/blobs/{}".format(name, dgst))
        _expect(status, (200,), "get blob " + dgst, data)
        if digest(data) != dgst:
            raise OciError("blob {} came back with digest {}".format(dgst, digest(data)))
        return data

    def pull(self, name: str, ref: str) -> Artifact:
        """The manifest (and for an index every manifest) and every blob, each digest checked."""
        top = self.manifest(name, ref)
        if top.media_type in INDEX_TYPES:
            top.children = [self.pull(name, m["digest"]) for m in top.doc["manifests"]]
            return top
        doc = top.doc
        for d in [doc["config"]] + list(doc.get("layers", [])):
            top.blobs[d["digest"]] = self.blob(name, d["digest"])
        return top


def push(base, name, tag, image=None, auth=None, ca=None):
    return Registry(base, auth, ca).push(name, tag, image or tiny_image())


def pull(base, name, ref, auth=None, ca=None):
    artifact = Registry(base, auth, ca).pull(name, ref)
    return {"pulled": "{}:{}".format(name, ref), "digest": artifact.digest, "blobs": len(artifact.all_blobs())}


SAMPLES = {"image": tiny_image, "index": tiny_index, "chart": tiny_chart}


def main(argv):
    if len(argv) not in (4, 5) or argv[0] not in ("push", "pull") or (argv[4:] and argv[4] not in SAMPLES):
        print("usage: oci.py push BASE_URL NAME TAG [image|index|chart]  (a sample artifact, default image)\n"
              "       oci.py pull BASE_URL NAME TAG|DIGEST", file=sys.stderr)
        return 2
    verb, base, name, ref = argv[:4]
    try:
        if verb == "push":
            result = push(base, name, ref, SAMPLES[argv[4] if argv[4:] else "image"]())
        else:
            result = pull(base, name, ref)
    except (OciError, OSError) as e:
        print("oci.py: {}".format(e), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
