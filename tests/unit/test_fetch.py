"""Fetch against a local HTTP server on 127.0.0.1: resume, checksum mismatch, xz/zip/gz, cache."""

import hashlib
import http.server
import lzma
import os
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from ceil.catalog import Flavor, load_flavor
from ceil.errors import CeilError, ConfigError
from ceil.fetch import cache_root, download, parse_checksum_file, resolve_base

MiB = 1 << 20


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support; `fail_after` cuts the first transfer halfway."""

    fail_after: dict = {}
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = Path(self.directory) / self.path.lstrip("/")
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).fail_after.pop(self.path, None)
        self.wfile.write(body[:cut] if cut else body)
        if cut:
            self.connection.close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _Handler.requests = []
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def disk_bytes():
    # Mostly zeros, like a real image: decompression must leave holes.
    return os.urandom(MiB) + bytes(16 * MiB) + os.urandom(MiB)


def flavor(url, sha=None, checksum_url=None, compression="xz"):
    return Flavor.model_validate({
        "name": "t", "description": "t", "arch": "arm64", "url": url, "sha256": sha,
        "checksum_url": checksum_url, "compression": compression,
        "partitions": {"boot": {"index": 1, "label": "b"}, "root": {"index": 2, "label": "r"}},
        "seed": {"method": "fs_label"}, "network": "netplan-networkd",
    })


def test_download_resumes_after_interruption(server):
    root, url = server
    data = os.urandom(3 * MiB)
    (root / "img.raw").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    _Handler.fail_after["/img.raw"] = MiB
    with pytest.raises(CeilError, match="resume"):
        download(f"{url}/img.raw", digest)
    path = download(f"{url}/img.raw", digest)
    assert path.read_bytes() == data
    assert _Handler.requests[-1][1] == f"bytes={MiB}-"  # the second request resumed


def test_checksum_mismatch_deletes_and_names_both_digests(server):
    root, url = server
    (root / "img.raw").write_bytes(b"x" * 1000)
    wrong = "0" * 64
    with pytest.raises(CeilError) as e:
        download(f"{url}/img.raw", wrong)
    msg = str(e.value)
    assert f"{url}/img.raw" in msg and wrong in msg and hashlib.sha256(b"x" * 1000).hexdigest() in msg
    assert not list((cache_root() / "downloads").glob("*"))


def test_xz_via_checksum_file_is_cached_sparse(server):
    root, url = server
    raw = disk_bytes()
    (root / "disk.img.xz").write_bytes(lzma.compress(raw))
    digest = hashlib.sha256((root / "disk.img.xz").read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{'1' * 64} *other.img.xz\n{digest} *disk.img.xz\n")
    f = flavor(f"{url}/disk.img.xz", checksum_url=f"{url}/SHA256SUMS")
    base = resolve_base(f)
    assert base.sha256 == digest and base.path.read_bytes() == raw
    assert os.stat(base.path).st_blocks * 512 < 8 * MiB  # the zero run became a hole
    n = len(_Handler.requests)
    assert resolve_base(f).path == base.path
    assert [r for r, _ in _Handler.requests[n:]] == ["/SHA256SUMS"]  # second bake: no download


def test_zip_input_local(tmp_path):
    raw = disk_bytes()
    z = tmp_path / "hypriot.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("hypriotos.img", raw)
    base = resolve_base(flavor(None), z)
    assert base.path.read_bytes() == raw and base.path != z


def test_corrupt_xz_is_reported(tmp_path):
    bad = tmp_path / "bad.img.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(CeilError, match="not a valid xz"):
        resolve_base(flavor(None), bad)


def test_checksum_file_without_entry():
    with pytest.raises(CeilError, match="lists no sha256 for disk.img.xz"):
        parse_checksum_file(f"{'a' * 64}  other.img\n", "disk.img.xz", "SUMS")


def test_flavor_without_url_needs_base_image():
    with pytest.raises(CeilError, match="--base-image"):
        resolve_base(flavor(None))


def test_a_local_base_image_must_be_the_flavors_pinned_download(tmp_path):
    """Issue 18 #10: --base-image was hashed into the manifest but never checked against the pin."""
    import hashlib

    img = tmp_path / "base.img"
    img.write_bytes(b"\0" * 4096)
    other = tmp_path / "other.img"
    other.write_bytes(b"\1" * 4096)
    pin = hashlib.sha256(img.read_bytes()).hexdigest()
    pinned = flavor("https://example.invalid/base.img", sha=pin, compression="none")
    assert resolve_base(pinned, img).sha256 == pin
    with pytest.raises(CeilError) as e:
        resolve_base(pinned, other)
    assert "--base-image" in str(e.value) and pin in str(e.value) and "--any-base-image" in str(e.value)
    assert resolve_base(pinned, other, any_base=True).sha256 != pin
    assert resolve_base(flavor(None, compression="none"), other).sha256  # no pin: any file


def test_a_pinned_flavor_refuses_other_bytes_whatever_the_checksum_file_says(server):
    """Issue 17: a publisher's checksum file changes with what it serves; the pin does not. The
    served file's own digest in SHA256SUMS changes nothing, and the checksum file is not read."""
    root, url = server
    (root / "disk.img.xz").write_bytes(lzma.compress(disk_bytes()))
    served = hashlib.sha256((root / "disk.img.xz").read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{served} *disk.img.xz\n")
    pin = "2" * 64
    with pytest.raises(CeilError) as e:
        resolve_base(flavor(f"{url}/disk.img.xz", sha=pin, checksum_url=f"{url}/SHA256SUMS"))
    assert pin in str(e.value) and served in str(e.value)
    assert "/SHA256SUMS" not in [path for path, _ in _Handler.requests]
    assert not list((cache_root() / "images").glob(f"{served}*"))


def test_the_raspberry_pi_os_flavor_pins_its_image():
    from ceil.catalog import load_flavor

    raspios = load_flavor("raspios-trixie")
    assert raspios.sha256 == "483db18a48da399b5b7022ffae9a07bc6d99daab30e593aedac09b69ff422843"
    assert raspios.checksum_url == raspios.url + ".sha256"


def test_mirrors_are_tried_in_order_and_the_pin_decides(server):
    """The flavor's url gone (a publisher dropped the folder), a mirror serving other bytes, then
    one with the pinned bytes: the download comes from that one; the others are named if all fail."""
    root, url = server
    data = os.urandom(MiB)
    (root / "other.img").write_bytes(b"not the image")
    (root / "archive.img").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    places = [f"{url}/gone.img", f"{url}/other.img", f"{url}/archive.img"]
    assert download(places, digest).read_bytes() == data
    for p in cache_root().glob("downloads/*"):
        p.unlink()
    with pytest.raises(CeilError) as e:
        download(places[:2], digest)
    msg = str(e.value)
    assert "every place failed" in msg and f"{url}/gone.img failed" in msg and f"checksum mismatch for {url}/other.img" in msg


def test_mirrors_without_a_pin_are_refused(tmp_path):
    data = {"name": "m", "description": "m", "arch": "arm64", "url": "https://example.invalid/a.img.xz",
            "checksum_url": "https://example.invalid/SHA256SUMS", "mirrors": ["https://example.invalid/old/a.img.xz"],
            "partitions": {"boot": {"index": 1, "label": "b"}, "root": {"index": 2, "label": "r"}},
            "seed": {"method": "fs_label"}, "network": "netplan-networkd"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="mirrors but pins no sha256"):
        load_flavor("m", tmp_path)
