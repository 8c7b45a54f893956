"""Each machine's SSH host key, made at the machine's first bake and kept in secrets/.

The workstation knows a card's host key before the card first boots, so its first SSH contact is
checked like every later one: nothing is trusted on first use, and a device on the LAN answering
in a machine's place is refused even when the workstation meets the machine for the first time
(a new laptop, an emptied ~/.cache, a card just re-flashed). The key is the machine's name's,
not the card's: every later bake of that name carries the same key, so a re-flashed or replaced
card keeps its identity and the workstation's known_hosts stays right.

On the card the private half travels like every other secret: in <boot>/ceil/secrets/, moved off
the FAT and scrubbed at first boot. `ceil-host-key` (firstboot/common/lib) puts it in /etc/ssh
before sshd serves anything, and again after Raspberry Pi OS's own first-boot key regeneration.
"""

from __future__ import annotations

from .errors import CeilError
from .secrets import SecretStore

# secrets/ssh-host/<machine name>: the OpenSSH private key, as ssh-keygen writes it.
SECRET_DIR = "ssh-host"
# Where the card's copy lies under <boot>/ceil/secrets/ (ceil-host-key reads it there).
CARD_SECRET = "ssh/ssh_host_ed25519_key"


def secret_name(name: str) -> str:
    return f"{SECRET_DIR}/{name}"


def new_key() -> bytes:
    """A new ed25519 private key, unencrypted, in OpenSSH's format (as `ssh-keygen -t ed25519` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())


def host_key(store: SecretStore, name: str) -> bytes:
    """`name`'s private host key (OpenSSH format), made the first time a card of that name is baked.
    A damaged one is refused here, before an image carries it (the card's install.sh would fail)."""
    key = store.get_or_create(secret_name(name), new_key, what=f"SSH host key of {name}")
    public_line(key, str(store.path(secret_name(name))))
    return key


def public_line(private_key: bytes, where: str = "") -> str:
    """The `ssh-ed25519 AAAA...` line of an OpenSSH private key (`where` names it in an error)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(private_key, password=None)
    except (ValueError, TypeError) as e:
        raise CeilError(f"{where or 'the SSH host key'} is not an unencrypted OpenSSH private key ({e}):"
                        " move it away and bake the machine again to make a new one, then flash it") from None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def pinned_keys(store: SecretStore, names: list[str]) -> dict[str, str]:
    """{name: public key line} for each of `names` whose host key secrets/ holds (a card baked
    before ceil made host keys has none: its key is recorded on first contact)."""
    return {name: public_line(store.read(secret_name(name)), str(store.path(secret_name(name))))
            for name in names if store.exists(secret_name(name))}
