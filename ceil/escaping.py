"""How a value reaches a rendered file: one escaping path per file format (issue 18).

Every `{{ ... }}` in ceil's templates (firstboot/, cloud-init/, addons/) ends with one of these
filters, and the environments refuse at render time any value that did not go through one, so a
template cannot write a value raw by forgetting:

- `word`: a value that needs no escaping in any format (names, addresses, ports, paths, URLs,
  versions, interface patterns). It is written as it is, and refused if it holds anything a
  format would read as syntax: space, quote, backslash, `$`, `#`, `%`, `;`, `&`, `|`, `<`, `>`,
  `?`, brackets or braces, a control character. The schema refuses such values first; this is
  the backstop, and the one filter allowed inside another format's string (a URL in a shell
  message, a host name in a YAML scalar, a port in a unit's ExecStart=).
- `words(sep)`: a list of words joined by `sep`.
- `sh`: one shell word, quoted (shlex.quote): what `sh` reads back is the value, whatever it holds.
- `tojson` (Jinja's own): JSON, which is YAML too, for YAML and JSON files.
- `verbatim`: text a format-aware writer already made, or ceil's own source (k3s's config.yaml
  from yaml.safe_dump, PiWatch's env file, the add-on job's modules); only for the variables in
  VERBATIM, which tests/unit/test_escaping.py holds every template to.

Which filter a template may use follows from its format (template_format): shell files `sh`,
YAML and JSON `tojson`, Python and line-based configs (dnsmasq, nftables, chrony, avahi, systemd
units, kernel command lines) only `word`/`words`.

Files written by Python rather than a template have their own one path: YAML through
yaml.safe_dump (k3s's config.yaml, registries.yaml, the kubeconfig), JSON through json.dumps,
wpa_supplicant's file with the SSID in hex and the derived key (ceil/hooks/wifi_ifupdown.py),
WireGuard's from addresses, keys and an endpoint the schema holds to a host name or address
(ceil/wireguard.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

import jinja2
from markupsafe import Markup

# Letters, digits and the punctuation of names, addresses, paths, URLs and versions; `*` for an
# interface pattern (`enx*`: a USB adapter's predictable name), which dnsmasq, nftables and
# systemd read as a wildcard, and a shell too outside quotes: in a shell script a word stands
# inside double quotes or a comment (tests/unit/test_escaping.py), anything else is `sh`-quoted.
WORD_RE = re.compile(r"[A-Za-z0-9._:/@+,=~*-]*")
# The variables whose text is already in its file's format (or is ceil's own source).
VERBATIM = frozenset({
    "k3s_config_yaml", "piwatch_env", "addons_plan_json", "pull_config_json", "addons_job_source",
    "snapshot_module", "backup_script", "tls_annotations", "ui_auth_annotations",
})
FILTERS_OF = {
    "shell": {"sh", "word", "words"},
    "yaml": {"tojson", "word", "words"},
    "json": {"tojson", "word", "words"},
    "python": {"word", "words"},
    "conf": {"word", "words"},
}


class Escaped(str):
    """A value one of the filters below has made safe for its place."""


def word(value: object) -> Escaped:
    text = str(value)
    if not WORD_RE.fullmatch(text):
        bad = next(c for c in text if not WORD_RE.fullmatch(c))
        raise jinja2.TemplateRuntimeError(
            f"{text!r} holds {bad!r}, which this file would read as syntax: the schema should have refused it"
            " (report it as a ceil bug)")
    return Escaped(text)


def words(values: Iterable[object], sep: str = " ", quote: str = "") -> Escaped:
    """`values` as words joined by `sep`, each between `quote`s (nftables' quoted names)."""
    return Escaped(sep.join(f"{quote}{word(v)}{quote}" for v in values))


def sh(value: object) -> Escaped:
    """One shell word; a list as one quoted word each (`for f in {{ files | sh }}`)."""
    if isinstance(value, (list, tuple)):
        return Escaped(" ".join(shlex.quote(str(v)) for v in value))
    return Escaped(shlex.quote(str(value)))


def verbatim(value: object) -> Escaped:
    return Escaped(str(value))


def refuse_unescaped(value: object) -> object:
    """The environments' finalize: every value printed went through a filter above (or tojson)."""
    if isinstance(value, (Escaped, Markup)):
        return value
    raise jinja2.TemplateRuntimeError(
        f"{str(value)[:60]!r} is written unescaped: end its {{{{ }}}} with the file format's filter"
        " (word, words, sh, tojson or verbatim; see ceil/escaping.py)")


def install(env: jinja2.Environment) -> jinja2.Environment:
    env.filters.update(word=word, words=words, sh=sh, verbatim=verbatim)
    env.finalize = refuse_unescaped
    return env


def template_format(name: str, source: str) -> str:
    """The format of the file a template renders (its name without .j2, or its first line)."""
    first = source.split("\n", 1)[0]
    base = name.removesuffix(".j2")
    if base.endswith((".yaml", ".yml")) or base.rsplit("/", 1)[-1] in ("user-data", "network-config", "meta-data"):
        return "yaml"
    if base.endswith(".json"):
        return "json"
    if base.endswith(".py") or first.startswith("#!") and "python" in first:
        return "python"
    # install.env is sourced by the k3s-install step's shell.
    if base.endswith((".sh", ".env")) or first.startswith(("#!/bin/sh", "#!/bin/bash")):
        return "shell"
    return "conf"
