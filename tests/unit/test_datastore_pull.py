"""The router's snapshots of a one-server cluster's datastore (ceil/snapshot.py, the features
datastore-pull and datastore-snapshot). The pull runs here against the server's real snapshot
script, over a pipe instead of SSH; the SSH side (forced command, from=, sudo) is checked on the
booted machines (tests/infra/test_nodes.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ceil import datastore, snapshot
from ceil.catalog import load_flavor
from ceil.config import load_cluster, parse_cluster
from ceil.errors import CeilError
from ceil.features import RoleContext
from ceil.payload import build_payload
from ceil.secrets import SecretStore
from tests.unit.test_datastore import CLUSTER, HA, kine_db

SIGNED_SCRIPT_KEY = "/etc/ceil/secrets/datastore/snapshot-hmac"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def server(tmp_path):
    """The server's side, run locally: a kine database, the HMAC key, and the snapshot script
    (as the bake installs it) reading them. `server.popen` stands in for the router's ssh."""
    db = tmp_path / "server" / "state.db"
    db.parent.mkdir()
    kine_db(db, rows=4).close()
    key = tmp_path / "server" / "hmac"
    key.write_text("k" * 64 + "\n")
    script = (datastore.BACKUP_SCRIPT.replace(datastore.DB_ON_SERVER, str(db))
              .replace(SIGNED_SCRIPT_KEY, str(key)))

    class Server:
        calls: list = []
        exit_with: int | None = None  # answer like ssh that could not log in (255), or k3s not up (75)

        def popen(self, argv, **kw):
            self.calls.append(argv)
            if self.exit_with is not None:
                code = f"import sys; sys.stderr.write('refused'); sys.exit({self.exit_with})"
                return subprocess.Popen([sys.executable, "-c", code], **kw)
            return subprocess.Popen([sys.executable, "-c", script, "--signed"], **kw)

    s = Server()
    s.db, s.key = db, key
    return s


def router_conf(tmp_path, key: Path, **over) -> dict:
    conf = {"server": "one", "address": "10.42.0.11", "user": "ceil-backup", "key": "/nonexistent",
            "hmac_key": str(key), "dir": str(tmp_path / "router" / "datastore"), "every_hours": 6, "keep": 3}
    return {**conf, **over}


def test_the_router_keeps_the_servers_signed_snapshot_whole(tmp_path, server):
    conf = router_conf(tmp_path, server.key)
    rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000)
    assert rc == 0, said
    kept = Path(conf["dir"]) / "one-19700112T134640Z.db"
    assert said == f"kept {kept.name} ({kept.stat().st_size} bytes, 4 datastore rows)"
    assert mode(kept) == 0o600 and mode(kept.parent) == 0o700
    assert snapshot.check(str(kept)) == 4 and os.listdir(conf["dir"]) == [kept.name]
    argv = server.calls[0]
    assert argv[0] == "ssh" and argv[-1] == "ceil-backup@10.42.0.11" and "BatchMode=yes" in argv
    # The router asks for nothing: the server's key decides the one command it runs.
    assert not any(a.startswith("sudo") for a in argv)


@pytest.mark.parametrize("tamper, says", [
    ("key", "HMAC does not match"),
    ("short", "stopped after"),
    ("long", "more than the"),
    ("plain", "not a signed snapshot"),
])
def test_a_forged_or_torn_answer_is_refused_and_leaves_nothing(tmp_path, server, tamper, says):
    """No host key is pinned (a re-flashed server has a new one), so the HMAC is what keeps a LAN
    neighbour posing as the server from planting a datastore the user may restore later."""
    conf = router_conf(tmp_path, server.key)
    real = server.popen

    def answer(body: bytes):
        code = f"import sys; sys.stdout.buffer.write({body!r})"
        return lambda argv, **kw: subprocess.Popen([sys.executable, "-c", code], **kw)

    if tamper == "key":
        other = tmp_path / "other-key"
        other.write_text("x" * 64)
        conf["hmac_key"] = str(other)
        popen = real
    else:
        proc = real(["ssh"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        signed = proc.stdout.read()
        proc.wait()
        head, body = signed.split(b"\n", 1)
        popen = answer({"short": head + b"\n" + body[:-100],
                        "long": head + b"\n" + body + b"x",
                        "plain": body}[tamper])
    rc, said = snapshot.pull(conf, popen=popen, now=1_000_000)
    assert rc == 1 and says in said, said
    assert not Path(conf["dir"]).exists() or os.listdir(conf["dir"]) == []


def test_before_the_first_snapshot_a_server_not_ready_is_no_failure(tmp_path, server):
    """During the cluster's first boot the server's account or k3s's datastore comes after the
    router's timer: quiet until a first snapshot is kept, a failed unit after that."""
    conf = router_conf(tmp_path, server.key)
    for code in (snapshot.NOT_YET, snapshot.SSH_FAILED):
        server.exit_with = code
        rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000)
        assert rc == 0 and "not ready for snapshots yet (refused)" in said
    server.exit_with = 1
    rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000)
    assert rc == 1 and "exit 1: refused" in said
    # ... but not for ever: a server baked before these snapshots has no account for the router.
    server.exit_with = snapshot.SSH_FAILED
    rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000 + 25 * 3600)
    assert rc == 1 and "in 25 h" in said and "baked with kubernetes.datastore_backups on" in said
    server.exit_with = None
    assert snapshot.pull(conf, popen=server.popen, now=1_000_000)[0] == 0
    os.utime(snapshot.snapshots(conf)[-1], (1_000_000, 1_000_000))
    server.exit_with = snapshot.SSH_FAILED
    rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000 + 7 * 3600)
    assert rc == 1 and "no snapshot from one (10.42.0.11): exit 255" in said


def test_one_snapshot_every_few_hours_and_only_the_newest_kept(tmp_path, server):
    conf = router_conf(tmp_path, server.key, keep=2)
    t = 1_000_000
    assert snapshot.pull(conf, popen=server.popen, now=t)[0] == 0
    os.utime(snapshot.snapshots(conf)[-1], (t, t))
    rc, said = snapshot.pull(conf, popen=server.popen, now=t + 3600)
    assert rc == 0 and said.endswith("is 1.0 h old: nothing to do") and len(server.calls) == 1
    for hours in (6, 12):  # 6 h (less the timer's slack) is due
        rc, said = snapshot.pull(conf, popen=server.popen, now=t + hours * 3600 - 300)
        assert said.startswith("kept"), said
        os.utime(snapshot.snapshots(conf)[-1], (t + hours * 3600, t + hours * 3600))
    names = [time.strftime("one-%Y%m%dT%H%M%SZ.db", time.gmtime(t + h * 3600 - 300)) for h in (6, 12)]
    assert [Path(p).name for p in snapshot.snapshots(conf)] == names  # the first one went (keep: 2)
    assert snapshot.pull(conf, force=True, popen=server.popen, now=t + 13 * 3600)[1].startswith("kept")
    assert len(snapshot.snapshots(conf)) == 2


def test_newest_writes_the_newest_snapshot_for_the_workstation(tmp_path, server, capsysbinary):
    conf = router_conf(tmp_path, server.key)
    path = tmp_path / "pull.json"
    path.write_text(json.dumps(conf))
    assert snapshot.main(["--config", str(path), "--newest"]) == 1
    assert b"no snapshot of one on this router (in " in capsysbinary.readouterr().err
    snapshot.pull(conf, popen=server.popen, now=1_000_000)
    assert snapshot.main(["--config", str(path), "--newest"]) == 0
    served = capsysbinary.readouterr()
    assert served.out == Path(snapshot.snapshots(conf)[-1]).read_bytes()
    assert served.err == b"serving one-19700112T134640Z.db\n"  # the workstation names its copy by it


def test_on_the_routers_drive_nothing_is_taken_or_served_while_it_is_not_mounted(tmp_path, server, capsysbinary):
    """With router.usb_drive the snapshots live on the drive: while it is not mounted a snapshot
    written anyway would land on the SD card, hidden under the mount point once the drive is back."""
    mount = tmp_path / "drive"  # a plain folder: what the mount point is while the drive is away
    mount.mkdir()
    conf = router_conf(tmp_path, server.key, dir=str(mount / "datastore"), mount=str(mount))
    rc, said = snapshot.pull(conf, popen=server.popen, now=1_000_000)
    assert rc == 1 and said == (f"no snapshot taken: the router's drive (router.usb_drive) is not mounted at"
                                f" {mount}: plug it in (see `systemctl status {mount}`)")
    assert not server.calls and os.listdir(mount) == []  # not even asked, nothing written
    path = tmp_path / "pull.json"
    path.write_text(json.dumps(conf))
    assert snapshot.main(["--config", str(path), "--newest"]) == 1
    assert b"is not mounted at" in capsysbinary.readouterr().err
    # Mounted (here: the root file system, a mount point for certain), it pulls as ever.
    assert snapshot.drive_missing({**conf, "mount": "/"}) is None
    assert snapshot.drive_missing({**conf, "mount": None}) is None


def test_the_units_bind_mount_of_the_empty_mount_point_is_not_the_drive(tmp_path, server):
    """The timer's unit (ReadWritePaths=) makes the empty mount point a bind mount of itself:
    same device as its parent, so still "not mounted", and no snapshot lands on the SD card."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount for a bind mount")
    mount = tmp_path / "drive"
    mount.mkdir()
    bound = subprocess.run(["mount", "--bind", str(mount), str(mount)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"no bind mounts here: {bound.stderr.strip()}")
    try:
        conf = router_conf(tmp_path, server.key, dir=str(mount / "datastore"), mount=str(mount))
        assert snapshot.drive_missing(conf) is not None
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_with_a_usb_drive_the_router_keeps_the_snapshots_on_it(tmp_path, cluster_yaml):
    from ceil.hooks.registry import REGISTRY_ROOT

    path = cluster_yaml()
    path.write_text(path.read_text().replace("interface: eth1}}", "interface: eth1}, usb_drive: /dev/sda}"))
    payloads, _ = _payloads(tmp_path, path)
    router = payloads["router"].dest
    conf = json.loads((router / "etc" / "datastore-pull.json").read_text())
    assert conf["dir"] == f"{REGISTRY_ROOT}/datastore" and conf["mount"] == REGISTRY_ROOT
    unit = (router / "units" / "ceil-datastore-snapshots.service").read_text()
    assert f"ReadWritePaths=-{REGISTRY_ROOT}\n" in unit and "ProtectSystem=strict" in unit
    step = (router / "lib" / "steps" / "datastore-pull.sh").read_text()
    assert f"mount={REGISTRY_ROOT}\n" in step and f"install -d -m 0700 {REGISTRY_ROOT}/datastore" in step
    assert "After=ceil-packages.service ceil-secrets.service ceil-registry.service" in (
        router / "units" / "ceil-datastore-pull.service").read_text()
    # The step waits for the drive: run it against a mount point that is not one.
    fake = tmp_path / "not-mounted"
    fake.mkdir()
    secrets = tmp_path / "etc-secrets"
    script = step.replace(f"mount={REGISTRY_ROOT}\n", f"mount='{fake}'\n").replace("/etc/ceil/secrets", str(secrets))
    for name in ("pull_ed25519", "snapshot-hmac"):
        (secrets / "datastore").mkdir(parents=True, exist_ok=True)
        (secrets / "datastore" / name).write_text("x\n")
    why = tmp_path / "why"
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CEIL_LIB": str(router / "lib"), "CEIL_STEP_WHY": str(why)})
    assert done.returncode == 1 and f"not mounted at {fake} yet" in done.stderr, done.stderr
    assert f"not mounted at {fake} yet" in why.read_text()  # what `bake.py status` shows


def test_without_a_drive_the_unit_writes_only_its_state_directory(tmp_path, cluster_yaml):
    payloads, _ = _payloads(tmp_path, cluster_yaml())
    unit = (payloads["router"].dest / "units" / "ceil-datastore-snapshots.service").read_text()
    assert "ReadWritePaths" not in unit and "StateDirectory=ceil/datastore" in unit


def test_a_drive_without_the_registry_is_refused(cluster_yaml):
    path = cluster_yaml("registry: {enabled: false}\n")
    path.write_text(path.read_text().replace("interface: eth1}}", "interface: eth1}, usb_drive: /dev/sda}"))
    with pytest.raises(CeilError, match=r"router.usb_drive \(line 3\): /dev/sda is named but registry.enabled is false"):
        load_cluster(path)


class Baked:
    """One role's rendered payload: its folder, unit names and secret files."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.units = {p.name for p in (dest / "units").iterdir()}
        found = (dest / "secrets").rglob("*") if (dest / "secrets").is_dir() else []
        self.secrets = {str(p.relative_to(dest / "secrets")): p.read_bytes() for p in found if p.is_file()}


def _payloads(tmp_path, cluster_file: Path, bake: str = "payload") -> tuple[dict, object]:
    cluster = load_cluster(cluster_file)
    store = SecretStore(tmp_path / "secrets")
    out = {}
    for role in ("router", "one", "two"):
        dest = tmp_path / bake / role
        build_payload(RoleContext(cluster, role, load_flavor(cluster.flavor), store), dest)
        out[role] = Baked(dest)
    return out, cluster


def test_the_router_and_the_server_are_baked_with_matching_halves(tmp_path, cluster_yaml):
    from cryptography.hazmat.primitives import serialization

    payloads, cluster = _payloads(tmp_path, cluster_yaml())
    rp, sp, ap = payloads["router"], payloads["one"], payloads["two"]
    router, one = rp.dest, sp.dest
    conf = json.loads((router / "etc" / "datastore-pull.json").read_text())
    assert conf == {"server": "one", "address": "10.42.0.11", "user": "ceil-backup",
                    "key": "/etc/ceil/secrets/datastore/pull_ed25519",
                    "hmac_key": "/etc/ceil/secrets/datastore/snapshot-hmac",
                    "dir": "/var/lib/ceil/datastore", "mount": None, "every_hours": 6, "keep": 14}
    # The router runs this very module; the server runs the backup script the workstation pipes.
    assert (router / "lib" / "ceil-datastore-pull").read_text() == (
        "#!/usr/bin/python3\n" + Path(snapshot.__file__).read_text())
    assert datastore.BACKUP_SCRIPT in (one / "lib" / "ceil-datastore-snapshot").read_text()
    assert "ceil-datastore-snapshots.timer" in rp.units and "ceil-datastore-snapshot.service" in sp.units
    assert not any("datastore" in u for u in ap.units) and not any("datastore" in s for s in ap.secrets)
    # One HMAC key on both; the private key on the router only, its public half in the server's step.
    assert rp.secrets["datastore/snapshot-hmac"] == sp.secrets["datastore/snapshot-hmac"]
    assert "datastore/pull_ed25519" not in sp.secrets
    private = serialization.load_ssh_private_key(rp.secrets["datastore/pull_ed25519"], None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    step = (one / "lib" / "steps" / "datastore-snapshot.sh").read_text()
    line = ('restrict,from="10.42.0.1",command="sudo -n /usr/local/lib/ceil/ceil-datastore-snapshot --signed" '
            f"{public} ceil-router-datastore-pull")
    assert f"printf '%s\\n' '{line}'" in step
    assert "NOPASSWD: %s --signed" in step and "/usr/local/lib/ceil/ceil-datastore-snapshot" in step
    # Made once: a re-bake of either card gets the same halves, so pulls go on after a re-flash.
    again, _ = _payloads(tmp_path, cluster_yaml(), bake="again")
    assert again["router"].secrets["datastore/pull_ed25519"] == rp.secrets["datastore/pull_ed25519"]
    assert again["one"].secrets["datastore/snapshot-hmac"] == sp.secrets["datastore/snapshot-hmac"]


@pytest.mark.skipif(not shutil.which("visudo"), reason="visudo (package sudo) is not installed here")
def test_the_sudoers_rule_parses(tmp_path, cluster_yaml):
    """The step's sudoers line, as its printf writes it, passes visudo (a broken rule in
    /etc/sudoers.d/ breaks every sudo on the card)."""
    payloads, _ = _payloads(tmp_path, cluster_yaml())
    step = (payloads["one"].dest / "lib" / "steps" / "datastore-snapshot.sh").read_text()
    user = next(line for line in step.splitlines() if line.startswith("user="))
    printf = next(line for line in step.splitlines() if line.startswith("printf '%s ALL="))
    rule = tmp_path / "rule"
    subprocess.run(["sh", "-c", f'{user}; {printf.replace(chr(34) + "$rule" + chr(34), str(rule))}'], check=True)
    assert rule.read_text() == "ceil-backup ALL=(root) NOPASSWD: /usr/local/lib/ceil/ceil-datastore-snapshot --signed\n"
    done = subprocess.run(["visudo", "-cqf", str(rule)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("extra, nodes", [
    ("kubernetes: {datastore_backups: {enabled: false}}\n", None),
    ("", HA),
])
def test_no_pulls_when_turned_off_or_etcd(tmp_path, cluster_yaml, extra, nodes):
    path = cluster_yaml(extra)
    if nodes:
        path.write_text(nodes + "flavor: ubuntu-24.04-raspi\n")
    payloads, cluster = _payloads(tmp_path, path)
    assert not cluster.datastore_backups_on
    for p in payloads.values():
        assert not any("datastore" in u for u in p.units) and not any(s.startswith("datastore/") for s in p.secrets)


def test_backup_from_router_fetches_the_newest_snapshot(tmp_path):
    kine_db(tmp_path / "snap.db").close()
    cluster, store = parse_cluster(CLUSTER), SecretStore(tmp_path / "secrets")
    asked = []

    def router(argv, input, **kw):
        asked.append((argv, input))
        return subprocess.CompletedProcess(argv, 0, (tmp_path / "snap.db").read_bytes(), b"")

    path, rows = datastore.backup(cluster, store, None, from_router=True, run=router, now=0)
    assert rows == 3 and path.name == "ceil-one-19700101T000000Z.db" and mode(path) == 0o600
    assert asked[0][0][-2:] == ["ceil@10.42.0.1", "sudo python3 /usr/local/lib/ceil/ceil-datastore-pull --newest"]
    assert asked[0][1] is None
    with pytest.raises(CeilError, match="--previous names a snapshot the router set aside: use it with --from-router"):
        datastore.backup(cluster, store, None, previous=True, run=router)
    off = parse_cluster(CLUSTER + "kubernetes: {datastore_backups: {enabled: false}}\n")
    with pytest.raises(CeilError, match="kubernetes.datastore_backups.enabled is false: the router keeps no snapshots"):
        datastore.backup(off, store, None, from_router=True, run=router)


def test_a_snapshot_taken_while_the_clock_was_pushed_ahead_is_set_aside_not_newest(tmp_path, server, capsysbinary):
    """A forged NTP answer steps the router to 2040; the snapshot taken then sorted last by name
    for ever: the pull said "nothing to do" until 2040 and --newest served that stale file."""
    conf = router_conf(tmp_path, server.key)
    t = 1_700_000_000  # 2023: before the real now, which --newest reads
    assert snapshot.pull(conf, popen=server.popen, now=t)[0] == 0
    os.utime(snapshot.snapshots(conf)[-1], (t, t))
    pushed = 2_208_988_800  # 2040-01-01, the forged clock
    assert snapshot.pull(conf, force=True, popen=server.popen, now=pushed)[0] == 0
    os.utime(snapshot.snapshots(conf)[-1], (pushed, pushed))
    assert Path(snapshot.snapshots(conf)[-1]).name == "one-20400101T000000Z.db"
    # the clock is right again, an hour after the first snapshot
    path = tmp_path / "pull.json"
    path.write_text(json.dumps(conf))
    rc, said = snapshot.pull(conf, popen=server.popen, now=t + 3600)
    assert rc == 0 and "nothing to do" in said and "set aside" in said and "one-20400101T000000Z.db" in said, said
    assert [Path(p).name for p in snapshot.snapshots(conf)] == [time.strftime("one-%Y%m%dT%H%M%SZ.db", time.gmtime(t))]
    assert (Path(conf["dir"]) / ".future-one-20400101T000000Z.db").exists()  # kept for a person to look at
    assert snapshot.main(["--config", str(path), "--newest"]) == 0
    assert capsysbinary.readouterr().out == Path(snapshot.snapshots(conf)[-1]).read_bytes()


def test_a_newest_snapshot_whose_file_time_is_ahead_of_now_is_due_not_recent(tmp_path, server):
    conf = router_conf(tmp_path, server.key)
    t = 1_700_000_000
    snapshot.pull(conf, popen=server.popen, now=t)
    os.utime(snapshot.snapshots(conf)[-1], (t + 86400, t + 86400))  # written while the clock was a day ahead
    assert snapshot.pull(conf, popen=server.popen, now=t + 60)[1].startswith("kept")


def _datastore_begun_anew(server, rows: int) -> None:
    """The server's card replaced (or k3s reset) without a restore: a new, near-empty kine."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.db}{suffix}").unlink(missing_ok=True)
    kine_db(server.db, rows=rows).close()


def test_a_server_begun_anew_cannot_rotate_the_old_clusters_last_snapshot_away(tmp_path, server, capsysbinary):
    """Found in review: after a dead server's card was replaced without a restore, the router's
    pulls of the new, near-empty datastore rotated every snapshot of the real cluster away within
    keep x every_hours (3.5 days by default), and --newest served the empty one meanwhile."""
    conf = router_conf(tmp_path, server.key, keep=3)
    _datastore_begun_anew(server, rows=44)  # the real cluster's datastore, grown: revision 44
    t = 1_700_000_000
    for i in range(3):
        assert snapshot.pull(conf, force=True, popen=server.popen, now=t + i * 3600)[0] == 0
    last_good = Path(snapshot.snapshots(conf)[-1])
    good = last_good.read_bytes()
    assert snapshot.revision(str(last_good)) == 44
    _datastore_begun_anew(server, rows=3)
    rc, said = snapshot.pull(conf, force=True, popen=server.popen, now=t + 3 * 3600)
    assert rc == 1, said  # a failed unit, once: the cluster's datastore started over
    assert f"its datastore's revision is below the one in {last_good.name}" in said and "restored from an older snapshot" in said
    assert f".previous-{last_good.name}, never pruned" in said and "--from-router --previous" in said
    for i in range(4, 10):  # days of pulls of the new datastore: quiet again, and the old copy stays
        rc, said = snapshot.pull(conf, force=True, popen=server.popen, now=t + i * 3600)
        assert rc == 0 and said.startswith("kept"), said
    aside = Path(conf["dir"]) / f".previous-{last_good.name}"
    assert aside.read_bytes() == good and len(snapshot.snapshots(conf)) == 3
    assert all(snapshot.check(p) == 3 for p in snapshot.snapshots(conf))
    path = tmp_path / "pull.json"
    path.write_text(json.dumps(conf))
    assert snapshot.main(["--config", str(path), "--previous"]) == 0
    served = capsysbinary.readouterr()
    assert served.out == good and served.err == f"serving {last_good.name}\n".encode()


def test_a_restored_datastore_continues_and_sets_nothing_aside(tmp_path, server):
    """A server restored from a snapshot carries on counting from it: the same datastore."""
    conf = router_conf(tmp_path, server.key)
    t = 1_700_000_000
    assert snapshot.pull(conf, popen=server.popen, now=t)[0] == 0
    restored = snapshot.snapshots(conf)[-1]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.db}{suffix}").unlink(missing_ok=True)
    shutil.copy(restored, server.db)
    db = sqlite3.connect(server.db)
    db.execute("INSERT INTO kine (name, value) VALUES ('/registry/after-restore', x'00')")
    db.commit()
    db.close()
    rc, said = snapshot.pull(conf, force=True, popen=server.popen, now=t + 3600)
    assert rc == 0 and said.startswith("kept"), said
    assert snapshot.previous(conf) == [] and len(snapshot.snapshots(conf)) == 2


def test_backup_from_router_is_named_by_when_the_router_took_it(tmp_path):
    """A snapshot days old was saved under the day it was fetched: a user picking the newest
    backup to restore would be misled."""
    kine_db(tmp_path / "snap.db").close()
    cluster, store = parse_cluster(CLUSTER), SecretStore(tmp_path / "secrets")
    asked = []

    def router(argv, input, **kw):
        asked.append(argv[-1])
        return subprocess.CompletedProcess(argv, 0, (tmp_path / "snap.db").read_bytes(),
                                           b"serving one-20261101T060000Z.db\n")

    path, rows = datastore.backup(cluster, store, None, from_router=True, previous=True, run=router, now=2_000_000_000)
    assert path.name == "ceil-one-20261101T060000Z.db" and rows == 3
    assert asked == ["sudo python3 /usr/local/lib/ceil/ceil-datastore-pull --previous"]
