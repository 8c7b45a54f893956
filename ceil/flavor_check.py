"""`bake.py flavors --check`: is each flavor's image still where its file says, does the
publisher's checksum file still list it (with the pinned digest, where one is pinned), and has a
newer image appeared? Publishers move and drop images (Canonical keeps only the newest point
release in releases/24.04/release/: the 24.04.3 pin broke the default bake), so this asks them
before a user's bake does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

import requests

from .catalog import Flavor
from .errors import CeilError
from .fetch import TIMEOUT, filename_of, parse_checksum_file


@dataclass
class Finding:
    flavor: str
    ok: bool       # False: a bake with this flavor would fail (image gone, digest changed)
    message: str
    unchecked: bool = False  # the publisher did not answer: nothing was compared (not ok either)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def newest_listed(flavor: Flavor, session: requests.Session) -> tuple[str | None, str | None]:
    """(the flavor's own version, the newest the publisher lists), from `updates`."""
    if flavor.updates is None or flavor.url is None:
        return None, None
    pattern = re.compile(flavor.updates.pattern)
    own = pattern.search(flavor.url)
    r = session.get(flavor.updates.index_url, timeout=TIMEOUT)
    r.raise_for_status()
    listed = {m.group(1) for m in pattern.finditer(r.text)}
    return (own.group(1) if own else None), (max(listed, key=_version_key) if listed else None)


def _served(session: requests.Session, url: str) -> int:
    return session.head(url, timeout=TIMEOUT, allow_redirects=True).status_code


def check_flavor(flavor: Flavor, session: requests.Session) -> list[Finding]:
    name = flavor.name
    if flavor.url is None:
        return [Finding(name, True, "no download (a test bed, or --base-image only)")]
    out: list[Finding] = []
    try:
        status = _served(session, flavor.url)
        if status >= 400:
            mirror = next((m for m in flavor.mirrors if _served(session, m) < 400), None)
            if mirror:
                out.append(Finding(name, True, f"moved: HTTP {status} for {flavor.url}, still served at {mirror}"
                                               " (a mirror in the flavor file; the pinned sha256 decides)"))
            else:
                out.append(Finding(name, False, f"the image is gone: HTTP {status} for {flavor.url}"
                                                f"{' and every mirror' if flavor.mirrors else ''}"
                                                f" (update url in images/{name}.yaml)"))
        if flavor.checksum_url:
            r = session.get(flavor.checksum_url, timeout=TIMEOUT)
            r.raise_for_status()
            try:
                listed = parse_checksum_file(r.text, filename_of(flavor.url), flavor.checksum_url)
            except CeilError as e:
                # With a pin the checksum file is not asked at bake time: only the pin matters.
                out.append(Finding(name, bool(flavor.sha256),
                                   f"{e}; the pinned sha256 still decides" if flavor.sha256 else str(e)))
            else:
                if flavor.sha256 and listed != flavor.sha256:
                    out.append(Finding(name, False, f"the publisher's digest {listed} differs from the pinned"
                                                    f" {flavor.sha256}: the image changed; check before baking"))
        own, newest = newest_listed(flavor, session)
        if newest and own and _version_key(newest) > _version_key(own):
            out.append(Finding(name, True, f"a newer image is listed: {newest} (this flavor pins {own}); "
                                           + adopt(flavor, own, newest, session)))
    except requests.HTTPError as e:  # the publisher answered: with an error, which is a finding
        out.append(Finding(name, False, f"the publisher answered with an error: {e}"))
    except requests.RequestException as e:  # no answer (no internet here?): nothing was compared
        out.append(Finding(name, False, f"cannot ask the publisher: {e}", unchecked=True))
    return out or [Finding(name, True, "current: the image and its checksum are where the flavor says")]


def adopt(flavor: Flavor, own: str, newest: str, session: requests.Session) -> str:
    """The change to images/<flavor>.yaml that adopts `newest`: its url, as the newer folder's
    listing names the file, and, from the publisher's checksum file, its sha256. Never applied by
    ceil: a pin changes only by a person's edit."""
    folder = flavor.url.rsplit("/", 1)[0] + "/"
    try:
        url = _newer_file(flavor, folder, own, newest, session)
    except (requests.RequestException, CeilError) as e:
        return f"to adopt it, pick its file by hand: {e}"
    change = f"to adopt it, set in images/{flavor.name}.yaml: url: {url}"
    if not flavor.checksum_url:
        return change
    if flavor.checksum_url.startswith(flavor.url):  # Raspberry Pi: <image>.sha256 next to the image
        sums = url + flavor.checksum_url[len(flavor.url):]
    else:                                           # Canonical: one SHA256SUMS in the folder
        sums = flavor.checksum_url.replace(folder, url.rsplit("/", 1)[0] + "/")
    try:
        r = session.get(sums, timeout=TIMEOUT)
        r.raise_for_status()
        digest = parse_checksum_file(r.text, filename_of(url), sums)
    except (requests.RequestException, CeilError) as e:
        return f"{change} (its sha256: not read from {sums}: {e})"
    pin = f", sha256: {digest}" if flavor.sha256 else ""
    return f"{change}{pin} (sha256 as {sums} lists it; keep the old url among mirrors only while it is served)"


def _newer_file(flavor: Flavor, folder: str, own: str, newest: str, session: requests.Session) -> str:
    """The newer image's url, read from its folder's listing, never guessed: Raspberry Pi dates a
    release's folder and the image in it apart, by a day or more
    (raspios_lite_arm64-2023-02-22/2023-02-21-raspios-bullseye-arm64-lite.img.xz, its .sha256 next
    to it: jsiebens/rpi-cloud-init, packer/sources.pkr.hcl), and lists the .sha256, .sig and
    .torrent beside the image. The file is the one named like the flavor's own with any numbers;
    where the version is in the file name (Canonical), it is `newest`'s."""
    version = re.compile(flavor.updates.pattern).search(flavor.url)
    in_folder = version.end(1) < len(folder)
    new_folder = folder[:version.start(1)] + newest + folder[version.end(1):] if in_folder else folder
    name = filename_of(flavor.url)
    like = re.compile(r"\d+".join(re.escape(part) for part in re.split(r"\d+", name)))
    r = session.get(new_folder, timeout=TIMEOUT)
    r.raise_for_status()
    listed = {unquote(href.rsplit("/", 1)[-1]) for href in re.findall(r'href="([^"?#]+)"', r.text)}
    found = sorted((n for n in listed if like.fullmatch(n) and (in_folder or n == name.replace(own, newest))),
                   key=_version_key)
    if not found:
        raise CeilError(f"{new_folder} lists no file named like {name}")
    return new_folder + found[-1]


def check_all(flavors: list[Flavor], session: requests.Session | None = None) -> list[Finding]:
    session = session or requests.Session()
    return [f for flavor in flavors for f in check_flavor(flavor, session)]
