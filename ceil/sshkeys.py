"""SSH public keys: parse what the user pasted, so a typo fails at bake time, not at first login."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .text import check_one_line

# Security keys (FIDO) are valid OpenSSH keys that `cryptography` does not parse; check their framing.
SK_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


# The key in cluster.example.yaml: a real public key whose private half nobody kept. A card baked
# with it alone could never be logged into (no passwords), so it is refused by name.
EXAMPLE_PLACEHOLDER = "AAAAC3NzaC1lZDI1NTE5AAAAIFUrtLqlAlJ7FvIXmDDOS7u2//IvjwBPM6QbQj7mJErz"


def check_public_key(line: str) -> str:
    """Return `line` if it is an OpenSSH public key line, else raise ValueError saying why."""
    # A newline would smuggle a second line (with options such as command=) into authorized_keys,
    # and a C1 control in the comment would reach user-data, which YAML parsers then refuse.
    check_one_line(line, "give one key per list entry, each on one line, as its .pub file holds it",
                   shown=repr(_short(line)))
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(
            f"{_short(line)!r} is not an SSH public key: expected 'TYPE BASE64 [comment]',"
            " e.g. the contents of ~/.ssh/id_ed25519.pub"
        )
    if "PRIVATE KEY" in line:
        raise ValueError("this is a PRIVATE key: give the public key (.pub file) instead")
    kind, blob = parts[0], parts[1]
    if blob == EXAMPLE_PLACEHOLDER:
        raise ValueError(
            "this is cluster.example.yaml's placeholder key: nobody holds its private half, so the"
            " images would lock everyone out. Put your own public key here (the contents of"
            " ~/.ssh/id_ed25519.pub; make one with: ssh-keygen -t ed25519)")
    if kind in SK_TYPES:
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise ValueError(f"{_short(line)!r}: the key data is not valid base64") from None
        if kind.encode() not in raw[:64]:
            raise ValueError(f"{_short(line)!r}: key data does not match its type {kind}")
        return line
    try:
        load_ssh_public_key(f"{kind} {blob}".encode())
    except UnsupportedAlgorithm:
        raise ValueError(
            f"{_short(line)!r} is not an SSH public key: {kind!r} is not a key type"
            " (expected ssh-ed25519, ecdsa-sha2-*, ssh-rsa or sk-*)"
        ) from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{_short(line)!r} does not parse as an SSH public key ({e}): copy the whole line of"
                         " your .pub file again, e.g. the contents of ~/.ssh/id_ed25519.pub") from None
    return line


def _short(s: str) -> str:
    return s if len(s) <= 40 else s[:20] + "..." + s[-12:]
