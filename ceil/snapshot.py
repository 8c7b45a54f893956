"""A datastore snapshot as a file, and the router's pull of one. Standard library only.

This module runs in two places:
- on the workstation, where `ceil.datastore` checks what `datastore backup` brought and what
  `datastore restore` is given (`check`);
- on the router, copied there by the bake as /usr/local/lib/ceil/ceil-datastore-pull and run by
  ceil-datastore-snapshots.timer (`main`): it asks the one k3s server for a snapshot and keeps the
  newest few, so a dead server card does not take the cluster with it.

How the router gets a snapshot, and why it is safe on a LAN that may hold a hostile neighbour:
- The router connects to the server as `ceil-backup` with a key made at bake time, which the
  server accepts only for one forced command: its snapshot script (ceil-datastore-snapshot,
  run through sudo). The key opens no shell, forwards nothing, and is accepted only from the
  router's address.
- The router sends nothing secret, so a machine posing as the server learns nothing. What comes
  back must carry an HMAC made with a second key baked into both cards: a forged or torn snapshot
  is refused. So the server's host key is not pinned, and a server re-flashed after a lost card
  (new host key) is pulled from again without anyone touching the router.
- Snapshots are written 0600 in a root-only directory, whole or not at all (temporary file,
  fsync, rename).
"""

from __future__ import annotations

import argparse
import calendar
import hmac
import json
import os
import re
import sqlite3
import subprocess
import sys
import time

HEADER = b"ceil-snapshot 1"  # first line of a signed snapshot: HEADER SIZE HMAC-SHA256
NOT_YET = 75  # the server's snapshot script: k3s has no datastore yet (EX_TEMPFAIL)
SSH_FAILED = 255  # ssh's own failure: unreachable, or the server does not (yet) accept the key
PATIENCE_S = 24 * 3600  # how long a server may be "not ready" before the first snapshot


def check(path: str) -> int:
    """kine's row count if `path` is a whole SQLite database k3s wrote; ValueError saying what is
    wrong otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        # immutable: a file at rest, read without locks, and no -wal/-shm made beside it
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            ok = db.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise ValueError(f"{path} is a damaged SQLite database ({ok})")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "kine" not in tables:
                raise ValueError(f"{path} is an SQLite database but not k3s's datastore (no kine table)")
            return db.execute("SELECT count(*) FROM kine").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path} is not an SQLite database ({e})") from None


def revision(path: str) -> int:
    """The datastore's revision: kine numbers its rows AUTOINCREMENT (a row's id is the revision
    it wrote), so within one datastore it only grows, compactions included. A datastore begun anew
    (a server re-flashed or reset without `datastore restore`) starts again near 0."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        top = db.execute("SELECT max(id) FROM kine").fetchone()[0] or 0
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'kine'").fetchone()
        return max(top, seq[0] if seq else 0)
    finally:
        db.close()


K3S_VERSION = re.compile(rb"v1\.\d+\.\d+\+k3s\d+")


def k3s_versions(path: str) -> dict[str, str]:
    """{node name: the k3s version its kubelet reported} from the newest copy of each Node object
    in a snapshot (kine stores objects as protobuf, where the version is a plain string). A k3s
    server's kubelet runs the server's own k3s: that is the version the datastore was written by."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        rows = db.execute("SELECT name, value FROM kine WHERE id IN (SELECT MAX(id) FROM kine"
                          " WHERE name LIKE '/registry/minions/%' GROUP BY name)").fetchall()
    finally:
        db.close()
    found = {}
    for name, value in rows:
        if value and (m := K3S_VERSION.search(bytes(value))):
            found[name.rsplit("/", 1)[-1]] = m.group().decode()
    return found


def drive_missing(conf: dict) -> str | None:
    """Why no snapshot may be read or written now: the router's drive they live on is not mounted.
    Written anyway, they would land on the SD card under the mount point, hidden once the drive
    is back. os.path.ismount compares devices, not the mount table: the timer's unit bind-mounts
    the mount point onto itself (ReadWritePaths=), which must not pass for the drive."""
    mount = conf.get("mount")
    if mount and not os.path.ismount(mount):
        return (f"the router's drive (router.usb_drive) is not mounted at {mount}: plug it in"
                f" (see `systemctl status {mount}`)")
    return None


STAMP = "%Y%m%dT%H%M%SZ"  # a snapshot's name: SERVER-STAMP.db, its UTC time
SLACK_S = 600  # a clock this far ahead is a clock that wanders, not one that was pushed


def taken_at(path: str) -> float | None:
    """The UTC time in a snapshot's name; None for a name that holds none."""
    stamp = os.path.basename(path)[:-len(".db")].rpartition("-")[2]
    try:
        return float(calendar.timegm(time.strptime(stamp, STAMP)))
    except ValueError:
        return None


def _dated_after(path: str, now: float) -> bool:
    """Named after `now` by more than a wandering clock explains (a name without a time: no)."""
    return (taken_at(path) or 0) > now + SLACK_S


def _named(conf: dict, prefix: str) -> list[str]:
    """The files in the snapshot folder named PREFIX<server>-...db, oldest first (names sort by
    their UTC time)."""
    start = f"{prefix}{conf['server']}-"
    try:
        names = os.listdir(conf["dir"])
    except FileNotFoundError:
        return []
    return [os.path.join(conf["dir"], n) for n in sorted(names) if n.startswith(start) and n.endswith(".db")]


def snapshots(conf: dict, now: float | None = None) -> list[str]:
    """The router's snapshots of this server, oldest first. With `now`: only those taken before
    it, give or take SLACK_S (see set_aside_future)."""
    kept = _named(conf, "")
    return kept if now is None else [p for p in kept if not _dated_after(p, now)]


def set_aside_future(conf: dict, now: float) -> list[str]:
    """Snapshots named after a time still to come: taken while the router's clock was pushed
    ahead (NTP is unauthenticated: a forged answer steps chrony any distance, and the saved
    clock only moves forward). Sorting last by name, one stamped 2040 was "the newest" until
    2040: the pull said "nothing to do" and `--newest` served it, however stale. Renamed to
    .future-NAME: kept for a person to look at, never counted or served again. Returns their names."""
    moved = []
    for path in snapshots(conf):
        if _dated_after(path, now):
            name = os.path.basename(path)
            os.replace(path, os.path.join(conf["dir"], f".future-{name}"))
            moved.append(name)
    return moved


PREVIOUS = ".previous-"  # the newest snapshot of a datastore the server no longer runs


def set_aside_earlier_datastore(conf: dict, kept: list[str], new: str) -> str | None:
    """When `new` holds a datastore whose revision is below the newest kept snapshot's (the server
    card was replaced, or k3s reset, without a restore; or restored from an older snapshot), that
    snapshot is renamed .previous-NAME: never pruned or served as the newest, so the pulls of the
    new, near-empty datastore cannot rotate the old cluster's last copy away within days.
    Returns its name, or None when `new` continues the same datastore."""
    if not kept:
        return None
    try:
        if revision(new) >= revision(kept[-1]):
            return None
    except sqlite3.DatabaseError:
        return None  # a kept file that cannot be read says nothing about the new one
    name = os.path.basename(kept[-1])
    os.replace(kept[-1], os.path.join(conf["dir"], f"{PREVIOUS}{name}"))
    return name


def previous(conf: dict) -> list[str]:
    """The snapshots set aside by set_aside_earlier_datastore, oldest first."""
    return _named(conf, PREVIOUS)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _receive(stream, dest: str, key: bytes) -> None:
    """Copy a signed snapshot from `stream` into `dest` (0600), checking its size and HMAC."""
    head = stream.readline(200).split()
    if len(head) != 4 or b" ".join(head[:2]) != HEADER or not head[2].isdigit():
        raise ValueError("the server's answer is not a signed snapshot")
    size, want = int(head[2]), head[3].decode(errors="replace")
    mac = hmac.new(key, digestmod="sha256")
    got = 0
    with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        while True:
            block = stream.read(1 << 20)
            if not block:
                break
            got += len(block)
            if got > size:
                raise ValueError(f"the server sent more than the {size} bytes it announced")
            mac.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    if got != size:
        raise ValueError(f"the snapshot stopped after {got} of {size} bytes")
    if not hmac.compare_digest(mac.hexdigest(), want):
        raise ValueError("the snapshot's HMAC does not match the key baked into this router:"
                         " refused (a forged or damaged answer, or a server baked with other secrets)")


def _first_try(conf: dict, now: float) -> float:
    """When this router first tried to take a snapshot (recorded on that first try)."""
    path = os.path.join(conf["dir"], ".first-try")
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        with open(path, "w") as f:
            f.write(f"{now}\n")
        return now


def ssh_argv(conf: dict) -> list[str]:
    # No known_hosts: the HMAC, not the host key, says the answer is the server's (module doc).
    return ["ssh", "-i", conf["key"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"{conf['user']}@{conf['address']}"]


def pull(conf: dict, force: bool = False, now: float | None = None, popen=subprocess.Popen) -> tuple[int, str]:
    """Take one snapshot if the newest is older than every_hours (or `force`); (exit code, message)."""
    now = time.time() if now is None else now
    if missing := drive_missing(conf):
        return 1, f"no snapshot taken: {missing}"
    future = set_aside_future(conf, now)
    aside = (f" (set aside, dated after now, the clock was ahead when they were taken:"
             f" {', '.join(future)})") if future else ""
    kept = snapshots(conf)
    if kept and not force:
        age = now - os.stat(kept[-1]).st_mtime
        # 10 minutes' slack: the hourly timer wanders, and 5 h 58 min is not worth skipping; a
        # modification time ahead of now counts as old (the clock was ahead when it was written)
        if -SLACK_S <= age < conf["every_hours"] * 3600 - SLACK_S:
            return 0, f"the newest snapshot ({os.path.basename(kept[-1])}) is {age / 3600:.1f} h old: nothing to do{aside}"
    os.makedirs(conf["dir"], mode=0o700, exist_ok=True)
    stamp = time.strftime(STAMP, time.gmtime(now))
    final = os.path.join(conf["dir"], f"{conf['server']}-{stamp}.db")
    partial = os.path.join(conf["dir"], f".{conf['server']}-{stamp}.partial")
    with open(conf["hmac_key"], "rb") as f:
        key = f.read().strip()
    proc = popen(ssh_argv(conf), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            _receive(proc.stdout, partial, key)
            problem = None
        except ValueError as e:
            problem = str(e)
        proc.stdout.close()
        said = proc.stderr.read().decode(errors="replace").strip()
        rc = proc.wait(timeout=60)
        if rc != 0:
            if not kept and rc in (NOT_YET, SSH_FAILED):
                # The cluster's first boot: the server's account or k3s's datastore is not there
                # yet. Not a failure until a first snapshot was taken (then the unit fails), or
                # for a day: a server baked before these snapshots existed has no account, and
                # must not leave the router waiting quietly for ever.
                waiting = now - _first_try(conf, now)
                if waiting < PATIENCE_S:
                    return 0, f"the server is not ready for snapshots yet ({said or f'exit {rc}'}): next hour"
                return 1, (f"no snapshot from {conf['server']} ({conf['address']}) in {waiting / 3600:.0f} h:"
                           f" exit {rc}: {said or 'no message'}. Is it up, and was it baked with"
                           " kubernetes.datastore_backups on? (re-bake and re-flash it, or turn them off)")
            return 1, f"no snapshot from {conf['server']} ({conf['address']}): exit {rc}: {said or 'no message'}"
        if problem:
            return 1, f"no snapshot kept from {conf['server']}: {problem}"
        rows = check(partial)
        earlier = set_aside_earlier_datastore(conf, kept, partial)
        os.replace(partial, final)
        _fsync_dir(conf["dir"])
    except ValueError as e:
        return 1, f"no snapshot kept from {conf['server']}: {e}"
    finally:
        if proc.poll() is None:
            proc.kill()
        if os.path.exists(partial):
            os.unlink(partial)
    for old in snapshots(conf)[:-conf["keep"]]:
        os.unlink(old)
    said = f"kept {os.path.basename(final)} ({os.path.getsize(final)} bytes, {rows} datastore rows){aside}"
    if earlier:
        # A failed unit once: the user should hear that the cluster's datastore started over.
        return 1, (f"{said}; its datastore's revision is below the one in {earlier} (the server was re-flashed"
                   f" or reset without `datastore restore`, or restored from an older snapshot). {earlier} is kept"
                   f" as {PREVIOUS}{earlier}, never pruned: `python bake.py datastore backup --from-router"
                   " --previous` fetches it")
    return 0, said


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ceil-datastore-pull", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="/etc/ceil/datastore-pull.json")
    ap.add_argument("--now", action="store_true", help="take a snapshot even if the newest is recent")
    served = ap.add_mutually_exclusive_group()
    served.add_argument("--newest", action="store_true", help="write the newest snapshot kept to stdout")
    served.add_argument("--previous", action="store_true",
                        help="write the newest snapshot of a datastore the server no longer runs to stdout")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        conf = json.load(f)
    if args.newest or args.previous:
        if missing := drive_missing(conf):
            print(missing, file=sys.stderr)
            return 1
        # never one dated after now (set_aside_future)
        kept = snapshots(conf, now=time.time()) if args.newest else previous(conf)
        if not kept:
            print(f"no {'snapshot' if args.newest else 'set-aside snapshot'} of {conf['server']} on this"
                  f" router (in {conf['dir']})", file=sys.stderr)
            return 1
        # The workstation names its copy by the time in this name, not by when it fetched it.
        print(f"serving {os.path.basename(kept[-1]).removeprefix(PREVIOUS)}", file=sys.stderr)
        with open(kept[-1], "rb") as f:
            while block := f.read(1 << 20):
                sys.stdout.buffer.write(block)
        return 0
    rc, message = pull(conf, force=args.now)
    print(f"ceil-datastore-pull: {message}", file=sys.stderr if rc else sys.stdout)
    return rc


if __name__ == "__main__":
    sys.exit(main())
