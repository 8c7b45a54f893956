"""`bake.py datastore backup|restore`: the datastore of a one-server cluster, kept off the card.

With one server, k3s keeps the whole cluster in SQLite (kine) on that server's card: losing the
card loses the cluster. k3s's own answer (docs.k3s.io/datastore/backup-restore): copy
/var/lib/rancher/k3s/server/db/, keep the server token, and put both back on a new server. ceil
already keeps the token (secrets/k3s/, baked into every server image), so what remains is the
database:

- `backup` takes a consistent copy over SSH while k3s runs, with SQLite's online backup (a plain
  copy of a WAL database that is being written can miss or tear its latest transactions), and
  writes it into secrets/backups/ (0600: it holds every Secret of the cluster, encrypted with a
  key the datastore itself keeps under the token).
- `restore FILE` checks the file and stages it in secrets/; the next bake of the server carries it
  like its other secrets (moved off the FAT partition at first boot, then scrubbed), and the
  k3s-server step installs it as state.db before k3s first starts on that card. A card whose k3s
  already has a datastore never has it replaced.

Clusters with three or five servers run embedded etcd: they survive a lost server, and k3s's
`etcd-snapshot` covers them; these commands refuse them.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import click

from .addons.cli import Context
from .config import Cluster
from .errors import CeilError
from .k3s.digests import PIN_HINT
from .k3s.node_config import SECRETS_ON_TARGET, init_server, servers
from .secrets import SecretStore
from . import snapshot
from .compat import minor, version_key
from .k3s.upgrade import step_problem

DB_ON_SERVER = "/var/lib/rancher/k3s/server/db/state.db"
RESTORE_SECRET = "k3s/restore/state.db"  # staged in secrets/, and under /etc/ceil/secrets/ on the card
BACKUPS = "backups"

# The snapshot's HMAC key, on the server and the router (ceil.snapshot says why it is signed).
HMAC_SECRET = "datastore/snapshot-hmac"
PULL_KEY_SECRET = "datastore/pull_ed25519"  # the router's key, accepted by the server's ceil-backup
PULL_USER = "ceil-backup"
ON_ROUTER = "/var/lib/ceil/datastore"  # the router's snapshots (ceil-datastore-pull)

# Run as root on the server: piped to `python3 -` by `datastore backup`, and installed as
# /usr/local/lib/ceil/ceil-datastore-snapshot, the one command the router's pull key may run
# (--signed). SQLite's online backup of the live database into a root-only temporary file beside
# it, written to stdout, then removed. Standard library only.
BACKUP_SCRIPT = f"""
import hmac, os, shutil, sqlite3, sys, tempfile
db = {DB_ON_SERVER!r}
if not os.path.isfile(db):
    print("no k3s SQLite datastore at " + db + " yet (is this the server, and has k3s started?)", file=sys.stderr)
    sys.exit({snapshot.NOT_YET})
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(db), prefix=".ceil-backup-")
os.close(fd)
try:
    src = sqlite3.connect(db, timeout=60)
    dst = sqlite3.connect(tmp)
    src.backup(dst)
    dst.close()
    src.close()
    out = sys.stdout.buffer
    if "--signed" in sys.argv[1:]:
        with open("{SECRETS_ON_TARGET}/{HMAC_SECRET}", "rb") as f:
            mac = hmac.new(f.read().strip(), digestmod="sha256")
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                mac.update(block)
        out.write({snapshot.HEADER!r} + b" %d %s\\n" % (os.path.getsize(tmp), mac.hexdigest().encode()))
    with open(tmp, "rb") as f:
        shutil.copyfileobj(f, out)
finally:
    os.unlink(tmp)
"""


def runs_sqlite(cluster: Cluster) -> bool:
    """One server: k3s keeps the cluster in SQLite (more servers run embedded etcd)."""
    return len(servers(cluster)) == 1


def check_sqlite_cluster(cluster: Cluster) -> None:
    if not runs_sqlite(cluster):
        raise CeilError(
            f"this cluster has {len(servers(cluster))} servers: its datastore is embedded etcd, which"
            " survives a lost server; back it up with `k3s etcd-snapshot save` on a server instead")


def check_snapshot(path: Path) -> int:
    """The number of rows in kine's table, if `path` is a whole SQLite database k3s wrote;
    CeilError naming the file and what is wrong otherwise."""
    if path.is_dir():
        raise CeilError(f"{path} is a folder: give a snapshot file from `python bake.py datastore backup`"
                        " (they are in secrets/backups/)")
    try:
        return snapshot.check(str(path))
    except ValueError as e:
        raise CeilError(f"{e}: give a snapshot from `python bake.py datastore backup`") from None


PULL_ON_ROUTER = "/usr/local/lib/ceil/ceil-datastore-pull"  # ceil/snapshot.py, installed by the bake


SERVED = re.compile(r"^serving \S+-(\d{8}T\d{6}Z)\.db$", re.M)  # what the router's pull says it sends


def backup(cluster: Cluster, store: SecretStore, via: str | None, from_router: bool = False,
           previous: bool = False, run=subprocess.run, now: float | None = None) -> tuple[Path, int]:
    """Take the server's datastore into secrets/backups/; (its path, kine's row count). With
    `from_router`, the newest snapshot the router pulled instead (the server may be dead), or with
    `previous` the newest of a datastore the server no longer runs (ceil.snapshot: a server
    replaced without a restore starts an empty one, and the router sets the old one's aside).
    A snapshot from the router is named by the time the router took it, not by today's."""
    from .workstation import ssh_argv

    check_sqlite_cluster(cluster)
    server = init_server(cluster).name
    if previous and not from_router:
        raise CeilError("--previous names a snapshot the router set aside: use it with --from-router")
    if from_router and not cluster.datastore_backups_on:
        raise CeilError("kubernetes.datastore_backups.enabled is false: the router keeps no snapshots;"
                        " take one from the server (without --from-router) or turn them on and re-bake")
    # The router writes its newest snapshot; the server runs the script it is sent.
    which = "--previous" if previous else "--newest"
    target, command, script = (("router", f"sudo python3 {PULL_ON_ROUTER} {which}", None) if from_router
                               else (server, "sudo python3 -", BACKUP_SCRIPT.encode()))
    source = "the router" if from_router else server
    argv = ssh_argv(cluster, target, via, (command,), ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10"))
    try:
        done = run(argv, input=script, capture_output=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise CeilError(f"{source} sent no whole snapshot within 900 s: nothing was written; try again,"
                        f" and if it happens again look at it (`python bake.py ssh {target}`)") from None
    said = done.stderr.decode(errors="replace").strip() or "no message"
    if done.returncode == snapshot.SSH_FAILED:  # ssh's own failure: the script never ran
        raise CeilError(f"could not reach {source} over SSH ({said}): from outside the cluster LAN, use"
                        " the VPN or --via ADDRESS (the router's address; README, \"Your way in\")")
    if done.returncode != 0:
        raise CeilError(f"backup from {source} failed ({done.returncode}): {said}")
    served = SERVED.search(said) if from_router else None
    stamp = served.group(1) if served else time.strftime(snapshot.STAMP, time.gmtime(now))
    name = f"{BACKUPS}/{cluster.name}-{server}-{stamp}.db"
    partial = f"{name}.partial"
    store.write(partial, done.stdout)
    try:
        rows = check_snapshot(store.path(partial))
    except CeilError as e:
        store.path(partial).unlink(missing_ok=True)
        raise CeilError(f"what {source} sent is not a usable snapshot: {e}") from None
    os.replace(store.path(partial), store.path(name))
    return store.path(name), rows


def stage_restore(cluster: Cluster, store: SecretStore, snapshot: Path) -> int:
    """Check `snapshot` and stage it for the next bake of the server; kine's row count."""
    check_sqlite_cluster(cluster)
    rows = check_snapshot(snapshot)
    check_restore_version(cluster, snapshot)
    store.write(RESTORE_SECRET, snapshot.read_bytes())
    return rows


def snapshot_version(cluster: Cluster, path: Path) -> str | None:
    """The k3s version that wrote the snapshot at `path`: its server's, as its Node object says;
    None where it holds no Node of the cluster's servers (taken before the server registered)."""
    versions = snapshot.k3s_versions(str(path))  # by Node name: the machine's host name
    found = [versions[h] for s in servers(cluster) if (h := cluster.hostname(s.name)) in versions]
    return max(found, key=version_key) if found else None


def check_restore_version(cluster: Cluster, path: Path) -> None:
    """k3s migrates a datastore one minor version at a time and never back: the server that
    restores the snapshot at `path` must run the version that wrote it or the next minor one
    (a ceil update can move the default kubernetes.k3s_version further than that)."""
    wrote = snapshot_version(cluster, path)
    target = cluster.kubernetes.k3s_version
    if wrote and step_problem("", wrote, target):
        major, low = minor(wrote)
        raise CeilError(
            f"the snapshot {path.name} was written by k3s {wrote}, and the server would restore it with"
            f" kubernetes.k3s_version {target}: k3s migrates a datastore one minor version at a time and"
            f" never back. Set kubernetes.k3s_version to a v{major}.{low} or v{major}.{low + 1} release for the"
            f" restore ({wrote} itself, say) {PIN_HINT}, bake and boot the server, then move on with `python bake.py"
            " k3s upgrade`, one minor version at a time")


def check_staged_restore(cluster: Cluster, store: SecretStore, roles: list[str]) -> None:
    """The bake of the server that will restore a staged snapshot, against the k3s it is baked
    with now (cluster.yaml may have changed since the snapshot was staged)."""
    if runs_sqlite(cluster) and store.exists(RESTORE_SECRET) and init_server(cluster).name in roles:
        check_restore_version(cluster, store.path(RESTORE_SECRET))


def staged_restore(store: SecretStore) -> Path | None:
    return store.path(RESTORE_SECRET) if store.exists(RESTORE_SECRET) else None


def restore_secret_files(cluster: Cluster, store: SecretStore) -> dict[str, bytes]:
    """The staged snapshot, for the init server's payload (nothing when none is staged)."""
    if not runs_sqlite(cluster) or not store.exists(RESTORE_SECRET):
        return {}
    return {RESTORE_SECRET: store.read(RESTORE_SECRET)}


def restore_notice(cluster: Cluster, store: SecretStore, role: str) -> str | None:
    """What the bake says when `role`'s image will carry a staged snapshot."""
    if (role == "router" or not runs_sqlite(cluster) or not store.exists(RESTORE_SECRET)
            or cluster.node(role) != init_server(cluster)):
        return None
    staged = store.path(RESTORE_SECRET)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(staged.stat().st_mtime))
    return (f"restoring: this image starts k3s on the datastore snapshot staged {when} ({staged});"
            " `python bake.py datastore restore --cancel` drops it")


def datastore_options(command):
    """--config and --secrets (no kubeconfig: these work over SSH, also when the API server is down)."""
    command = click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
                           help="Secrets directory (default: secrets/ next to the config).")(command)
    return click.option("--config", "config_path", default="cluster.yaml", show_default=True,
                        type=click.Path(path_type=Path), help="The cluster description.")(command)


@click.group("datastore")
def datastore_group() -> None:
    """Back up the datastore of a one-server cluster, and restore it onto a new server card."""


@datastore_group.command("backup")
@datastore_options
@click.option("--via", metavar="ADDRESS", help="Reach the server through the router at this address (see `bake.py ssh`).")
@click.option("--from-router", is_flag=True,
              help="Fetch the newest snapshot the router pulled (every kubernetes.datastore_backups.every_hours),"
                   " e.g. when the server's card is dead.")
@click.option("--previous", is_flag=True,
              help="With --from-router: the newest snapshot of the datastore the server ran before it was"
                   " re-flashed or reset without a restore (the router sets it aside and keeps it).")
def backup_command(config_path: Path, secrets_path, via, from_router: bool, previous: bool) -> None:
    """Copy the server's k3s datastore (SQLite, taken consistently while k3s runs) into
    secrets/backups/. Keep that folder safe: it holds every Secret of the cluster."""
    from .workstation import pin_from_secrets

    obj = Context(config_path, secrets_path, None)
    pin_from_secrets(obj.cluster, obj.secrets)
    path, rows = backup(obj.cluster, obj.store, via, from_router=from_router, previous=previous)
    click.echo(f"wrote {path} ({path.stat().st_size} bytes, {rows} datastore rows)")
    click.echo(f"to restore it onto a new card: python bake.py datastore restore {path}")


@datastore_group.command("restore")
@datastore_options
@click.option("--cancel", is_flag=True, help="Drop the staged snapshot: the server's next bake starts an empty datastore.")
@click.argument("snapshot", type=click.Path(path_type=Path), required=False)
def restore_command(config_path: Path, secrets_path, cancel: bool, snapshot: Path | None) -> None:
    """Stage SNAPSHOT (from `datastore backup`) for the server's next bake: the card flashed from
    that image starts k3s on the restored datastore. A card whose k3s already has one keeps it."""
    obj = Context(config_path, secrets_path, None)
    server = init_server(obj.cluster).name
    if snapshot is None and not cancel:
        raise click.UsageError("name the snapshot to restore (a file in secrets/backups/), or --cancel")
    store = obj.store
    # A bake running now reads the staged snapshot twice (its notice, then the server's payload):
    # staged or dropped between the two, the image and what the bake said would differ.
    with store.held():
        if cancel:
            staged = staged_restore(store)
            if staged:
                staged.unlink()
            click.echo("no snapshot staged" if not staged else f"dropped the staged snapshot ({staged})")
            return
        rows = stage_restore(obj.cluster, store, snapshot)
    click.echo(f"staged {snapshot} ({rows} datastore rows) for {server}")
    click.echo(f"next: python bake.py --role {server}, flash it, and boot it in place of the old card")
