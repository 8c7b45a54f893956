"""Loading cluster.yaml: `${ENV}` references, YAML parsing, and errors that point into the file.

A pydantic error becomes one line naming the dotted key, the YAML line it sits on and, except
for secrets, the value found. `config_hash` fingerprints the file for each image's manifest.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from ..errors import ConfigError
from .. import yamlfile
from .cluster import Cluster

ENV_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _resolve_env(obj: Any, path: str = "", unset: dict[str, str] | None = None) -> Any:
    """Replace `${VAR}` strings by the environment's value; a missing variable is an error, except
    for a secret when `unset` collects them ({key path: variable}; see load_cluster)."""
    if isinstance(obj, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k), unset) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_env(v, f"{path}[{i}]", unset) for i, v in enumerate(obj)]
    if isinstance(obj, str):
        m = ENV_REF_RE.match(obj.strip())
        if m:
            var = m.group(1)
            if var in os.environ:
                return os.environ[var]
            if unset is not None and _is_secret(_path_parts(path)):
                unset[path] = var
                return UNSET_STAND_IN
            raise ConfigError(_unset_message(path, var))
    return obj


def _unset_message(path: str, var: str) -> str:
    return (f"{path}: refers to ${{{var}}} but the environment variable {var} is not set:"
            f" export {var}=... and run the command again, or write the value in cluster.yaml")


# Checked in a secret's place while its variable is unset: a value every secret key accepts
# (printable ASCII, 8-63 characters, a token's alphabet), replaced by an UnsetSecret once checked.
UNSET_STAND_IN = "ceilUnsetEnvironmentVariable0000"


class UnsetSecret(SecretStr):
    """A secret whose `${VAR}` was not set when a command that does not use it loaded the file:
    reading it fails with the message a bake gives, so no command can use the stand-in."""

    def __init__(self, path: str, var: str):
        super().__init__("")
        self._message = _unset_message(path, var)

    def get_secret_value(self) -> str:
        raise ConfigError(self._message)

    def __bool__(self) -> bool:  # set, just not here: never taken for an empty value
        return True

    def __len__(self) -> int:
        raise ConfigError(self._message)


def _is_secret(loc: tuple) -> bool:
    info = _field_info(loc)
    return info is not None and SecretStr in (info.annotation, *typing.get_args(info.annotation))


def _with_unset_secrets(model: BaseModel, unset: dict[str, str]) -> BaseModel:
    for path, var in unset.items():
        model = _replace(model, _path_parts(path), UnsetSecret(path, var))
    return model


def _replace(model: BaseModel, parts: tuple, value: Any) -> BaseModel:
    head, *rest = parts
    inner = value if not rest else _replace(getattr(model, head), tuple(rest), value)
    return model.model_copy(update={head: inner})


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue  # pydantic's internal step names, not keys
        else:
            out += f".{part}" if out else str(part)
    return out


def _yaml_line(doc: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node along `loc` (so errors point into the file); None
    when not even its first key is in the file (the top of the file would point nowhere useful)."""
    node, line = doc, None
    for part in loc:
        if node is None:
            break
        if node is not doc:
            line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


PATH_IN_MSG_RE = re.compile(r"^((?:[a-z_]+(?:\[\d+\])?\.)*[a-z_]+(?:\[\d+\])?):? ")


def _path_parts(dotted: str) -> tuple:
    parts: list = []
    for m in re.finditer(r"([a-z_]+)|\[(\d+)\]", dotted):
        parts.append(m.group(1) if m.group(1) else int(m.group(2)))
    return tuple(parts)


def _field_info(loc: tuple) -> FieldInfo | None:
    """The model field a pydantic error location points at, walking Cluster's annotations
    through optional sections and lists (for its description: what the key expects)."""
    model: Any = Cluster
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = _inner_model(info.annotation)
    return info


def _inner_model(annotation: Any) -> Any:
    """The model inside `X | None`, `list[X]` or `Annotated[X, ...]`, if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


# pydantic's own words for these, which name no fix, are replaced by ours.
PLAIN_WORDS = {
    "ip_v4_address": "is not an IPv4 address (four numbers 0-255, e.g. 10.42.0.1)",
    "ip_v4_network": "is not an IPv4 network (an address and a prefix length, e.g. 10.42.0.0/24)",
    "bool_parsing": "is not true or false",
    "int_parsing": "is not a whole number",
    "string_pattern_mismatch": "does not have the form this key takes",
}


# A value of the wrong shape: pydantic said "Input should be a valid dictionary or instance of VPN"
# (a class name the file never shows) and "List should have at least 1 item after validation".
SHAPE_WORDS = {
    "model_type": "is not a section: write its keys under it, indented (key: value), as cluster.example.yaml does",
    "dict_type": "is not a section: write its keys under it, indented (key: value), as cluster.example.yaml does",
    "list_type": "is not a list: write [a, b], or one '- item' per line under the key",
    "too_short": "is empty: give at least one, or leave the key out for its default",
}


def _plain_words(err: dict) -> str:
    """What was wrong with the value, and the fix, in our words where pydantic's name none."""
    if err["type"] == "ip_v4_network":
        try:  # an address and a prefix, just not the network's own address: say which one it is
            network = ipaddress.IPv4Network(str(err["input"]), strict=False)
        except ValueError:
            pass
        else:
            return f"has host bits set (it is an address inside the network, not the network): write {network}"
    return PLAIN_WORDS.get(err["type"], err["msg"])


def _describe(err: dict, doc: yaml.Node | None) -> list[str]:
    """One line per problem (a cross-field check may report several, one per line)."""
    loc = _format_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    raw_loc = tuple(p for p in err["loc"] if not str(p).startswith("function"))
    # Cross-field checks name their own (more precise) key path at the start of each line.
    lines = msg.splitlines()
    own = [_own_path(line) for line in lines]
    if err["type"] == "value_error" and all(own):
        return [_own_path_line(m, line, doc) for m, line in zip(own, lines)]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key (typo?): {loc.rsplit('.', 1)[-1]!r} is not a setting here"
    elif err["type"] == "missing":
        msg = "is required but missing"
    elif err["type"] in SHAPE_WORDS:  # the value itself (a whole section, maybe) is on the line named
        msg = SHAPE_WORDS[err["type"]]
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        shown = "<secret>" if "psk" in loc or "token" in loc else repr(err["input"])
        msg = f"{shown}: {_plain_words(err)}"
        info = _field_info(raw_loc)
        if info is not None and info.description:
            msg += f" (expected: {info.description})"
        elif err["type"] == "string_pattern_mismatch":
            msg += f" (expected: the pattern {err.get('ctx', {}).get('pattern')})"
    line = _yaml_line(doc, raw_loc)
    where = f" (line {line})" if line else ""
    return [f"{loc or '(top level)'}{where}: {msg}"]


def _own_path(line: str) -> re.Match | None:
    """The key path a cross-field check's line starts with: dotted or indexed, or a bare top-level
    key only when a colon follows ("nodes: no node has ...", not "tunnel is enabled but ...")."""
    m = PATH_IN_MSG_RE.match(line)
    if not m or m.group(1).split(".")[0].split("[")[0] not in Cluster.model_fields:
        return None
    if "." in m.group(1) or "[" in m.group(1) or m.group(0).endswith(": "):
        return m
    return None


def _own_path_line(m: re.Match, line: str, doc: yaml.Node | None) -> str:
    at = _yaml_line(doc, _path_parts(m.group(1)))
    where = f" (line {at})" if at else ""
    return f"{m.group(1)}{where}: {line[m.end():]}"


def duplicate_keys(doc: yaml.Node | None, path: str = "") -> list[str]:
    """Keys written twice in one mapping: YAML loaders keep the last silently (a second `nodes:`
    block would drop the first's nodes), so each is an error naming both lines."""
    problems: list[str] = []
    if isinstance(doc, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in doc.value:
            name = str(key.value)
            here = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if name in seen:
                problems.append(f"{here} (line {line}): written twice (first at line {seen[name]}): YAML"
                                " keeps only the last one; merge the two into one")
            else:
                seen[name] = line
            problems += duplicate_keys(value, here)
    elif isinstance(doc, yaml.SequenceNode):
        for i, item in enumerate(doc.value):
            problems += duplicate_keys(item, f"{path}[{i}]")
    return problems


def parse_cluster(text: str, source: str = "cluster.yaml", env_optional: bool = False) -> Cluster:
    try:
        doc, data = yamlfile.parse(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top, found {type(data).__name__}")
    twice = duplicate_keys(doc)
    if twice:
        raise ConfigError(f"{source} is not valid:\n  " + "\n  ".join(twice))
    # A secret's unset ${VAR} is checked as a stand-in; for a command that needs the secrets (the
    # bake) each is a problem of the report, beside the file's others, not one alone before them.
    unset: dict[str, str] = {}
    data = _resolve_env(data, unset=unset)
    missing = [] if env_optional else [_unset_message(path, var) for path, var in unset.items()]
    # The features' checks (`checkable`) read secrets too (the WiFi passphrase's length): they get
    # the stand-ins, and what they say of an unset one is left out with the keys set aside.
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as e:
        checkable, aside = _checkable(copy.deepcopy(data), e)
        lines = missing + [_shortened(line) for line in _every_problem(data, e, doc)]
        raise ConfigError(f"{source} is not valid:\n  " + "\n  ".join(lines),
                          checkable=checkable if missing else checkable and _with_unset_secrets(checkable, unset),
                          aside=(*aside, *(unset if missing else ()))) from None
    if missing:
        raise ConfigError(f"{source} is not valid:\n  " + "\n  ".join(missing), checkable=cluster,
                          aside=tuple(unset)) from None
    return _with_unset_secrets(cluster, unset)


# A value quoted in a message, longer than anything a key takes (a pasted blob of thousands of
# characters filled the screen, the key and the fix lost among it): shown by its start and length.
# A quote opens at the start or after a space, bracket, brace, `=`, `,`, `:` or backtick, and
# closes before the end, a space or punctuation; inside, repr's backslash escapes (a value with
# both quote kinds) are part of the value. Otherwise a short value's closing quote and an
# apostrophe in the fix ("the network's name") were taken for a long value, and the fix was cut.
LONG_QUOTED_RE = re.compile(r"""(?<![^\s(\[{=,:`])(?:'(?:[^'\\\n]|\\.){100,}'|"(?:[^"\\\n]|\\.){100,}")(?![^\s:,;.!?)\]}`])""")


def _shortened(line: str) -> str:
    return LONG_QUOTED_RE.sub(lambda m: f"{m.group(0)[:61]}...{m.group(0)[0]} ({len(m.group(0)) - 2} characters)", line)


# Stand-in for a node name that failed its own check, so the checks across nodes still run.
SET_ASIDE_NAME = "set-aside-{index}"
# What the checks across keys read (Cluster._consistent, the nodes' free addresses, the router's
# interfaces), as key paths (None: any index). Everything else may be set aside when refused: the
# rest is then checked as written. These may not: with `network.dhcp_start` dropped for its
# default, a node's address would be checked against a pool the user never wrote; with a
# misspelt role, the count of servers would not be the user's. A node's name, address and MAC are
# read across nodes but safe: a name gets a stand-in, an address left out takes a free one, and
# each node is checked against the network, never the other way round.
READ_ACROSS = (("nodes", None, "role"), ("network",), ("kubernetes", "cluster_cidr"), ("kubernetes", "service_cidr"),
               ("kubernetes", "datastore_backups"), ("vpn", "enabled"), ("vpn", "subnet"), ("router", "usb_drive"),
               ("router", "lan_interface"), ("router", "uplink", "type"), ("router", "uplink", "interface"),
               ("registry", "enabled"), ("name",), ("domain",), ("flavor",))
# Required values no check across keys reads, and what stands in for them when refused (dropped,
# their section would be refused for lacking them, a problem the user does not have).
STAND_INS = {("router", "uplink", "wifi", "country"): "GB", ("router", "uplink", "wifi", "ssid"): "set-aside",
             ("router", "uplink", "wifi", "psk"): "set-aside-passphrase"}


def _read_across(path: tuple) -> bool:
    """Whether a check across keys reads `path`'s value, or one inside it: `path` and a READ_ACROSS
    entry agree as far as the shorter goes (one lies under the other)."""
    return any(all(a is None or a == b for a, b in zip(pre, path)) for pre in READ_ACROSS)


def _safe_to_set_aside(path: tuple, unknown: bool = False) -> bool:
    """Whether `path`'s value may be set aside for the next round. Not an unknown key at the top
    level (`nodez:` would check the default nodes the user meant to replace)."""
    return bool(path) and not _read_across(path) and not (unknown and len(path) == 1)


def _every_problem(data: dict, error: ValidationError, doc: yaml.Node | None) -> list[str]:
    """Every problem of the file in one report. pydantic runs a model's checks across its fields
    (the DHCP pool against the nodes' addresses, ...) only once each field passed its own, so a
    file with a bad node name and a node inside the pool said one, then the other on the next
    try. Each value refused is set aside (an optional key dropped, a bad node name replaced by a
    stand-in) and the rest checked again, a few rounds deep; what a later round finds is kept
    unless it concerns a key set aside or names a stand-in (its problem may be the stand-in's),
    so "no node has role 'server'" comes with a bad node name. Only values no other check reads
    are set aside (not READ_ACROSS): with `network.dhcp_start` dropped for its default, a node's
    address would be checked against a pool the user never wrote."""
    lines = _lines_of(error, doc)
    aside: list[tuple] = []
    dropped: list[tuple] = []
    for _ in range(4):
        fresh = [path for err in error.errors(include_url=False)
                 if (path := _set_aside(data, _data_path(err["loc"]), unknown=err["type"] == "extra_forbidden"))
                 is not None]
        if not fresh:
            break
        aside += fresh
        # A value dropped (not stood in for) may make its own section's checks complain of it by
        # name ("ddns is enabled but ddns.zone is missing", when the zone given was refused): not the
        # user's problem. Other lines about that section stay ("ddns.api_token is missing" too).
        dropped += [path for path in fresh if path not in STAND_INS and path[-1:] != ("name",)]
        try:
            Cluster.model_validate(data)
            break
        except ValidationError as again:
            error = again
        for line in _lines_of(error, doc):
            key = _path_parts(line.split(" ", 1)[0].rstrip(":")) if not line.startswith("(") else ()
            related = (any(key[:len(a)] == a for a in aside) or SET_ASIDE_NAME.format(index="") in line
                       or any(_format_loc(a) in line for a in dropped))
            if not related and line not in lines:
                lines.append(line)
    return lines


def _checkable(data: dict, error: ValidationError) -> tuple[Cluster | None, tuple[str, ...]]:
    """The cluster with every refused value set aside, wherever it is (an optional key dropped,
    a required one's section with it), for the features' checks of the rest, and the keys set
    aside; (None, ()) when no valid cluster is left. Unlike _every_problem's rounds, any key may
    go here: a feature's problem with a key set aside, or under one, is not reported."""
    aside: list[tuple] = []
    for _ in range(6):
        fresh = [path for err in error.errors(include_url=False) for where in _named_in(err)
                 if (path := _set_aside(data, where, anywhere=True)) is not None]
        if not fresh:
            return None, ()
        aside += fresh
        if any(_read_across(path) for path in aside):
            # Read by the checks across keys, the features' too (the flavor by nearly every one, the
            # roles counted, the LAN's ranges against the trusted networks): their defaults would
            # make up problems the user does not have.
            return None, ()
        try:
            return Cluster.model_validate(data), tuple(dict.fromkeys(_format_loc(path) for path in aside))
        except ValidationError as again:
            error = again
    return None, ()


def _named_in(err: dict) -> list[tuple]:
    """The key paths an error is about: its location, or for a check across keys (the whole
    cluster's) each key its lines start with, below a top-level section (`nodes[1].ip`, not
    `nodes`: a whole section set aside leaves nothing the user wrote to check)."""
    path = _data_path(err["loc"])
    if path or err["type"] != "value_error":
        return [path]
    named = [_path_parts(m.group(1)) for line in err["msg"].removeprefix("Value error, ").splitlines()
             if (m := _own_path(line))]
    # Not what checks across keys read (a LAN range set aside would have the features judge the
    # default one: "overlaps network.lan_cidr 10.42.0.0/24" for a file that never says so).
    return [p for p in named if len(p) >= 2 and _safe_to_set_aside(p)]


def _lines_of(error: ValidationError, doc: yaml.Node | None) -> list[str]:
    return [line for err in error.errors(include_url=False) for line in _describe(err, doc)]


def _data_path(loc: tuple) -> tuple:
    """The keys and indexes of a pydantic location, without its internal step names."""
    return tuple(p for p in loc if isinstance(p, int)
                 or not (str(p).startswith("function") or "[" in str(p)))


def _set_aside(data: dict, path: tuple, anywhere: bool = False, unknown: bool = False) -> tuple | None:
    """Take the value at `path` out of `data` (in place) so the other checks can run; the path set
    aside, or None where nothing can be (what checks across keys read unless `anywhere`, or a
    value whose section is required all the way up). `unknown`: the key is not a setting."""
    if not (anywhere or _safe_to_set_aside(path, unknown)):
        return None
    while path and (anywhere or _safe_to_set_aside(path, unknown)):
        parent: Any = data
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return None
        leaf = path[-1]
        if path[0] == "nodes" and len(path) == 3 and leaf == "name" and isinstance(parent, dict):
            parent["name"] = SET_ASIDE_NAME.format(index=path[1])
            return path
        if path in STAND_INS and isinstance(parent, dict) and not unknown:
            parent[leaf] = STAND_INS[path]
            return path
        if isinstance(parent, dict) and leaf in parent:
            info = _field_info(path)
            if info is None or not info.is_required():
                del parent[leaf]  # an unknown key, or one whose default changes no other check
                return path
        elif isinstance(parent, dict):  # missing: its section goes, if that one may
            pass
        else:
            return None
        path = path[:-1]
    return None


def load_cluster(path: Path, env_optional: bool = False) -> Cluster:
    """The cluster `path` describes. `env_optional`: for the commands that never read a secret
    written as `${VAR}` (status, ssh, kubeconfig, ...): they run without it exported, and reading
    one anyway fails as a bake does. The bake itself checks every variable before it starts."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give the cluster description in it, e.g. --config {path / 'cluster.yaml'}")
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: copy cluster.example.yaml to {path} and edit it,"
            " or run `python bake.py init`"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): save it"
                          " as UTF-8 in your editor") from None
    return parse_cluster(text, str(path), env_optional)


def config_hash(path: Path) -> str:
    """sha256 of the config file as written (recorded in each image's manifest)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
