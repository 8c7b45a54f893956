"""`bake.py flavors --check` against a local fake publisher (nothing leaves this machine)."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading

import pytest
from click.testing import CliRunner

from ceil.catalog import Flavor, available, load_flavor
from ceil.flavor_check import check_all

IMAGE = b"image bytes"
DIGEST = hashlib.sha256(IMAGE).hexdigest()


class Publisher:
    """Canonical's layout (`release`): a release folder listing point releases, SHA256SUMS next to
    them; or Raspberry Pi's (`raspios`): a dated folder per release, whose image carries another
    date, with its .sha256, .sig and .torrent beside it."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        publisher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                data = publisher.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self, *versions: str, sums_for: str | None = None):
        self.files = {"/release/": "".join(
            f'<a href="ubuntu-{v}-preinstalled-server-arm64+raspi.img.xz">x</a>' for v in versions).encode()}
        for v in versions:
            self.files[f"/release/ubuntu-{v}-preinstalled-server-arm64+raspi.img.xz"] = IMAGE
        listed = sums_for or versions[-1]
        self.files["/release/SHA256SUMS"] = f"{DIGEST} *ubuntu-{listed}-preinstalled-server-arm64+raspi.img.xz\n".encode()

    def raspios(self, releases: dict[str, tuple[str, bytes]]):
        """{folder date: (the image's own date, its bytes)}, listed as Raspberry Pi's server lists
        them (Apache index pages: sort links, a parent link, one row per file)."""
        index = '<a href="?C=N;O=D">Name</a> <a href="/">Parent Directory</a>'
        self.files = {"/images/": (index + "".join(
            f'<a href="raspios_lite_arm64-{d}/">raspios_lite_arm64-{d}/</a>' for d in releases)).encode()}
        for folder_date, (file_date, data) in releases.items():
            folder = f"/images/raspios_lite_arm64-{folder_date}/"
            name = f"{file_date}-raspios-trixie-arm64-lite.img.xz"
            self.files[folder + name] = data
            self.files[folder + name + ".sha256"] = f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
            self.files[folder + name + ".sig"] = b"-----BEGIN PGP SIGNATURE-----"
            self.files[folder + name + ".torrent"] = b"d8:announce"
            self.files[folder] = (index + "".join(f'<a href="{n}">{n}</a>' for n in (
                name, name + ".sha256", name + ".sig", name + ".torrent"))).encode()


@pytest.fixture
def publisher():
    p = Publisher()
    yield p
    p.server.shutdown()


def flavor(pub: Publisher, version: str, sha256: str | None = None) -> Flavor:
    data = load_flavor("ubuntu-24.04-raspi").model_dump()
    data.update(url=f"{pub.url}/release/ubuntu-{version}-preinstalled-server-arm64+raspi.img.xz",
                checksum_url=f"{pub.url}/release/SHA256SUMS", sha256=sha256, mirrors=[],
                updates={"index_url": f"{pub.url}/release/", "pattern": load_flavor("ubuntu-24.04-raspi").updates.pattern})
    return Flavor.model_validate(data)


def raspios_flavor(pub: Publisher, folder_date: str, file_date: str) -> Flavor:
    real = load_flavor("raspios-trixie")
    url = f"{pub.url}/images/raspios_lite_arm64-{folder_date}/{file_date}-raspios-trixie-arm64-lite.img.xz"
    return real.model_copy(update={"url": url, "checksum_url": url + ".sha256", "sha256": DIGEST, "mirrors": [],
                                   "updates": real.updates.model_copy(update={"index_url": f"{pub.url}/images/"})})


def test_a_current_flavor_passes(publisher):
    publisher.release("24.04.5")
    (finding,) = check_all([flavor(publisher, "24.04.5", DIGEST)])
    assert finding.ok and "current" in finding.message


def test_a_newer_point_release_is_reported_and_the_old_folder_gone_fails(publisher):
    publisher.release("24.04.5", "24.04.6")
    findings = check_all([flavor(publisher, "24.04.5")])
    assert [f.ok for f in findings] == [False, True]  # SHA256SUMS lists only the newest
    assert "lists no sha256" in findings[0].message and "24.04.6" in findings[1].message
    publisher.release("24.04.6")  # Canonical drops the old image: what broke the 24.04.3 pin
    findings = check_all([flavor(publisher, "24.04.5")])
    assert not findings[0].ok and "gone: HTTP 404" in findings[0].message


def test_a_newer_image_comes_with_the_one_line_change_that_adopts_it(publisher):
    """The url and, for a pinned flavor, the sha256 the publisher's checksum file gives the newer
    file; a pinned flavor whose file the checksum file no longer lists still bakes (the pin decides)."""
    publisher.release("24.04.5", "24.04.6")
    findings = check_all([flavor(publisher, "24.04.5", DIGEST)])
    assert all(f.ok for f in findings), findings
    newer = findings[-1].message
    assert f"url: {publisher.url}/release/ubuntu-24.04.6-preinstalled-server-arm64+raspi.img.xz" in newer
    assert f"sha256: {DIGEST}" in newer and "SHA256SUMS" in newer


def test_a_newer_raspios_is_adopted_by_the_file_its_folder_lists_not_by_the_folders_date(publisher):
    """Raspberry Pi's folder raspios_lite_arm64-2026-06-19 holds 2026-06-18-raspios-...: the adopt
    line names that file, and the digest its .sha256 gives (not the .sig or .torrent beside it)."""
    newer = b"newer image bytes"
    publisher.raspios({"2025-11-24": ("2025-11-24", IMAGE), "2026-06-19": ("2026-06-18", newer)})
    findings = check_all([raspios_flavor(publisher, "2025-11-24", "2025-11-24")])
    assert all(f.ok for f in findings) and len(findings) == 1, findings
    message = findings[0].message
    url = f"{publisher.url}/images/raspios_lite_arm64-2026-06-19/2026-06-18-raspios-trixie-arm64-lite.img.xz"
    assert "a newer image is listed: 2026-06-19 (this flavor pins 2025-11-24)" in message
    assert f"url: {url}, sha256: {hashlib.sha256(newer).hexdigest()} (sha256 as {url}.sha256 lists it" in message
    # a flavor whose own file is dated apart from its folder finds the newer one the same way
    publisher.raspios({"2025-11-25": ("2025-11-24", IMAGE), "2026-06-19": ("2026-06-18", newer)})
    (finding,) = check_all([raspios_flavor(publisher, "2025-11-25", "2025-11-24")])
    assert f"url: {url}, sha256: {hashlib.sha256(newer).hexdigest()}" in finding.message


def test_a_newer_folder_without_a_like_named_image_says_so_and_guesses_nothing(publisher):
    publisher.raspios({"2025-11-24": ("2025-11-24", IMAGE), "2026-06-19": ("2026-06-18", b"x")})
    forky = b'<a href="2026-06-18-raspios-forky-arm64-lite.img.xz">'  # a new release name: no guess
    publisher.files["/images/raspios_lite_arm64-2026-06-19/"] = forky
    (finding,) = check_all([raspios_flavor(publisher, "2025-11-24", "2025-11-24")])
    assert finding.ok and "pick its file by hand" in finding.message
    assert "raspios_lite_arm64-2026-06-19/ lists no file named like 2025-11-24-raspios-trixie" in finding.message
    assert "url:" not in finding.message


def test_a_pinned_image_gone_from_its_folder_but_on_a_mirror_still_bakes(publisher):
    publisher.release("24.04.6")
    publisher.files["/old/ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz"] = IMAGE
    pinned = flavor(publisher, "24.04.5", DIGEST)
    gone, old = f"{publisher.url}/gone/x.img.xz", f"{publisher.url}/old/ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz"
    findings = check_all([pinned.model_copy(update={"mirrors": [gone, old]})])
    assert all(f.ok for f in findings) and "still served at" in findings[0].message and "/old/" in findings[0].message
    assert not check_all([pinned.model_copy(update={"mirrors": [gone]})])[0].ok


def test_a_changed_digest_fails(publisher):
    publisher.release("24.04.5")
    (finding,) = check_all([flavor(publisher, "24.04.5", "0" * 64)])
    assert not finding.ok and "differs from the pinned" in finding.message


def test_the_cli_fails_on_a_problem_and_lists_only_user_flavors(publisher, monkeypatch):
    from ceil import cli

    listing = CliRunner().invoke(cli.cli, ["flavors"])
    assert listing.exit_code == 0 and "testbed" not in listing.output and "ubuntu-24.04-raspi" in listing.output
    assert "testbed-ubuntu" in CliRunner().invoke(cli.cli, ["flavors", "--all"]).output
    publisher.release("24.04.6")
    monkeypatch.setattr("ceil.catalog.available", lambda: ["stale"])
    monkeypatch.setattr("ceil.catalog.load_flavor", lambda name: flavor(publisher, "24.04.5"))
    result = CliRunner().invoke(cli.cli, ["flavors", "--check"])
    assert result.exit_code != 0 and "gone" in result.output


def test_every_user_flavor_with_a_download_says_where_to_look_for_updates():
    for name in available():
        f = load_flavor(name)
        if f.test_only or f.name.startswith("hypriot"):  # HypriotOS is finished: nothing new will come
            continue
        assert f.updates is not None and f.url and __import__("re").search(f.updates.pattern, f.url), name


@pytest.mark.parametrize("name", [n for n in available() if not n.startswith("testbed-")])
def test_every_flavor_a_user_can_bake_pins_its_image_and_finds_it_again(name):
    """Without a pin, a download is whatever the checksum file says that day (issue 17); and the
    update pattern must find the pinned file itself, or `flavors --check` could never say "newer"."""
    flavor = load_flavor(name)
    assert flavor.sha256 and re.fullmatch(r"[0-9a-f]{64}", flavor.sha256), f"{name}: no sha256 pin"
    if flavor.updates:
        assert re.search(flavor.updates.pattern, flavor.url), f"{name}: updates.pattern does not match its own url"
    for mirror in flavor.mirrors:  # the same file elsewhere, checked by the same pin
        assert mirror.rsplit("/", 1)[-1] == flavor.url.rsplit("/", 1)[-1], f"{name}: mirror {mirror} is another file"


def test_a_publisher_that_does_not_answer_is_not_checked_rather_than_called_broken(monkeypatch):
    """Offline, --check ended with "a flavor's image cannot be baked as it stands"."""
    from ceil import cli

    class Nobody:  # a publisher at a port nothing listens on
        url = "http://127.0.0.1:9/ubuntu/releases/24.04"

    dead = flavor(Nobody, "24.04.5")
    (finding,) = check_all([dead])
    assert finding.unchecked and "cannot ask the publisher" in finding.message
    monkeypatch.setattr("ceil.catalog.available", lambda: ["dead"])
    monkeypatch.setattr("ceil.catalog.load_flavor", lambda name: dead)
    result = CliRunner().invoke(cli.cli, ["flavors", "--check"])
    said = " ".join((result.output + str(result.exception)).split())
    assert result.exit_code != 0 and "not checked" in said and "cannot be baked" not in said, said


def test_a_publisher_that_answers_with_an_error_is_a_failure_not_unchecked(publisher):
    publisher.release("24.04.5", sums_for="24.04.4")  # the image is there; see what its folder answers
    gone = flavor(publisher, "24.04.5").model_copy(update={"checksum_url": f"{publisher.url}/release/NOPE"})
    findings = check_all([gone])
    assert any(not f.ok and not f.unchecked and "answered with an error" in f.message for f in findings), findings
