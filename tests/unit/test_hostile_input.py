"""Hostile input (issue 18): every string a user can put in cluster.yaml, through every renderer.

A property test, bounded and derandomized so it is the same in every run: for each string field
of the schema, values made of the characters that break formats (quotes, backslashes, newlines,
`#`, `$`, braces, control and non-ASCII characters) are either refused (naming the key and,
for secrets, never the value) or, if accepted, rendered into the router's and a node's files,
each of which must still parse with its real parser (libyaml and PyYAML for YAML, json for JSON,
`sh -n` or `bash -n` for shell (by the script's own interpreter), `dnsmasq --test` and `nft -c` for the router's DHCP/DNS config and ruleset,
systemd's own syntax for env files); and a value that was accepted comes back out of the YAML it
went into unchanged. Where dnsmasq or nft is not installed, a field's test runs every other check
and then skips, naming the tool.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ceil import wireguard
from ceil.catalog import load_flavor
from ceil.config import ConfigError, parse_cluster
from ceil.features import RoleContext, render_features
from ceil.payload import render_seed
from ceil.secrets import SecretStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly test@ceil"

# Every feature on, so each field reaches every file it can reach.
BASE = {
    "name": "ceil", "domain": "ceil.internal", "flavor": "ubuntu-24.04-raspi", "timezone": "Etc/UTC",
    "ssh": {"user": "ceil", "authorized_keys": [KEY]},
    "apt_mirror": {"url": "http://deb.example.org/debian", "suite": "trixie", "components": ["main"]},
    "router": {"uplink": {"type": "wifi", "wifi": {"ssid": "Home", "psk": "correct-horse-battery", "country": "DE"}}},
    "nodes": [{"name": "one", "role": "server"}, {"name": "two", "mac": "dc:a6:32:12:34:56", "storage_device": "/dev/sda"}],
    "network": {"ntp_servers": ["pool.ntp.org"]},
    # a release ceil has no digest for, pinned by the user (every generated version renders)
    "kubernetes": {"k3s_version": "v1.36.1+k3s1", "k3s_sha256": "0123456789abcdef" * 4},
    "addons": {"enable": ["keda"], "disable": ["canary"]},
    "vpn": {"enabled": True, "endpoint": "vpn.example.com"},
    "ddns": {"enabled": True, "api_token": "cf-token-123", "zone": "example.com", "record": "vpn.example.com",
             "api_url": "https://api.cloudflare.com/client/v4", "ip_url": "https://api.ipify.org"},
    "registry": {"enabled": True, "upstream": "https://registry-1.docker.io"},
    "piwatch": {"enabled": True},
    "tunnel": {"enabled": True, "token": "eyJhIjoiMTIzNDU2Nzg5MCJ9eyJhIjoiMTIzNDU2Nzg5MCJ9"},
    "gitops": {"enabled": True, "url": "https://git.example.com/me/cluster.git", "branch": "main",
               "path": "./clusters/pi", "interval": "5m", "token": "glpat-0123456789", "username": "git"},
}
# Fields that reach only the server's add-on plan and secrets: the server is rendered for them too.
SERVER_ONLY = ("tunnel.", "gitops.", "addons.", "kubernetes.")

# (dotted path, a valid value the generated ones are built around); secrets marked.
FIELDS = {
    "name": "ceil", "domain": "ceil.internal", "timezone": "Etc/UTC",
    "apt_mirror.url": "http://deb.example.org/debian", "apt_mirror.suite": "trixie",
    "apt_mirror.components.0": "main", "ssh.user": "ceil", "ssh.authorized_keys.0": KEY,
    "router.uplink.wifi.ssid": "Home", "router.uplink.wifi.psk": "correct-horse-battery",
    "router.uplink.wifi.country": "DE", "nodes.1.name": "two", "vpn.endpoint": "vpn.example.com",
    "ddns.api_token": "cf-token-123", "ddns.zone": "example.com", "ddns.record": "vpn.example.com",
    "ddns.api_url": "https://api.cloudflare.com/client/v4", "registry.upstream": "https://registry-1.docker.io",
    "tunnel.token": "eyJhIjoiMTIzNDU2Nzg5MCJ9eyJhIjoiMTIzNDU2Nzg5MCJ9",
    "gitops.url": "https://git.example.com/me/cluster.git", "gitops.branch": "main", "gitops.path": "./clusters/pi",
    "gitops.interval": "5m", "gitops.token": "glpat-0123456789", "gitops.username": "git",
    "flavor": "ubuntu-24.04-raspi", "router.lan_interface": "eth0", "router.uplink.interface": "wlan0",
    "router.usb_drive": "/dev/sda", "network.ntp_servers.0": "pool.ntp.org", "nodes.1.mac": "dc:a6:32:12:34:56",
    "nodes.1.storage_device": "/dev/sda", "kubernetes.k3s_version": "v1.36.1+k3s1",
    "kubernetes.k3s_sha256": "0123456789abcdef" * 4, "ddns.ip_url": "https://api.ipify.org",
    "addons.enable.0": "keda", "addons.disable.0": "canary",
}
# The flavors whose files differ for the same values (netplan rendered for systemd-networkd and
# for NetworkManager), one drawn per example: every field meets both in a run of the same length.
FLAVORS = ("ubuntu-24.04-raspi", "raspios-trixie")
SECRETS = {"router.uplink.wifi.psk", "ddns.api_token", "tunnel.token", "gitops.token"}
# \x85 (NEL), \u2028 and \u2029 are line breaks to YAML; \x9b is a C1 control (a terminal's CSI).
NASTY = list("aZ09.-_:/ \n\t\"'\\#$`{}[],&*!|>%@=;\x1b\x00\x7f\x85\x9b\u2028\u2029éü📶")


def with_value(path: str, value: str) -> dict:
    data = json.loads(json.dumps(BASE))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def as_yaml(data: dict) -> str:
    """cluster.yaml holding `data`, every character escaped so that each arrives as it was: with
    allow_unicode, PyYAML writes U+0085 raw and reads it back as a space."""
    text = yaml.safe_dump(data)
    assert yaml.safe_load(text) == data
    return text


# What broke a format before, or would: a line of its own, quotes of every kind, a comment, shell
# expansion, a terminal escape, YAML's words and indicators, a character beyond the BMP.
PAYLOADS = ["\n", "\n[Interface]\nPreUp = touch /tmp/pwned", "\"", "'", "\\", " #x", "$(id)", "`id`",
            "\x1b]0;t\x07", "\x00", "yes", "on", "null", "~", "0x1f", "1:20", "1e3", ": x", "\n- x", "{a: b}",
            "📶", "é", " ", "\r\n", "\x85- x", "\x9b31m", "\u2028x: y", "\u2029"]


def values(valid: str):
    """A valid value with a known payload, or random nasty characters, put into it or in its place."""
    nasty = st.one_of(st.sampled_from(PAYLOADS), st.text(alphabet=st.sampled_from(NASTY), min_size=1, max_size=6))
    return st.one_of(
        st.tuples(st.integers(0, len(valid)), nasty).map(lambda t: valid[:t[0]] + t[1] + valid[t[0]:]),
        nasty.map(lambda s: valid + s),
        nasty,
    )


def render_all(cluster, tmp: Path, store: SecretStore, roles=("router", "two")) -> dict[str, str]:
    """{relative path: text} of every file the router and node two would carry, seed included."""
    out: dict[str, str] = {}
    for role in roles:
        ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), store)
        payload = render_features(ctx, tmp / role)
        for path in (tmp / role).rglob("*"):
            if path.is_file() and path.suffix != ".whl":  # PiWatch's wheels: built, not rendered from values
                out[f"{role}/{path.relative_to(tmp / role)}"] = path.read_text(errors="strict")
        for name, data in payload.secrets.items():
            out[f"{role}/secrets/{name}"] = data.decode()
        for name, text in render_seed(ctx, "i-test").items():
            out[f"{role}/seed/{name}"] = text
    # What `bake.py vpn-client` writes for the user's laptop (wg-quick runs it as root there).
    client, _ = wireguard.add_client(cluster, store, "laptop")
    out["workstation/laptop.conf"] = wireguard.render_client(
        cluster, client, wireguard.public_key(wireguard.server_private_key(store)))
    return out


def is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".yaml.j2")) or name.split("/")[-1] in ("user-data", "meta-data", "network-config")


def strings_in(doc) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for k, v in doc.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in strings_in(v)]
    return []


def scalars(node) -> list:
    """Every scalar node of a composed YAML document, keys included, with the tag YAML resolved."""
    if node is None:
        return []
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if isinstance(node, yaml.MappingNode):
        return [s for k, v in node.value for s in scalars(k) + scalars(v)]
    return [s for v in node.value for s in scalars(v)]


WG_KEYS = {"Interface": {"PrivateKey", "Address", "ListenPort", "DNS", "MTU", "Table", "SaveConfig", "PostUp", "PostDown"},
           "Peer": {"PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive"}}


def check_wg_quick(name: str, text: str) -> None:
    """A wg-quick file: one [Interface], then [Peer]s, each line a key it knows. A value that
    smuggled a line in would show up here (a second [Interface], a PreUp that runs as root)."""
    sections = [line.strip() for line in text.splitlines() if line.strip().startswith("[")]
    assert sections[:1] == ["[Interface]"] and sections.count("[Interface]") == 1, f"{name}: {sections}"
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key = line.split("=", 1)[0].strip()
        assert key in WG_KEYS[current], f"{name}: {key!r} in [{current}]"


# The daemons' own checkers, by the end of the rendered file's name. A config is checked once per
# distinct text: most values never reach these files, which then are the baseline's.
REAL_PARSERS = {"dnsmasq/ceil.conf": ("dnsmasq", "--test", "-C"), ".nft": ("nft", "-c", "-f")}


def real_parser(name: str) -> tuple[str, ...] | None:
    return next((cmd for end, cmd in REAL_PARSERS.items() if name.endswith(end)), None)


@functools.cache
def refused_by(cmd: tuple[str, ...], text: str) -> str:
    """What `cmd FILE` says against `text`, "" if it takes it. nft checks need CAP_NET_ADMIN: as
    root it has it, else it runs in a user and network namespace of its own."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "checked.conf"
        path.write_text(text)
        done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0 and "Operation not permitted" in done.stderr:
            done = subprocess.run(["unshare", "-rn", *cmd, str(path)], capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def check_parses(files: dict[str, str], value: str, tmp: Path, baseline: str) -> set[str]:
    """Assert every file parses; return the real parsers that are not installed (their files unchecked)."""
    found_in_yaml = False
    shell: list[Path] = []
    not_installed: set[str] = set()
    for name, text in files.items():
        # No rendered file carries a control character but tab and newline, nor a Unicode line or
        # paragraph separator: any of them came from a value that should have been refused.
        bad = sorted({c for c in text if c not in "\t\n" and unicodedata.category(c) in ("Cc", "Zl", "Zp")})
        assert not bad, f"{name}: control characters or line breaks {bad!r} from {value!r}"
        if is_yaml(name):
            for loader in (yaml.CSafeLoader, yaml.SafeLoader):
                doc = yaml.load(text, Loader=loader)  # raises on a broken file
            found_in_yaml |= any(value in s for s in strings_in(doc))
            retyped = [node.tag for node in scalars(yaml.compose(text, Loader=yaml.SafeLoader))
                       if node.value == value and node.tag != "tag:yaml.org,2002:str"]
            assert not retyped, f"{name}: {value!r} written where YAML reads it as {retyped} (write it with tojson)"
        elif name.endswith(".json"):
            json.loads(text)
        elif cmd := real_parser(name):
            if shutil.which(cmd[0]) is None:
                not_installed.add(cmd[0])
            else:
                said = refused_by(cmd, text)
                assert not said, f"{name} from {value!r}: `{' '.join(cmd)}` refuses it: {said}"
        elif text.startswith("#!/bin/sh") or text.startswith("#!/bin/bash") or name.endswith(".sh"):
            path = tmp / "shell" / name.replace("/", "__")
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            shell.append(path)
        elif name.endswith(".conf") and ("wireguard" in name or name.startswith("workstation/")):
            check_wg_quick(name, text)
        elif name.endswith(".env"):
            for line in text.splitlines():
                assert not line or line.startswith("#") or "=" in line, f"{name}: {line!r}"
    if shell:
        # Each by the shell that runs it: bash for a #!/bin/bash script, the system's sh (dash on
        # every flavor) for the rest.
        check = 'for f; do if head -n1 "$f" | grep -q bash; then bash -n "$f"; else sh -n "$f"; fi 2>&1 || echo "BROKEN $f"; done'
        bad = subprocess.run(["sh", "-c", check, "sh", *map(str, shell)], capture_output=True, text=True)
        assert "BROKEN" not in bad.stdout, bad.stdout
    # Round trip: a value that lands in a YAML file comes back out of it whole (checked where the
    # value is long enough to be told apart from what the files hold anyway).
    if len(value) >= 3 and value not in baseline and any(is_yaml(n) and value in t for n, t in files.items()):
        assert found_in_yaml, f"{value!r} is in a YAML file's text but no parsed string holds it whole"
    return not_installed


# What a refusal says to do (issue 19 #4: key, value and fix): an example, the form expected, or
# an instruction. Measured on every refusal the fuzz makes; a message with none of them names no fix.
FIX_RE = re.compile(r"e\.g\.|expected|needs|\b(use|pick|set|give|write|remove|leave|shorten|copy|put|choose|add"
                    r"|name the|make)\b|one of|flavors for|roles are|at most|are \d+-\d+", re.I)


def refused_well(path: str, value: str, message: str) -> None:
    """The key named, and a fix; a secret never shown (nor a URL's user and password); any other value shown (its start, as written, as
    repr or JSON escapes it, or as YAML or the check normalised it), so the user sees which of
    their values was meant."""
    key = path.replace(".0", "").replace(".1", "")
    assert any(part in message for part in (key, key.split(".")[-1])), f"{path}: {message}"
    if path in SECRETS:
        if len(value) >= 4:
            assert value not in message, f"{path}: the secret is shown in the error"
        assert FIX_RE.search(message), f"{path}: the refusal names no fix: {message}"
        return
    if "@" in value and "USER:…@" in message:  # a URL's credential: shown is only what follows it
        value = value.rsplit("@", 1)[1]
    if value.strip():
        start = value.strip()[:12]
        bases = {start, start.lower(), start.lower().replace("-", ":")}  # (a MAC is shown lowercased, with colons)
        forms = {form for b in bases for form in (b, repr(b)[1:-1], json.dumps(b)[1:-1])}
        assert any(form in message for form in forms if form), f"{path}: {value!r} is not shown in: {message}"
    # The fix is in the message's own words, not found inside the value it echoes.
    said = message
    for form in sorted({value, repr(value)[1:-1], json.dumps(value)[1:-1]} - {""}, key=len, reverse=True):
        said = said.replace(form, " ")
    assert FIX_RE.search(said), f"{path}: the refusal names no fix: {message}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SecretStore:
    """One secrets folder for every example: CAs and keys are made once, as on a workstation."""
    return SecretStore(tmp_path_factory.mktemp("secrets"))


class Baseline:
    """The files rendered from BASE itself (a value found there anyway is not checked for)."""

    text = ""

    def __repr__(self) -> str:  # hypothesis prints its arguments: keep them short
        return "<baseline render>"


@pytest.fixture(scope="module")
def baseline(store, tmp_path_factory) -> Baseline:
    files = render_all(parse_cluster(yaml.safe_dump(BASE), "cluster.yaml"), tmp_path_factory.mktemp("base"), store)
    b = Baseline()
    b.text = "\n".join(files.values())
    return b


@pytest.mark.parametrize("path", sorted(FIELDS))
def test_every_string_field_is_refused_or_renders_into_files_that_parse(path, store, baseline, tmp_path_factory):
    not_installed: set[str] = set()

    @settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def each_value(data):
        value = data.draw(values(FIELDS[path]), label=path)
        settings_ = with_value(path, value)
        if path != "flavor":  # netplan for networkd, or for NetworkManager: each renderer's files
            settings_["flavor"] = data.draw(st.sampled_from(FLAVORS), label="flavor")
        try:
            cluster = parse_cluster(as_yaml(settings_), "cluster.yaml")
            tmp = tmp_path_factory.mktemp("render")
            files = render_all(cluster, tmp, store, ("router", "two", "one") if path.startswith(SERVER_ONLY) else
                               ("router", "two"))
        except ConfigError as e:  # refused, at load or by a feature's check before anything is written
            event("refused")
            return refused_well(path, value, str(e))
        event("accepted and rendered")
        not_installed.update(check_parses(files, value, tmp, baseline.text))

    each_value()
    if not_installed:
        # Every other check passed; the files only these tools can judge were not judged.
        pytest.skip(f"{', '.join(sorted(not_installed))} not installed: {path}'s values were not checked by"
                    " the real dnsmasq/nft parsers (scripts/setup-host.sh --test installs them)")


YAML_WORDS = ("on", "yes", "null", "~", "0x1f", "1:20", "1e3")


@pytest.mark.parametrize("path", sorted(FIELDS))
def test_a_value_yaml_reads_as_another_type_stays_a_string_in_every_file(path, store, baseline, tmp_path):
    """The property test draws these words alone only now and then: here each field meets each
    one. Accepted, it must reach every YAML file as a string (an interface named `on` became the
    key True in network-config, another interface than dnsmasq's and nftables')."""
    for word in YAML_WORDS:
        settings_ = with_value(path, word)
        try:
            cluster = parse_cluster(as_yaml(settings_), "cluster.yaml")
            files = render_all(cluster, tmp_path / word, store, ("router", "two", "one") if path.startswith(SERVER_ONLY)
                               else ("router", "two"))
        except ConfigError:
            continue
        check_parses({n: t for n, t in files.items() if is_yaml(n)}, word, tmp_path, baseline.text)


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u2028", "\u2029"])
@pytest.mark.parametrize("path", ["router.uplink.wifi.ssid", "ssh.authorized_keys.0"])
def test_c1_controls_and_unicode_line_breaks_are_refused_naming_key_value_and_fix(path, char):
    """Accepted before: an SSID with U+0085 or U+2028 made network-config unreadable to libyaml and
    PyYAML (the router lost its uplink), and a key comment with U+009B reached user-data."""
    value = FIELDS[path] + char + "x"  # in an SSH key, the comment
    with pytest.raises(ConfigError) as e:
        parse_cluster(as_yaml(with_value(path, value)), "cluster.yaml")
    message = str(e.value)
    assert path.replace(".0", "[0]") in message  # the key
    assert repr(char)[1:-1] + "x'" in message  # the value, as repr shows it
    assert f"U+{ord(char):04X}" in message and "one line" in message  # what is wrong, and the fix


def test_an_error_quoting_rich_markup_is_printed_as_it_is(tmp_path, capsys):
    """The CLI printed errors through Rich's markup: an SSID `[/]...` crashed the bake with
    MarkupError and a traceback, and `[bold]` in a value was read as a style, not shown."""
    from ceil import cli

    ssid = "[/][bold]" + "a" * 31  # 40 bytes: refused (an SSID holds 32), and the error quotes it
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(with_value("router.uplink.wifi.ssid", ssid)))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--config", str(tmp_path / "cluster.yaml"), "--role", "router"])
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert exit_.value.code == 1
    assert "router.uplink.wifi.ssid (line " in shown and repr(ssid) in shown, shown
    assert "Traceback" not in shown and "MarkupError" not in shown


def schema_string_fields(model=None, prefix: str = "") -> list[str]:
    """Every string-valued key of cluster.yaml's schema (str, SecretStr, constrained strings, and
    lists of them: `.0`), found by walking the models, so a field added later is found too."""
    import types
    import typing

    from pydantic import BaseModel, SecretStr

    from ceil.config.cluster import Cluster

    def kinds(t):
        while typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            for a in typing.get_args(t):
                yield from kinds(a)
        elif typing.get_origin(t) is list:
            yield from ((".0", k) for k in kinds(typing.get_args(t)[0]))
        elif t is SecretStr or isinstance(t, type) and issubclass(t, (str, BaseModel)):
            yield ("", t)

    found = []
    for name, field in (model or Cluster).model_fields.items():
        for suffix, t in kinds(field.annotation):
            while isinstance(t, tuple):
                suffix, t = suffix + t[0], t[1]
            if isinstance(t, type) and issubclass(t, BaseModel):
                found += schema_string_fields(t, f"{prefix}{name}{suffix}.")
            else:
                found.append(f"{prefix}{name}{suffix}")
    return found


def test_every_string_field_of_the_schema_is_fuzzed():
    """A string field added to the schema without a case here would reach its files unchecked."""
    import re

    fuzzed = {re.sub(r"\.\d+", ".0", path) for path in FIELDS}
    missing = sorted(set(schema_string_fields()) - fuzzed)
    assert not missing, f"string fields of the schema the fuzz does not try (add them to FIELDS): {missing}"
