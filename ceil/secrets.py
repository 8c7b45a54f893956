"""secrets/: everything the cluster shares, generated once on the workstation and reused.

Files are 0600 in a 0700 directory next to cluster.yaml (git-ignored). A second bake reuses
them, so re-flashing one node keeps it in the same cluster, under the same SSH host key
(ceil/host_keys.py: made here, so the workstation knows it before the card first boots).
"""

from __future__ import annotations

import contextlib
import secrets as pysecrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CeilError
from .locks import exclusive
from .privatefile import write_private


# Hash cost of the htpasswd lines ceil makes. The registry and Traefik check the hash on every
# request (a page or a pull is dozens); the passwords are 128+ random bits, so the cost adds
# nothing against guessing, and cost 5 keeps a Pi (or an emulated one) from spending a second
# per request.
BCRYPT_COST = 5


def htpasswd_line(user: str, secret: str) -> str:
    """One htpasswd line in the form the distribution registry and Traefik both accept (bcrypt `$2a$`)."""
    import bcrypt

    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=BCRYPT_COST, prefix=b"2a"))
    return f"{user}:{hashed.decode()}\n"


# secrets/FORMAT (ceil/compat.py stamps it at a cluster's first bake): this folder holds a baked
# cluster's secrets.
FORMAT_FILE = "FORMAT"


# secrets/ folders whose .lock this process holds (SecretStore.held).
_HELD_HERE: set[Path] = set()


class SecretStore:
    def __init__(self, root: Path, make_new: bool = True):
        self.root = root
        # False for the workstation's commands on a cluster already baked (kubeconfig, vpn-client,
        # dashboard-token, ...): a CA, key or password they do not find is refused, never made,
        # since a new one could never match what the cluster's cards carry. Only the bake, `init`
        # and, before the first bake, `vpn-client` (the VPN server key) make secrets.
        self.make_new = make_new

    def path(self, name: str) -> Path:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"secret name {name!r} must be a relative path inside secrets/")
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def read(self, name: str) -> bytes:
        p = self.path(name)
        self._check_mode(p)
        return p.read_bytes()

    def refuse_new(self, name: str, what: str = "secret") -> None:
        """Called before the missing secret `name` is made: refused where only existing ones may be used."""
        if not self.make_new:
            raise CeilError(
                f"no {what} in {self.path(name)}: this command uses the secrets of a cluster already"
                f" baked. Run it in the folder you baked from (or give --secrets DIR), or bake first"
                f" (python bake.py --all): one made here would not match the cluster's"
            )

    def get_or_create(self, name: str, make: Callable[[], bytes | str], what: str = "secret",
                      any_command: bool = False) -> bytes:
        """The secret `name`, made by `make()` and stored the first time it is asked for.
        `any_command`: a secret no card holds yet may be made by any command in a baked cluster's
        folder (an add-on's password when the add-on is turned on after the bake: the command that
        applies it sets it); in another folder it would belong to no cluster, and is refused."""
        p = self.path(name)
        if p.is_file():
            return self.read(name)
        if not (any_command and self.path(FORMAT_FILE).is_file()):
            self.refuse_new(name, what)
        # Made under the lock, and only if the command waited for did not make it meanwhile: an
        # add-on's password shown by `addons` while a bake makes it would otherwise be two.
        with self.held():
            if not p.is_file():
                value = make()
                self.write(name, value.encode() if isinstance(value, str) else value)
        return self.read(name)

    def token(self, name: str, nbytes: int = 32, any_command: bool = False) -> str:
        """A random hex token stored under `name`."""
        return self.get_or_create(name, lambda: pysecrets.token_hex(nbytes), any_command=any_command).decode().strip()

    def write(self, name: str, data: bytes) -> None:
        """Write atomically with 0600 from the first byte (no window where others can read it).
        A file that already holds `data` is left alone: every bake records the cluster's format
        and each node's k3s version again, and an fsync after gigabytes of image written waits for
        the file system's journal (ext4 orders it behind their writeback: tenths of a second each)."""
        p = self.path(name)
        if p.is_file() and stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_bytes() == data:
            return
        self._ensure_dir(p.parent)
        write_private(p, data, durable=True)

    def write_pair(self, key: str, key_pem: bytes, crt: str, cert_pem: bytes) -> None:
        """A key and its certificate, key first: a crash in between leaves a key without a
        certificate, which the loader reports, never a certificate without its key. Under the
        lock, so two commands renewing one certificate at once cannot leave one's key beside the
        other's certificate."""
        with self.held():
            self.write(key, key_pem)
            self.write(crt, cert_pem)

    @contextlib.contextmanager
    def held(self, say: Callable[[str], None] | None = None) -> Iterator[None]:
        """secrets/ for one command that makes secrets at a time. Two bakes of a new cluster at
        once (two terminals, `make -j`) would each make a CA, a key and its certificate, and the
        files last written would not be the ones the other's images carry; two new VPN clients
        would get one address; an add-on's password shown while a bake makes it would be two. A
        second command says so (`say`, by default on stderr) and waits on secrets/.lock, which the
        kernel frees when the holder exits, however it exits. Within one process it nests (the
        bake holds it and makes secrets through get_or_create): flock locks belong to an open
        file, so a second open of .lock in the holder would wait on itself."""
        if not self.make_new and not self.root.is_dir():
            yield  # nothing to guard: the command will refuse, and must not leave a folder behind
            return
        self._ensure_dir(self.root)
        key = self.root.resolve()
        if key in _HELD_HERE:
            yield
            return
        with exclusive(self.root / ".lock", "the cluster's secrets are made by one command at a time", say):
            _HELD_HERE.add(key)
            try:
                yield
            finally:
                _HELD_HERE.discard(key)

    def _ensure_dir(self, d: Path) -> None:
        for part in reversed([d, *d.parents]):
            if part == self.root.parent or not str(part).startswith(str(self.root)):
                continue
            if not part.exists():
                part.mkdir(mode=0o700)
        gitignore = self.root / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("# ceil secrets: never commit these\n*\n")

    def _check_mode(self, p: Path) -> None:
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise CeilError(
                f"{p} is readable by other users (mode {mode:o}): secrets must be 0600;"
                f" fix with: chmod 600 {p}"
            )
