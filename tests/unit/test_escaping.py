"""One escaping path per file format (issue 18; ceil/escaping.py): every `{{ }}` of every template
ends with its format's filter, the environments refuse a value that skipped one, and each filter
gives back what the format's own reader reads as the value."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import nodes

from ceil import escaping
from ceil.addons.render import _environment
from ceil.config import ConfigError, parse_cluster
from ceil.features import jinja_env

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly test@ceil"
TEMPLATE_ROOTS = ("firstboot", "cloud-init", "addons")


def templates() -> list[Path]:
    return sorted(p for root in TEMPLATE_ROOTS for p in (REPO / root).rglob("*.j2"))


def base_name(node: nodes.Node) -> str | None:
    """The variable a filter chain starts from (`x` in `x["a"] | indent(2) | verbatim`)."""
    while isinstance(node, (nodes.Filter, nodes.Getitem, nodes.Getattr)):
        node = node.node
    return node.name if isinstance(node, nodes.Name) else None


def outputs(path: Path) -> list[nodes.Expr]:
    tree = jinja2.Environment().parse(path.read_text())
    return [expr for out in tree.find_all(nodes.Output) for expr in out.nodes if not isinstance(expr, nodes.TemplateData)]


def test_the_template_set_is_the_one_the_bake_renders():
    found = templates()
    assert len(found) > 60, found  # every feature's, cloud-init's and the add-ons' templates
    assert {p.relative_to(REPO).parts[0] for p in found} == set(TEMPLATE_ROOTS)


@pytest.mark.parametrize("path", templates(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_value_in_a_template_ends_with_its_formats_filter(path):
    fmt = escaping.template_format(str(path), path.read_text())
    allowed = escaping.FILTERS_OF[fmt]
    for expr in outputs(path):
        where = f"{path.relative_to(REPO)}:{expr.lineno}"
        assert isinstance(expr, nodes.Filter), f"{where}: a value without a filter ({fmt} file: {sorted(allowed)})"
        if expr.name == "verbatim":
            assert base_name(expr) in escaping.VERBATIM, f"{where}: verbatim is for {sorted(escaping.VERBATIM)} only"
        else:
            assert expr.name in allowed, f"{where}: `{expr.name}` in a {fmt} file (its filters: {sorted(allowed)})"


def test_the_formats_are_told_apart():
    fmt = escaping.template_format
    assert fmt("firstboot/x/lib/steps/a.sh.j2", "#!/bin/sh\n") == "shell"
    assert fmt("firstboot/common/etc/cmdline-keep.j2", "#!/bin/sh\n") == "shell"
    assert fmt("firstboot/k3s-install/etc/k3s-install/install.env.j2", "# x\n") == "shell"
    assert fmt("cloud-init/user-data.j2", "#cloud-config\n") == "yaml"
    assert fmt("addons/demo/httpd.yaml.j2", "") == "yaml"
    assert fmt("firstboot/ddns/etc/ddns.json.j2", "{\n") == "json"
    assert fmt("firstboot/datastore-pull/lib/ceil-datastore-pull.j2", "#!/usr/bin/python3\n") == "python"
    assert fmt("firstboot/dnsmasq/etc/dnsmasq/ceil.conf.j2", "# ceil\n") == "conf"
    assert fmt("firstboot/chrony/units/ceil-chrony.service.j2", "[Unit]\n") == "conf"


@pytest.mark.parametrize("env", [jinja_env(REPO / "firstboot"), _environment(REPO / "addons")], ids=["features", "addons"])
def test_a_value_that_skipped_its_filter_is_refused_at_render(env):
    with pytest.raises(jinja2.TemplateRuntimeError, match="written unescaped"):
        env.from_string("server {{ host }} iburst\n").render(host="pool.ntp.org")
    with pytest.raises(jinja2.TemplateRuntimeError, match="written unescaped"):
        env.from_string("{{ port + 1 }}\n").render(port=80)
    assert env.from_string("server {{ host | word }} iburst\n").render(host="pool.ntp.org") == "server pool.ntp.org iburst\n"
    assert env.from_string("a: {{ v | tojson }}\n").render(v="x: y") == 'a: "x: y"\n'


@pytest.mark.parametrize("value", ["10.42.0.0/16", "http://10.0.0.1:8088/k3s", "v1.36.1+k3s1", "/var/lib/longhorn",
                                   "dc:a6:32:12:34:56", "pool.ntp.org", "cgroup_memory=1", "user@host", "a,b", "~", "enx*", ""])
def test_a_word_is_written_as_it_is(value):
    assert escaping.word(value) == value


@pytest.mark.parametrize("char", list(" \t\n\r\"'`\\$#%;&|<>?()[]{}!\x00\x7f\u2028") + ["é"])
def test_a_word_refuses_what_any_format_reads_as_syntax(char):
    with pytest.raises(jinja2.TemplateRuntimeError, match="schema should have refused"):
        escaping.word(f"pool{char}ntp.org")
    with pytest.raises(jinja2.TemplateRuntimeError):
        escaping.words(["ok", f"x{char}"], ",")
    assert escaping.words(["eth0", "wg0"], ", ", quote='"') == '"eth0", "wg0"'


# Any text a shell variable can hold: everything but NUL.
SHELL_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize("shell", ["sh", "bash"])
@settings(max_examples=150, deadline=None, derandomize=True)
@given(value=SHELL_TEXT)
def test_what_sh_writes_the_shell_reads_back_whole(shell, value):
    """As the templates use it: an assignment and a command's argument."""
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    quoted = escaping.sh(value)
    script = f"v={quoted}\nprintf '%s|' \"$v\" {quoted}\n"
    done = subprocess.run([shell, "-c", script], capture_output=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8", "surrogateescape") == f"{value}|{value}|"


@pytest.mark.parametrize("path", [p for p in templates() if escaping.template_format(str(p), p.read_text()) == "shell"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_in_a_shell_script_a_quoted_word_stands_outside_quotes_and_a_plain_one_inside(path):
    """`sh`'s quotes are read as quotes only outside other quotes: "{{ x | sh }}" would keep them
    in the value (and '{{ x | sh }}' would end the string early). A `word` outside double quotes
    would be globbed (`enx*`) by the shell."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for start in [i for i in range(len(line)) if line.startswith("{{", i)]:
            expr = line[start:line.find("}}", start) + 2]
            before = line[:start]
            double = before.replace("\\\"", "").count("\"") % 2
            single = before.count("'") % 2
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            if expr.endswith("| sh }}"):
                assert not double and not single, where
            elif expr.endswith("| word }}") or "| words" in expr:
                assert double, where


YAML_TEMPLATES = [p for p in templates() if escaping.template_format(str(p), p.read_text()) == "yaml"]


@pytest.mark.parametrize("path", YAML_TEMPLATES, ids=lambda p: str(p.relative_to(REPO)))
def test_in_yaml_a_value_standing_alone_as_a_scalar_goes_through_tojson(path):
    """`word` writes a value as it is, and YAML reads a lone `on`, `null`, `0x1f` or `1:20` as a
    boolean, nothing or a number: an interface named so became another key in network-config than
    the one dnsmasq and nftables use. Inside a longer scalar (`grafana.{{ domain }}`) it stays text."""
    import re

    for number, line in enumerate(path.read_text().splitlines(), 1):
        for m in re.finditer(r"\{\{[^}]*\|\s*word\s*\}\}", line):
            before, after = line[:m.start()], line[m.end():]
            alone = (re.search(r"(^\s*(-\s+)?|:\s+|[\[{,]\s*)$", before)
                     and re.match(r"\s*($|:(\s|$)|,|\]|\}|#)", after))
            assert not alone, f"{path.relative_to(REPO)}:{number}: {line.strip()} (use tojson)"


@pytest.mark.parametrize("name", ["on", "null", "0x1f", "1:20", "yes"])
def test_an_interface_named_like_a_yaml_value_stays_that_name_in_network_config(name, tmp_path):
    import yaml

    from ceil.catalog import load_flavor
    from ceil.features import RoleContext
    from ceil.payload import render_seed
    from ceil.secrets import SecretStore

    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\nrouter: {{lan_interface: '{name}',"
                            f" uplink: {{type: ethernet, interface: eth1}}}}\n")
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path / "s"), None)
    doc = yaml.safe_load(render_seed(ctx, "i-1")["network-config"])
    assert name in doc["ethernets"], doc["ethernets"]


def test_a_list_is_one_quoted_shell_word_each():
    assert escaping.sh(["current/cmdline.txt", "a b", "it's"]) == "current/cmdline.txt 'a b' 'it'\"'\"'s'"
    done = subprocess.run(["sh", "-c", f"for f in {escaping.sh(['a b', '*', 'c'])}; do printf '<%s>' \"$f\"; done"],
                          capture_output=True, text=True, timeout=10)
    assert done.stdout == "<a b><*><c>"


@pytest.mark.parametrize("server", ["pool.ntp.org", "192.168.1.1", "2001:db8::123", "fe80::1"])
def test_every_ntp_server_the_schema_takes_is_a_word(server):
    """The schema and `word` agree: what cluster.yaml may name as a time server is written into
    chrony's line as it is."""
    cluster = parse_cluster(f"network: {{ntp_servers: [{server!r}]}}\nnodes: [{{name: one, role: server}}]\n"
                            f"ssh: {{authorized_keys: [{KEY!r}]}}\n", "cluster.yaml")
    assert escaping.word(cluster.network.ntp_servers[0]) == server


def test_a_zoned_ipv6_time_server_is_refused_with_the_fix_not_at_render():
    """`fe80::1%eth0`: Python's ipaddress took it, and the bake then stopped in the chrony
    template with "report it as a ceil bug"."""
    with pytest.raises(ConfigError) as refused:
        parse_cluster(f"network: {{ntp_servers: ['fe80::1%eth0']}}\nnodes: [{{name: one, role: server}}]\n"
                      f"ssh: {{authorized_keys: [{KEY!r}]}}\n", "cluster.yaml")
    said = str(refused.value)
    assert "ntp_servers" in said and "fe80::1%eth0" in said and "without it" in said, said
