"""First-boot features `addons` (server) and `storage-drive` (nodes), rendered with the real
feature renderer; the shipped job is run from the rendered payload against the API stand-in,
and the drive script formats a real loop device (mkfs.ext4, blkid, wipefs)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.kube_api import KubeApiStandIn  # noqa: E402

from ceil.catalog import load_flavor  # noqa: E402
from ceil.config import parse_cluster  # noqa: E402
from ceil.features import RoleContext, render_features  # noqa: E402
from ceil.secrets import SecretStore  # noqa: E402

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"
NODES = "[{name: one, role: server}, {name: two, storage_device: /dev/sda}, {name: three}]"


def render(tmp_path: Path, role: str, extra: str = ""):
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\nnodes: {NODES}\n{extra}")
    store = SecretStore(tmp_path / "secrets")
    ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), store)
    dest = tmp_path / f"payload-{role}"
    return render_features(ctx, dest), dest, store


def test_server_payload_has_the_job_the_plan_and_the_grafana_secret(tmp_path):
    payload, dest, store = render(tmp_path, "one")
    assert {"addons", "storage-drive"} <= set(payload.features)
    assert {"python3-kubernetes", "open-iscsi"} <= set(payload.packages)
    assert "ceil-addons.service" in payload.units
    plan = json.loads((dest / "etc" / "addons.json").read_text())
    assert plan["nodes"] == ["ceil-one", "ceil-two", "ceil-three"]
    from ceil.addons.hooks import JOB_FILES

    for name in JOB_FILES:
        shipped = (dest / "lib" / "addons_job" / name).read_text()
        source = (Path(__file__).parents[2] / "ceil" / "addons" / "job" / name).read_text()
        assert shipped.rstrip("\n") == source.rstrip("\n")
    password = store.read("grafana-admin-password").strip()
    assert payload.secrets["grafana-admin-password"].strip() == password
    for f in dest.rglob("*"):  # the password travels only as a secret file
        assert not f.is_file() or password not in f.read_bytes()


def test_agents_get_only_the_drive_step_and_nothing_when_addons_are_off(tmp_path):
    payload, dest, _ = render(tmp_path, "two")
    assert "addons" not in payload.features and "storage-drive" in payload.features
    script = (dest / "lib" / "steps" / "storage-drive.sh").read_text()
    assert "\nDEVICE=/dev/sda\n" in script and "\nLONGHORN=yes\n" in script
    payload, _, _ = render(tmp_path / "off", "one", "addons: {enabled: false}\n")
    assert not {"addons", "storage-drive"} & set(payload.features)


def test_the_shipped_job_runs_from_the_payload(tmp_path):
    payload, dest, store = render(tmp_path, "one", "piwatch: {enabled: false}\naddons: {disable: [monitoring, dashboard]}\n")
    moved = tmp_path / "etc-ceil-secrets"  # where ceil-secrets puts the payload's secret files
    for name, value in payload.secrets.items():
        (moved / name).parent.mkdir(parents=True, exist_ok=True)
        (moved / name).write_bytes(value)
    with KubeApiStandIn() as api:
        for n in ("ceil-one", "ceil-two", "ceil-three"):
            api.add_node(n)
        api.k3s_boot()
        result = subprocess.run(
            [sys.executable, "-m", "addons_job", "--plan", str(dest / "etc" / "addons.json"),
             "--kubeconfig", str(api.write_kubeconfig(tmp_path / "k3s.yaml")),
             "--status", str(tmp_path / "addons.json"), "--secrets-dir", str(moved),
             "--poll-seconds", "0.01", "--node-timeout", "5"],
            env={**os.environ, "PYTHONPATH": str(dest / "lib")}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads((tmp_path / "addons.json").read_text())
    assert {a: s["state"] for a, s in status["addons"].items()} == {
        "metallb": "ready", "traefik": "ready", "storage": "ready", "demo": "ready"}


# ---- the drive script on a real block device ---------------------------------------------

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not Path("/dev/loop-control").exists(),
    reason="needs root and loop devices")


@pytest.fixture
def loop_device(tmp_path):
    image = tmp_path / "stick.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


@pytest.fixture(autouse=True)
def _mount_point_made_mutable_again(tmp_path):
    """The drive step makes its unmounted mount point immutable; pytest must still delete it."""
    yield
    if (tmp_path / "longhorn").exists():
        subprocess.run(["chattr", "-i", str(tmp_path / "longhorn")], check=False, capture_output=True)


def drive_script(tmp_path: Path, device: str) -> tuple[Path, dict]:
    _, dest, _ = render(tmp_path, "two")
    script = dest / "lib" / "steps" / "storage-drive.sh"
    script.write_text(script.read_text().replace("DEVICE=/dev/sda\n", f"DEVICE={shlex.quote(device)}\n"))
    env = {**os.environ, "CEIL_SYSTEMCTL": "true", "CEIL_UNIT_DIR": str(tmp_path / "units"),
           "CEIL_DRIVE_MOUNT": str(tmp_path / "longhorn"), "CEIL_LIB": str(dest / "lib"),
           "CEIL_STEP_WHY": str(tmp_path / "why")}
    return script, env


def blkid(dev: str, tag: str) -> str:
    return subprocess.run(["blkid", "-p", "-s", tag, "-o", "value", dev],
                          capture_output=True, text=True).stdout.strip()


@needs_loop
def test_drive_is_formatted_once_and_kept_on_rerun(tmp_path, loop_device):
    subprocess.run(["mkfs.vfat", "-n", "SOMESTICK", loop_device], check=True, capture_output=True)
    script, env = drive_script(tmp_path, loop_device)
    first = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "label 'SOMESTICK'" in first.stdout
    assert blkid(loop_device, "LABEL") == "ceil-longhorn" and blkid(loop_device, "TYPE") == "ext4"
    uuid = blkid(loop_device, "UUID")
    unit = tmp_path / "units" / subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", str(tmp_path / "longhorn")],
        capture_output=True, text=True).stdout.strip()
    assert "What=/dev/disk/by-label/ceil-longhorn" in unit.read_text()
    # Every boot: k3s waits for the drive, and Longhorn cannot write onto the SD card under it.
    assert "Before=k3s.service k3s-agent.service" in unit.read_text()
    assert r"WantedBy=local-fs.target dev-disk-by\x2dlabel-ceil\x2dlonghorn.device" in unit.read_text()
    with pytest.raises(PermissionError):
        (tmp_path / "longhorn" / "longhorn-disk.cfg").write_text("{}")
    second = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "keeping its data" in second.stdout
    assert blkid(loop_device, "UUID") == uuid  # not reformatted
    fsck = subprocess.run(["e2fsck", "-fn", loop_device], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_missing_drive_is_retried_and_no_drive_is_nothing_to_do(tmp_path):
    script, env = drive_script(tmp_path, "/dev/ceil-no-such-disk")
    missing = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "plugged in" in missing.stderr
    assert "storage_device /dev/ceil-no-such-disk is not there" in (tmp_path / "why").read_text()  # shown by status
    script.write_text(script.read_text().replace("DEVICE=/dev/ceil-no-such-disk\n", "DEVICE=''\n"))
    nothing = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert nothing.returncode == 0 and "no drive to prepare" in nothing.stdout


@needs_loop
def test_the_root_disk_is_refused(tmp_path, loop_device):
    # The loop device plays the root disk (a findmnt shim says so): the real root is never at risk.
    subprocess.run(["mkfs.vfat", "-n", "SYSTEM", loop_device], check=True, capture_output=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    real = shutil.which("findmnt")
    (shim / "findmnt").write_text(
        f'#!/bin/sh\n[ "$*" = "-no SOURCE /" ] && {{ echo {loop_device}; exit 0; }}\nexec {real} "$@"\n')
    (shim / "findmnt").chmod(0o755)
    script, env = drive_script(tmp_path, loop_device)
    env["PATH"] = f"{shim}:{env['PATH']}"
    result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 3 and "holds the root file system" in result.stderr
    assert blkid(loop_device, "LABEL") == "SYSTEM"
