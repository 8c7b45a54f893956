"""`bake.py datastore backup|restore` (ceil/datastore.py) and the server step's side of it
(ceil_restore_datastore in k3s-node.sh). The snapshot of a live kine database through the real
API server, and a server started on it, are in tests/apiserver/test_datastore_restore.py."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ceil import datastore
from ceil.config import parse_cluster
from ceil.errors import CeilError
from ceil.k3s import server as server_hooks
from ceil.secrets import SecretStore
from tests.bake_cli import bake_py, bake_py_waiting

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "firstboot/common/lib/ceil-lib.sh"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
CLUSTER = f"""ssh: {{authorized_keys: ["{KEY}"]}}
router: {{uplink: {{type: ethernet}}}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}, {{name: two, ip: 10.42.0.12}}]
"""
HA = CLUSTER.replace("{name: two, ip: 10.42.0.12}", "{name: two, role: server, ip: 10.42.0.12}, "
                     "{name: three, role: server, ip: 10.42.0.13}")


def kine_db(path: Path, rows: int = 3) -> sqlite3.Connection:
    """An SQLite database shaped like kine's (its table and WAL journal), left open."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)")
    db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)", [(f"/registry/k{i}", b"v") for i in range(rows)])
    db.commit()
    return db


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_snapshot_is_checked_before_anything_uses_it(tmp_path):
    kine_db(tmp_path / "good.db").close()
    assert datastore.check_snapshot(tmp_path / "good.db") == 3
    (tmp_path / "text.db").write_text("not a database\n" * 100)
    plain = sqlite3.connect(tmp_path / "other.db")
    plain.execute("CREATE TABLE t (x)")
    plain.commit()
    plain.close()
    (tmp_path / "backups").mkdir()
    for name, says in [("missing.db", "no such file"), ("text.db", "not an SQLite database"),
                       ("other.db", "no kine table"), ("backups", "is a folder: give a snapshot file")]:
        with pytest.raises(CeilError, match=says) as e:
            datastore.check_snapshot(tmp_path / name)
        assert name in str(e.value) and "datastore backup" in str(e.value)


def test_the_backup_script_copies_what_the_wal_holds(tmp_path):
    """The script the server runs: SQLite's online backup while kine holds the database open.
    The latest transactions are still in state.db-wal, where a plain copy of state.db misses them."""
    live = tmp_path / "db" / "state.db"
    live.parent.mkdir()
    writer = kine_db(live, rows=5)
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # these 5 are in state.db itself
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.executemany("INSERT INTO kine (name, value) VALUES (?, ?)", [(f"/registry/late{i}", b"v") for i in range(7)])
    writer.commit()
    script = datastore.BACKUP_SCRIPT.replace(datastore.DB_ON_SERVER, str(live))
    done = subprocess.run([sys.executable, "-"], input=script.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (tmp_path / "snap.db").write_bytes(done.stdout)
    assert datastore.check_snapshot(tmp_path / "snap.db") == 12
    assert sorted(p.name for p in live.parent.iterdir()) == ["state.db", "state.db-shm", "state.db-wal"]
    (tmp_path / "copy.db").write_bytes(live.read_bytes())  # what `cp state.db` would have taken
    assert datastore.check_snapshot(tmp_path / "copy.db") == 5
    writer.close()
    gone = datastore.BACKUP_SCRIPT.replace(datastore.DB_ON_SERVER, str(tmp_path / "none/state.db"))
    done = subprocess.run([sys.executable, "-"], input=gone.encode(), capture_output=True, timeout=60)
    # 75 (EX_TEMPFAIL): the router's pull takes it for "k3s has not started yet" (ceil/snapshot.py)
    assert done.returncode == 75 and b"no k3s SQLite datastore" in done.stderr and done.stdout == b""


def test_backup_lands_in_secrets_whole_or_not_at_all(tmp_path):
    kine_db(tmp_path / "server.db").close()
    cluster, store = parse_cluster(CLUSTER), SecretStore(tmp_path / "secrets")
    asked = []

    def server(argv, input, **kw):
        asked.append((argv, input))
        return subprocess.CompletedProcess(argv, 0, (tmp_path / "server.db").read_bytes(), b"")

    path, rows = datastore.backup(cluster, store, None, run=server, now=0)
    assert rows == 3 and path == store.path("backups/ceil-one-19700101T000000Z.db")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert asked[0][0][-2:] == ["ceil@10.42.0.11", "sudo python3 -"] and asked[0][1] == datastore.BACKUP_SCRIPT.encode()
    # What comes back is checked: a torn transfer leaves nothing behind, and says so.
    torn = lambda argv, input, **kw: subprocess.CompletedProcess(argv, 0, b"SQLite format 3\0" + b"\1" * 100, b"")  # noqa: E731
    with pytest.raises(CeilError, match="not a usable snapshot"):
        datastore.backup(cluster, store, None, run=torn, now=60)
    failed = lambda argv, input, **kw: subprocess.CompletedProcess(argv, 1, b"", b"no k3s SQLite datastore at x")  # noqa: E731
    with pytest.raises(CeilError, match="backup from one failed .1.: no k3s SQLite datastore"):
        datastore.backup(cluster, store, None, run=failed, now=120)
    unreachable = lambda argv, input, **kw: subprocess.CompletedProcess(argv, 255, b"", b"Connection timed out")  # noqa: E731
    with pytest.raises(CeilError, match="could not reach one over SSH .Connection timed out.*--via ADDRESS"):
        datastore.backup(cluster, store, None, run=unreachable, now=180)
    def silent(argv, input, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    with pytest.raises(CeilError, match="no whole snapshot within 900 s: nothing was written"):
        datastore.backup(cluster, store, None, run=silent, now=240)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_an_etcd_cluster_is_pointed_at_etcd_snapshot(tmp_path):
    kine_db(tmp_path / "good.db").close()
    for act in (lambda c, s: datastore.backup(c, s, None, run=None),
                lambda c, s: datastore.stage_restore(c, s, tmp_path / "good.db")):
        with pytest.raises(CeilError, match="3 servers: its datastore is embedded etcd.*etcd-snapshot"):
            act(parse_cluster(HA), SecretStore(tmp_path / "secrets"))


def test_a_staged_snapshot_goes_into_the_init_servers_secrets_only(tmp_path):
    kine_db(tmp_path / "good.db").close()
    cluster, store = parse_cluster(CLUSTER), SecretStore(tmp_path / "secrets")
    assert datastore.RESTORE_SECRET not in server_hooks.secret_files(cluster, "one", store)
    assert datastore.restore_notice(cluster, store, "one") is None
    datastore.stage_restore(cluster, store, tmp_path / "good.db")
    files = server_hooks.secret_files(cluster, "one", store)
    assert files[datastore.RESTORE_SECRET] == (tmp_path / "good.db").read_bytes()
    assert mode(store.path(datastore.RESTORE_SECRET)) == 0o600
    assert "restoring:" in datastore.restore_notice(cluster, store, "one")
    assert datastore.restore_notice(cluster, store, "two") is None
    assert datastore.restore_notice(cluster, store, "router") is None


def snapshot_written_by(path: Path, versions: dict[str, str]) -> Path:
    """A kine database holding Node objects whose kubelets report `versions` (as protobuf holds
    them: the version a plain string among the object's bytes), an older copy of each first."""
    db = kine_db(path)
    for name, version in versions.items():
        for v in ("v1.20.0+k3s1", version):
            db.execute("INSERT INTO kine (name, value) VALUES (?, ?)",
                       (f"/registry/minions/{name}", b"k8s\x00\n\x0cv1\x12\x04Node" + b"\x1a" + v.encode() + b"\x22\x05arm64"))
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("written_by, baked_with, refused", [
    ("v1.35.2+k3s1", "v1.35.2+k3s1", None), ("v1.35.2+k3s1", "v1.36.1+k3s1", None),
    ("v1.35.2+k3s1", "v1.37.0+k3s1", "one minor version at a time and never back"),
    ("v1.36.1+k3s1", "v1.35.4+k3s1", "one minor version at a time and never back")])
def test_a_snapshot_is_restored_only_by_a_k3s_that_can_migrate_it(tmp_path, written_by, baked_with, refused):
    """k3s migrates a datastore one minor version at a time and never back; a ceil update can move
    the default kubernetes.k3s_version two minor versions past the snapshot's."""
    # Node objects are named by the machine's host name (name + node), as k3s registers them.
    snap = snapshot_written_by(tmp_path / "snap.db", {"ceil-one": written_by, "ceil-two": "v1.34.0+k3s1"})
    cluster = parse_cluster(CLUSTER + f"kubernetes: {{k3s_version: {baked_with}}}\n")
    store = SecretStore(tmp_path / "secrets")
    assert datastore.snapshot_version(cluster, snap) == written_by  # the server's, not agent two's
    if refused is None:
        datastore.stage_restore(cluster, store, snap)
        datastore.check_staged_restore(cluster, store, ["one"])
        return
    with pytest.raises(CeilError, match=refused) as e:
        datastore.stage_restore(cluster, store, snap)
    said = str(e.value)
    assert f"the snapshot snap.db was written by k3s {written_by}" in said and "k3s upgrade" in said
    low = int(written_by.split(".")[1])
    assert f"a v1.{low} or v1.{low + 1} release for the restore" in said
    assert not store.exists(datastore.RESTORE_SECRET)


def test_a_bake_of_the_restoring_server_checks_the_staged_snapshot_against_its_k3s(tmp_path):
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    snapshot_written_by(tmp_path / "snap.db", {"ceil-one": "v1.36.1+k3s1"})
    assert bake_py("datastore", "restore", "snap.db", cwd=tmp_path).returncode == 0
    # a later edit (a release ceil has no digest for: the user pins it)
    (tmp_path / "cluster.yaml").write_text(CLUSTER + f"kubernetes: {{k3s_version: v1.38.0+k3s1, k3s_sha256: {'f' * 64}}}\n")
    done = bake_py("--role", "one", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "was written by k3s v1.36.1+k3s1" in said, said
    assert not (tmp_path / "out").exists()
    cluster = parse_cluster((tmp_path / "cluster.yaml").read_text())
    datastore.check_staged_restore(cluster, SecretStore(tmp_path / "secrets"), ["two"])  # not the restoring server


def test_restore_cli_refuses_a_bad_file_and_can_cancel(tmp_path):
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "notes.txt").write_text("hello\n")
    done = bake_py("datastore", "restore", "notes.txt", cwd=tmp_path)
    assert done.returncode != 0 and "notes.txt is not an SQLite database" in done.stderr
    assert not (tmp_path / "secrets" / datastore.RESTORE_SECRET).exists()
    kine_db(tmp_path / "snap.db").close()
    done = bake_py("datastore", "restore", "snap.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "staged snap.db (3 datastore rows) for one" in done.stdout and "--role one" in done.stdout
    done = bake_py("datastore", "restore", "--cancel", cwd=tmp_path)
    assert done.returncode == 0 and "dropped the staged snapshot" in done.stdout
    assert not (tmp_path / "secrets" / datastore.RESTORE_SECRET).exists()


def test_restore_waits_for_a_bake_that_holds_the_secrets(tmp_path):
    """A bake reads the staged snapshot for its notice and again for the server's payload; staged
    or dropped in between, the image and what the bake said differed. `datastore restore` waits on
    secrets/.lock, says so, and stages only after the bake."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    kine_db(tmp_path / "snap.db").close()
    store = SecretStore(tmp_path / "secrets")
    with store.held():
        restoring, said = bake_py_waiting("datastore", "restore", "snap.db", cwd=tmp_path)
        assert not store.exists(datastore.RESTORE_SECRET)  # nothing staged while the bake runs
    rest, _ = restoring.communicate(timeout=60)
    assert restoring.returncode == 0 and "staged snap.db" in rest, said + rest
    assert store.exists(datastore.RESTORE_SECRET)


def restore(snapshot: Path, db_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f'. "{LIB}" && ceil_restore_datastore "$1" "$2"', "sh", str(snapshot), str(db_dir)],
                          capture_output=True, text=True, timeout=60)


def test_the_card_installs_a_snapshot_once_and_never_over_a_datastore(tmp_path):
    kine_db(tmp_path / "snap.db").close()
    snap, db = tmp_path / "secrets/k3s/restore/state.db", tmp_path / "server/db"
    snap.parent.mkdir(parents=True)
    snap.write_bytes((tmp_path / "snap.db").read_bytes())
    db.mkdir(parents=True)
    (db / "state.db-wal").write_bytes(b"a journal of some other database")
    done = restore(snap, db)
    assert done.returncode == 0 and "restored" in done.stderr, done.stderr
    assert (db / "state.db").read_bytes() == (tmp_path / "snap.db").read_bytes()
    assert mode(db / "state.db") == 0o600 and mode(db) == 0o700
    assert sorted(p.name for p in db.iterdir()) == ["state.db"] and not snap.exists()
    assert restore(snap, db).returncode == 0  # a re-run after it: nothing left to do
    # A card whose k3s has a datastore keeps it; the snapshot still leaves the card's secrets.
    snap.write_bytes(b"SQLite format 3\0 an older snapshot")
    (db / "state.db").write_bytes(b"what k3s wrote")
    done = restore(snap, db)
    assert done.returncode == 0 and "not used" in done.stderr
    assert (db / "state.db").read_bytes() == b"what k3s wrote" and not snap.exists()
