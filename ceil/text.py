"""Free text from cluster.yaml (an SSID, an SSH key's comment): the one check of what it may hold.

Every file such text reaches (cloud-init's network-config and user-data, authorized_keys) ends a
line where it finds a line break, and YAML knows more of them than \\n: libyaml and PyYAML break
lines at U+0085 (NEL), U+2028 and U+2029, and refuse the other C1 controls (U+009B is also a
terminal's CSI). So free text refuses Unicode's control characters (Cc: C0, DEL, C1) and its line
and paragraph separators (Zl, Zp). Fields the schema holds to a pattern need no such check.
"""

from __future__ import annotations

import unicodedata

REFUSED = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def check_one_line(value: str, fix: str, shown: str | None = None) -> str:
    """Return `value` if it holds none of the REFUSED characters, else raise ValueError naming the
    first one found and saying `fix`. `shown` replaces repr(value) in the message (a long key
    shortened)."""
    for c in value:
        kind = REFUSED.get(unicodedata.category(c))
        if kind:
            raise ValueError(f"{shown or repr(value)} holds {kind} (U+{ord(c):04X}): a line break or control"
                             f" character breaks the files it is written into; {fix}")
    return value


# What a terminal must not be handed from elsewhere (a node's status report): the refused kinds
# above, and format characters (Cf), among them the bidirectional overrides that show text in
# another order than it is (U+202E).
UNSHOWN = {"Cc", "Cf", "Zl", "Zp"}


def printable(value: str) -> str:
    """`value` without the characters a terminal would act on instead of showing."""
    return "".join(c for c in value if unicodedata.category(c) not in UNSHOWN)
