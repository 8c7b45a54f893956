"""The project's own YAML catalogs (flavors, features, add-ons), each file parsed once per process.

A bake of five roles parsed every feature.yaml ten times and every flavor file several times, with
PyYAML's pure-Python parser: a third of a small bake's time. Files are remembered by path, size and
mtime (an edited file is read again) and parsed with libyaml where PyYAML has it. Callers must not
change what they get: it is shared.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: Path) -> object:
    st = os.stat(path)
    return _load(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1024)
def _load(path: str, mtime_ns: int, size: int) -> object:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_LOADER)


def parse(text: str) -> tuple[yaml.Node | None, object]:
    """A text's node tree (for line numbers) and its data, with libyaml where PyYAML has it
    (cluster.yaml, on every command: 18 ms with the pure-Python parser, 1.6 ms with libyaml)."""
    return yaml.compose(text, Loader=_LOADER), yaml.load(text, Loader=_LOADER)


def parse_all(text: str) -> list:
    """Every document of a rendered multi-document text (add-on manifests), with libyaml where
    PyYAML has it: a bake parsed its add-ons' manifests with the pure-Python parser, about a
    tenth of a five-role bake of a small image."""
    return list(yaml.load_all(text, Loader=_LOADER))
