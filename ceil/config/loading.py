"""Loading cluster.yaml: `${ENV}` references, YAML parsing, and errors that point into the file.

A pydantic error becomes one line naming the dotted key, the YAML line it sits on and, except
for secrets, the value found. `config_hash` fingerprints the file for each image's manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .cluster import Cluster

ENV_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _resolve_env(obj: Any, path: str = "") -> Any:
    """Replace `${VAR}` strings by the environment's value; a missing variable is an error."""
    if isinstance(obj, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_env(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str):
        m = ENV_REF_RE.match(obj.strip())
        if m:
            var = m.group(1)
            if var not in os.environ:
                raise ConfigError(
                    f"{path}: refers to ${{{var}}} but the environment variable {var} is not set:"
                    f" export {var}=... before baking, or write the value in cluster.yaml"
                )
            return os.environ[var]
    return obj


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
    """1-based line of the deepest YAML node along `loc` (so errors point into the file)."""
    node, line = doc, None
    for part in loc:
        if node is None:
            break
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


def _describe(err: dict, doc: yaml.Node | None) -> str:
    loc = _format_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    raw_loc = tuple(p for p in err["loc"] if not str(p).startswith("function"))
    # Cross-field checks name their own (more precise) key path at the start of the message.
    m = PATH_IN_MSG_RE.match(msg)
    if err["type"] == "value_error" and m and ("." in m.group(1) or "[" in m.group(1)) and (
        m.group(1).split(".")[0].split("[")[0] in Cluster.model_fields
    ):
        line = _yaml_line(doc, _path_parts(m.group(1)))
        where = f" (line {line})" if line else ""
        return f"{m.group(1)}{where}: {msg[m.end():]}"
    if err["type"] == "extra_forbidden":
        msg = f"unknown key (typo?): {loc.rsplit('.', 1)[-1]!r} is not a setting here"
    elif err["type"] == "missing":
        msg = "is required but missing"
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        shown = "<secret>" if "psk" in loc or "token" in loc else repr(err["input"])
        msg = f"{shown}: {msg}"
    line = _yaml_line(doc, raw_loc)
    where = f" (line {line})" if line else ""
    return f"{loc or '(top level)'}{where}: {msg}"


def parse_cluster(text: str, source: str = "cluster.yaml") -> Cluster:
    try:
        doc = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top, found {type(data).__name__}")
    data = _resolve_env(data)
    try:
        return Cluster.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, doc) for err in e.errors(include_url=False)]
        raise ConfigError(f"{source} is not valid:\n  " + "\n  ".join(lines)) from None


def load_cluster(path: Path) -> Cluster:
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: copy cluster.example.yaml to {path} and edit it,"
            " or run `python bake.py init`"
        )
    return parse_cluster(path.read_text(), str(path))


def config_hash(path: Path) -> str:
    """sha256 of the config file as written (recorded in each image's manifest)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
