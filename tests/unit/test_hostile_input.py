"""Hostile input (issue 18): every string a user can put in cluster.yaml, through every renderer.

A property test, bounded and derandomized so it is the same in every run: for each string field
of the schema, values made of the characters that break formats (quotes, backslashes, newlines,
`#`, `$`, braces, control and non-ASCII characters) are either refused (naming the key and,
for secrets, never the value) or, if accepted, rendered into the router's and a node's files,
each of which must still parse with its real parser (libyaml and PyYAML for YAML, json for JSON,
`sh -n` for shell, systemd's own syntax for env files); and a value that was accepted comes back
out of the YAML it went into unchanged.
"""

from __future__ import annotations

import json
import subprocess
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
    "nodes": [{"name": "one", "role": "server"}, {"name": "two"}],
    "vpn": {"enabled": True, "endpoint": "vpn.example.com"},
    "ddns": {"enabled": True, "api_token": "cf-token-123", "zone": "example.com", "record": "vpn.example.com",
             "api_url": "https://api.cloudflare.com/client/v4", "ip_url": "https://api.ipify.org"},
    "registry": {"enabled": True, "upstream": "https://registry-1.docker.io"},
    "piwatch": {"enabled": False},
    "tunnel": {"enabled": True, "token": "eyJhIjoiMTIzNDU2Nzg5MCJ9eyJhIjoiMTIzNDU2Nzg5MCJ9"},
    "gitops": {"enabled": True, "url": "https://git.example.com/me/cluster.git", "branch": "main",
               "path": "./clusters/pi", "interval": "5m", "token": "glpat-0123456789", "username": "git"},
}
# Fields that reach only the server's add-on plan and secrets: the server is rendered for them too.
SERVER_ONLY = ("tunnel.", "gitops.")

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
}
SECRETS = {"router.uplink.wifi.psk", "ddns.api_token", "tunnel.token", "gitops.token"}
NASTY = list("aZ09.-_:/ \n\t\"'\\#$`{}[],&*!|>%@=;\x1b\x00\x7féü📶")


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


# What broke a format before, or would: a line of its own, quotes of every kind, a comment, shell
# expansion, a terminal escape, YAML's words and indicators, a character beyond the BMP.
PAYLOADS = ["\n", "\n[Interface]\nPreUp = touch /tmp/pwned", "\"", "'", "\\", " #x", "$(id)", "`id`",
            "\x1b]0;t\x07", "\x00", "yes", ": x", "\n- x", "{a: b}", "📶", "é", " ", "\r\n"]


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
            if path.is_file():
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


def check_parses(files: dict[str, str], value: str, tmp: Path, baseline: str) -> None:
    found_in_yaml = False
    shell: list[Path] = []
    for name, text in files.items():
        # No rendered file carries a control character but tab and newline: any other came from
        # a value that should have been refused.
        bad = sorted({c for c in text if (ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160})
        assert not bad, f"{name}: control characters {bad!r} from {value!r}"
        if is_yaml(name):
            for loader in (yaml.CSafeLoader, yaml.SafeLoader):
                doc = yaml.load(text, Loader=loader)  # raises on a broken file
            found_in_yaml |= any(value in s for s in strings_in(doc))
        elif name.endswith(".json"):
            json.loads(text)
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
        bad = subprocess.run(["sh", "-c", 'for f; do sh -n "$f" 2>&1 || echo "BROKEN $f"; done', "sh", *map(str, shell)],
                             capture_output=True, text=True)
        assert "BROKEN" not in bad.stdout, bad.stdout
    # Round trip: a value that lands in a YAML file comes back out of it whole (checked where the
    # value is long enough to be told apart from what the files hold anyway).
    if len(value) >= 3 and value not in baseline and any(is_yaml(n) and value in t for n, t in files.items()):
        assert found_in_yaml, f"{value!r} is in a YAML file's text but no parsed string holds it whole"


def refused_well(path: str, value: str, message: str) -> None:
    key = path.replace(".0", "").replace(".1", "")
    assert any(part in message for part in (key, key.split(".")[-1])), f"{path}: {message}"
    if path in SECRETS and len(value) >= 4:
        assert value not in message, f"{path}: the secret is shown in the error"


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
@settings(max_examples=20, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_string_field_is_refused_or_renders_into_files_that_parse(path, data, store, baseline,
                                                                        tmp_path_factory):
    value = data.draw(values(FIELDS[path]), label=path)
    try:
        cluster = parse_cluster(yaml.safe_dump(with_value(path, value), allow_unicode=True), "cluster.yaml")
        tmp = tmp_path_factory.mktemp("render")
        files = render_all(cluster, tmp, store, ("router", "two", "one") if path.startswith(SERVER_ONLY) else
                           ("router", "two"))
    except ConfigError as e:  # refused, at load or by a feature's check before anything is written
        event("refused")
        return refused_well(path, value, str(e))
    event("accepted and rendered")
    check_parses(files, value, tmp, baseline.text)
