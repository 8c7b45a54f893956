"""Bake every role from synthetic base images in each flavor's real layout, then inspect the
results with independent tools: fsck.vfat, e2fsck, mtools, cloud-init's schema validator."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ceil import bakery
from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.errors import CeilError
from ceil.k3s.pki import ca_paths, ensure_ca
from ceil.partitions import read_mbr
from ceil.secrets import SecretStore
from ceil.sparse import ranges_in
from tests.bake_cli import bake_py_waiting
from tests.imagefactory import RASPIOS_CONFIG_TXT, blockmap_problems, make_base_image

pytestmark = pytest.mark.image
REPO = Path(__file__).resolve().parents[2]
FLAVORS = ["ubuntu-24.04-raspi", "ubuntu-26.04-raspi", "raspios-trixie", "hypriot-1.12.3"]
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def run_bake(*args, cwd: Path) -> subprocess.CompletedProcess:
    # Synthetic bases are never the flavor's pinned download (raspios-trixie pins one).
    extra = ["--any-base-image"] if "--base-image" in args else []
    return subprocess.run([sys.executable, str(REPO / "bake.py"), *args, *extra], cwd=cwd, capture_output=True, text=True)


def extract(img: Path, index: int, dest: Path) -> Path:
    part = next(p for p in read_mbr(img) if p.index == index)
    with open(img, "rb") as f, open(dest, "wb") as out:
        f.seek(part.start)
        remaining = part.size
        while remaining:
            chunk = f.read(min(remaining, 1 << 22))
            out.write(chunk)
            remaining -= len(chunk)
    return dest


def mtype(img: Path, path: str) -> str:
    off = read_mbr(img)[0].start
    return subprocess.run(["mtype", "-i", f"{img}@@{off}", f"::/{path}"], env=MT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module", params=FLAVORS)
def baked(request, tmp_path_factory, ssh_pubkey, offline_wheels):
    """A cluster baked with --all from a synthetic base of one flavor."""
    d = tmp_path_factory.mktemp(request.param)
    flavor = load_flavor(request.param)
    base = make_base_image(d / "base.img", flavor)
    (d / "cluster.yaml").write_text(
        f"flavor: {request.param}\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
        "router: {uplink: {type: wifi, wifi: {ssid: Home, psk: 'wifi-secret-123', country: DE}}}\n"
        "nodes: [{name: one, role: server}, {name: two}]\n"
        + ("" if flavor.python_tag else "piwatch: {enabled: false}\n")
        # ceil ships no armhf k3s digest: a HypriotOS cluster names its own (ceil/k3s/digests.py).
        + (f"kubernetes: {{k3s_sha256: {'e' * 64}}}\n" if flavor.arch == "armhf" else "")
    )
    base_digest = hashlib.sha256(base.read_bytes()).hexdigest()
    env_cache = d / "cache"
    os.environ["CEIL_CACHE"] = str(env_cache)
    os.environ["XDG_CACHE_HOME"] = str(offline_wheels)  # module scope: the autouse fixture is not active yet
    os.environ["CEIL_PIWATCH_LOCK"] = str(offline_wheels / "wheels.lock.json")
    # Two images written at once whatever this machine's cores (the default on two or more).
    result = run_bake("--all", "--jobs", "2", "--base-image", str(base), cwd=d)
    assert result.returncode == 0, result.stderr
    return {"dir": d, "flavor": flavor, "base": base, "base_digest": base_digest, "stderr": result.stderr}


ROLES = ["router", "one", "two"]


def test_roles_written_side_by_side_print_their_lines_whole_and_in_order(baked):
    """Each role's block: its `baking` line, its steps, its `wrote` line, none of another role's
    lines among them, the roles in cluster.yaml's order."""
    lines = [line.strip() for line in baked["stderr"].splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("baking ")]
    assert [lines[i].split()[1] for i in starts] == ROLES
    for role, begin, end in zip(ROLES, starts, starts[1:] + [len(lines)]):
        block = lines[begin:end]
        steps = [line.split()[0] for line in block[1:-1] if not line.startswith("wrote")]
        assert steps[0] == "fetch_base" and steps[-1] == "finish_image", block
        assert any(line.startswith(f"wrote out/ceil-{role}.img") for line in block), block
        assert not any(f"ceil-{other}." in line for line in block for other in ROLES if other != role), block


def test_outputs_and_manifests(baked):
    for role in ROLES:
        img = baked["dir"] / "out" / f"ceil-{role}.img"
        manifest = json.loads((baked["dir"] / "out" / f"ceil-{role}.json").read_text())
        assert manifest["role"] == role and manifest["flavor"] == baked["flavor"].name
        assert manifest["base_image"]["sha256"] == baked["base_digest"]
        # The block map flash writes: a sha256 per data range, and nothing outside it. No
        # whole-file digest unless asked for (--sha256): it hashed every hole.
        assert blockmap_problems(img, manifest["output"]) == []
        assert "sha256" not in manifest["output"]
        assert manifest["config_sha256"] == hashlib.sha256((baked["dir"] / "cluster.yaml").read_bytes()).hexdigest()
        assert manifest["ceil_version"]
        assert stat.S_IMODE(img.stat().st_mode) == 0o600  # it carries secrets until first boot
    assert not list((baked["dir"] / "out").glob(".*partial"))
    # ... and never committed, wherever out/ is (the repository's .gitignore covers only its own).
    assert {"/ceil-*.img", "/ceil-*.json", "/.ceil-*"} <= set((baked["dir"] / "out" / ".gitignore").read_text().splitlines())


def test_base_image_is_never_modified(baked):
    assert hashlib.sha256(baked["base"].read_bytes()).hexdigest() == baked["base_digest"]


def test_boot_partition_is_clean_and_holds_the_seed(baked, tmp_path):
    for role in ROLES:
        img = baked["dir"] / "out" / f"ceil-{role}.img"
        fat = extract(img, baked["flavor"].partitions.boot.index, tmp_path / f"{role}-boot.img")
        fsck = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        listing = subprocess.run(["mdir", "-b", "-i", str(fat), "::/"], env=MT, capture_output=True, text=True).stdout
        for name in ("user-data", "meta-data", "network-config", "ceil"):
            assert f"::/{name}" in listing, listing


def test_root_partition_is_byte_identical_and_clean(baked, tmp_path):
    idx = baked["flavor"].partitions.root.index
    base_root = extract(baked["base"], idx, tmp_path / "base-root.img")
    for role in ROLES:
        root = extract(baked["dir"] / "out" / f"ceil-{role}.img", idx, tmp_path / f"{role}-root.img")
        assert hashlib.sha256(root.read_bytes()).digest() == hashlib.sha256(base_root.read_bytes()).digest()
        fsck = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init (Debian package) not installed")
def test_user_data_passes_cloud_init_schema(baked, tmp_path):
    for role in ROLES:
        ud = tmp_path / f"{role}-user-data"
        ud.write_text(mtype(baked["dir"] / "out" / f"ceil-{role}.img", "user-data"))
        r = subprocess.run(["cloud-init", "schema", "-c", str(ud)], capture_output=True, text=True)
        assert r.returncode == 0 and "Valid cloud-config" in r.stdout, r.stdout + r.stderr
        data = yaml.safe_load(ud.read_text())
        assert data["hostname"] == f"ceil-{role}" and data["ssh_pwauth"] is False
        assert data["users"][0]["lock_passwd"] is True and "passwd" not in data["users"][0]


def test_each_card_carries_its_machines_host_key_and_the_workstation_holds_its_public_half(baked):
    """The host key made at the bake travels as a secret (scrubbed at first boot), the workstation's
    known_hosts for the cluster holds its public half under the machine's alias before any card
    boots, and user-data has cloud-init keep it (no deleting, no other keys) and place it early."""
    from ceil.host_keys import CARD_SECRET, pinned_keys

    keys = pinned_keys(SecretStore(baked["dir"] / "secrets", make_new=False), ROLES)
    assert sorted(keys) == sorted(ROLES) and len(set(keys.values())) == len(ROLES)
    known = (baked["dir"] / "cache" / "known_hosts-ceil").read_text().splitlines()
    assert sorted(known) == sorted(f"ceil-{r} {keys[r]}" for r in ROLES)
    mount = baked["flavor"].boot_mount
    for role in ROLES:
        img = baked["dir"] / "out" / f"ceil-{role}.img"
        on_card = mtype(img, f"ceil/secrets/{CARD_SECRET}")
        assert on_card == (baked["dir"] / "secrets" / "ssh-host" / role).read_text()
        data = yaml.safe_load(mtype(img, "user-data"))
        assert data["ssh_deletekeys"] is False and data["ssh_genkeytypes"] == ["ed25519"]
        [early] = [c[2] for c in data["bootcmd"] if "ceil-host-key" in c[2]]
        assert f"{mount}/ceil/lib/ceil-host-key" in early and f"{mount}/ceil/secrets/{CARD_SECRET} --early" in early
        assert f'/usr/local/lib/ceil/ceil-host-key "$SRC/secrets/{CARD_SECRET}"' in mtype(img, "ceil/install.sh")


def test_install_sh_runs_again_at_the_next_boot_until_it_has_finished(baked, tmp_path):
    """Found in review: cloud-init marks runcmd done for the instance before it runs install.sh, so
    a power cut (or an error) in install.sh was never retried: no ceil units, and on Raspberry Pi
    OS no sshd. user-data's bootcmd (every boot) clears the two semaphores until install.sh has
    written its end mark; the command is run here on a scratch /var/lib, as it is written."""
    for role in ROLES:
        img = baked["dir"] / "out" / f"ceil-{role}.img"
        data = yaml.safe_load(mtype(img, "user-data"))
        [retry] = [c[2] for c in data["bootcmd"] if "config_scripts_user" in c[2]]
        assert data["bootcmd"].index(["sh", "-c", retry]) == 0  # before anything else can fail
        root = tmp_path / role
        sem = root / "var/lib/cloud/instance/sem"
        sem.mkdir(parents=True)
        for done in ("config_runcmd", "config_scripts_user", "config_users_groups"):
            (sem / done).write_text("")
        local = retry.replace("/var/lib/", f"{root}/var/lib/")
        subprocess.run(["sh", "-c", local], check=True)
        assert sorted(p.name for p in sem.iterdir()) == ["config_users_groups"]  # runcmd runs again
        (root / "var/lib/ceil").mkdir()
        (root / "var/lib/ceil/installed").write_text("")
        (sem / "config_scripts_user").write_text("")
        subprocess.run(["sh", "-c", local], check=True)
        assert (sem / "config_scripts_user").exists()  # finished: never again
        install = mtype(img, "ceil/install.sh")
        # the mark is the last thing install.sh does, synced; a missing payload marks nothing
        assert install.index("touch /var/lib/ceil/installed\nsync\n") > install.index("systemctl start --no-block ceil-firstboot.target")
        code = [line for line in install.splitlines() if not line.lstrip().startswith("#")]
        assert [line for line in code if "/var/lib/ceil/installed" in line] == ["touch /var/lib/ceil/installed"]


def test_meta_data_has_unique_instance_id(baked):
    ids = {yaml.safe_load(mtype(baked["dir"] / "out" / f"ceil-{r}.img", "meta-data"))["instance-id"] for r in ROLES}
    assert len(ids) == 3


def test_network_config_per_role(baked):
    router = yaml.safe_load(mtype(baked["dir"] / "out" / "ceil-router.img", "network-config"))
    node = yaml.safe_load(mtype(baked["dir"] / "out" / "ceil-one.img", "network-config"))
    if baked["flavor"].network == "ifupdown":
        assert router["version"] == 1 and router["config"][0]["subnets"][0]["address"] == "10.42.0.1/24"
        # WiFi comes from the wifi-ifupdown step, with the derived key only: the passphrase
        # is nowhere in the image, not even in the secrets that first boot moves off the card.
        image = (baked["dir"] / "out" / "ceil-router.img").read_bytes()
        assert b"wifi-secret-123" not in image
        assert b"ceil-wifi-uplink.service" in image
        return
    assert router["ethernets"]["eth0"]["addresses"] == ["10.42.0.1/24"]
    assert router["wifis"]["wlan0"]["access-points"]["Home"]["password"] == "wifi-secret-123"
    assert router["wifis"]["wlan0"]["dhcp4-overrides"] == {"hostname": "ceil-router"}  # the home DNS learns it
    assert node["ethernets"]["eth0"]["dhcp4"] is True
    assert (router.get("renderer") == "NetworkManager") == (baked["flavor"].network == "netplan-nm")


def node_line(baked) -> str:
    return mtype(baked["dir"] / "out" / "ceil-one.img", baked["flavor"].cmdline)


def test_cmdline_flags_once_on_every_role(baked):
    if not baked["flavor"].cmdline:
        pytest.skip("flavor has no cmdline.txt")
    # Where the flavor keeps it: Ubuntu 26.04's boot slots put it in current/.
    router = mtype(baked["dir"] / "out" / "ceil-router.img", baked["flavor"].cmdline)
    # The memory cgroup on the router too: its services' memory bounds (the status board's
    # MemoryMax=) are ignored without it, and Raspberry Pi kernels leave it off.
    assert router.count("cgroup_memory=1") == 1 and router.count("cgroup_enable=memory") == 1
    # WiFi uplink: the regulatory domain from the driver's first moment, as Raspberry Pi Imager
    # writes it (Raspberry Pi OS keeps WiFi rfkill-blocked until a country is set).
    assert router.split().count("cfg80211.ieee80211_regdom=DE") == 1 and "regdom" not in node_line(baked)
    node = node_line(baked)
    assert node.count("cgroup_memory=1") == 1 and node.count("cgroup_enable=memory") == 1
    assert len(node.strip().splitlines()) == 1


def test_every_boot_slot_present_gets_the_flags(baked):
    """Ubuntu 26.04: a pending new/ slot is what the first boot runs after its tryboot, and it
    becomes current/; without the flags there, the node would lose its memory cgroup for good.
    A slot the image does not have is not made (the synthetic base has new/, not old/)."""
    others = baked["flavor"].other_cmdlines
    if not others:
        pytest.skip(f"{baked['flavor'].name} has no boot slots")
    img = baked["dir"] / "out" / "ceil-one.img"
    pending = mtype(img, others[0])
    assert pending.count("cgroup_memory=1") == 1 and pending.count("cgroup_enable=memory") == 1
    off = read_mbr(img)[0].start
    for absent in others[1:]:
        assert subprocess.run(["mtype", "-i", f"{img}@@{off}", f"::/{absent}"], env=MT,
                              capture_output=True).returncode != 0, f"{absent} was created"


def test_a_pi5_node_boots_the_4k_page_kernel_and_the_router_keeps_the_images_choice(baked):
    """Raspberry Pi OS boots a Pi 5 with 16K pages, where jemalloc-linked container images abort;
    the nodes' config.txt names the image's 4K-page kernel and its initramfs for [pi5] only, after
    everything the image had, and hands the rest back to [all] (docs/hardware.md)."""
    pi5 = baked["flavor"].pi5_4k_kernel
    if not pi5:
        pytest.skip(f"{baked['flavor'].name} has no 16K-page Pi 5 kernel to replace")
    original = RASPIOS_CONFIG_TXT
    assert mtype(baked["dir"] / "out" / "ceil-router.img", "config.txt") == original
    for node in ("one", "two"):
        text = mtype(baked["dir"] / "out" / f"ceil-{node}.img", "config.txt")
        assert text.startswith(original), text
        added = [line for line in text[len(original):].splitlines() if line and not line.startswith("#")]
        assert added == ["[all]", "[pi5]", f"kernel={pi5.kernel}", "auto_initramfs=0",
                         f"initramfs {pi5.initramfs} followkernel", "[all]"], text


def raspios_base_without(tmp_path: Path, ssh_pubkey: str, boot_file: str, extra_yaml: str = "") -> Path:
    """A Raspberry Pi OS base whose boot partition lacks `boot_file`, and a cluster.yaml for it."""
    base = make_base_image(tmp_path / "base.img", load_flavor("raspios-trixie"))
    boot = read_mbr(base)[0].start
    subprocess.run(["mdel", "-i", f"{base}@@{boot}", f"::/{boot_file}"], env=MT, check=True)
    (tmp_path / "cluster.yaml").write_text(f"flavor: raspios-trixie\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
                                           "router: {uplink: {type: ethernet}}\npiwatch: {enabled: false}\n" + extra_yaml)
    return base


def test_pi5_page_size_16k_leaves_config_txt_as_the_image_has_it(tmp_path, ssh_pubkey):
    """...and needs no 4K-page kernel on the base (an image made for the Pi 5 alone has none)."""
    base = raspios_base_without(tmp_path, ssh_pubkey, load_flavor("raspios-trixie").pi5_4k_kernel.kernel,
                                "kubernetes: {pi5_page_size: 16k}\nnodes: [{name: one, role: server}]\n")
    result = run_bake("--role", "one", "--base-image", str(base), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert mtype(tmp_path / "out" / "ceil-one.img", "config.txt") == RASPIOS_CONFIG_TXT


def test_a_base_without_the_4k_page_kernel_is_refused_before_anything_is_written(tmp_path, ssh_pubkey):
    """Naming a kernel the card does not have would leave a Pi 5 node with nothing to boot."""
    base = raspios_base_without(tmp_path, ssh_pubkey, load_flavor("raspios-trixie").pi5_4k_kernel.initramfs)
    result = run_bake("--all", "--base-image", str(base), cwd=tmp_path)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1 and "its boot partition has no initramfs8" in said, said
    assert "kubernetes.pi5_page_size: 16k" in said and "images/raspios-trixie.yaml" in said, said
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # The router's config.txt names no kernel: its card needs none.
    assert run_bake("--role", "router", "--base-image", str(base), cwd=tmp_path).returncode == 0


def test_rebake_reuses_secrets_and_keeps_flags_single(baked):
    d = baked["dir"]
    secrets_before = {p: p.read_bytes() for p in (d / "secrets").rglob("*") if p.is_file()}
    # The workstation met a card baked before ceil made host keys (its key recorded on first
    # contact): the re-bake files the key the new card carries, the same as the first bake made.
    from ceil.host_keys import pinned_keys

    known_hosts = Path(os.environ["CEIL_CACHE"]) / "known_hosts-ceil"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    known_hosts.write_text("ceil-router ssh-ed25519 AAAArouter\nceil-one ssh-ed25519 AAAAold\n")
    result = run_bake("--role", "one", "--base-image", str(baked["base"]), cwd=d)
    assert result.returncode == 0, result.stderr
    pinned = pinned_keys(SecretStore(d / "secrets", make_new=False), ["one"])["one"]
    assert known_hosts.read_text() == f"ceil-router ssh-ed25519 AAAArouter\nceil-one {pinned}\n"
    assert "one's SSH host key in" in " ".join(result.stderr.split())
    assert mtype(d / "out" / "ceil-one.img", "ceil/secrets/ssh/ssh_host_ed25519_key") == (d / "secrets/ssh-host/one").read_text()
    # A second bake changes nothing and says nothing.
    result = run_bake("--role", "one", "--base-image", str(baked["base"]), cwd=d)
    assert result.returncode == 0 and "host key" not in result.stderr, result.stderr
    assert known_hosts.read_text() == f"ceil-router ssh-ed25519 AAAArouter\nceil-one {pinned}\n"
    assert {p: p.read_bytes() for p in (d / "secrets").rglob("*") if p.is_file()} == secrets_before
    if baked["flavor"].cmdline:
        assert mtype(d / "out" / "ceil-one.img", baked["flavor"].cmdline).count("cgroup_memory=1") == 1
    if baked["flavor"].pi5_4k_kernel:
        assert mtype(d / "out" / "ceil-one.img", "config.txt").count("[pi5]") == 1
    for p in secrets_before:
        if p.name != ".gitignore":
            assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_a_secrets_folder_from_before_the_format_stamp_keeps_every_key_through_a_bake(baked, tmp_path):
    """Issue 19 #5: a cluster baked by an older ceil (no secrets/FORMAT, no router contract, no
    host keys made at bake time) re-baked with this one: every file it had stays byte for byte
    (its nodes' tokens, the CA, the VPN keys: re-generated, the cluster would split), and only
    what this ceil adds is added."""
    if baked["flavor"].name != "ubuntu-24.04-raspi":
        pytest.skip("one flavor is enough: the secrets folder does not depend on it")
    d = tmp_path / "cluster"
    shutil.copytree(baked["dir"], d, ignore=shutil.ignore_patterns("out", "cache", "*.img"))
    for later in ("FORMAT", "router-contract"):
        (d / "secrets" / later).unlink()
    shutil.rmtree(d / "secrets" / "ssh-host")
    old = {p.relative_to(d): p.read_bytes() for p in (d / "secrets").rglob("*") if p.is_file()}
    result = run_bake("--all", "--base-image", str(baked["base"]), cwd=d)
    assert result.returncode == 0, result.stderr
    now = {p.relative_to(d): p.read_bytes() for p in (d / "secrets").rglob("*") if p.is_file()}
    assert {p: now.get(p) for p in old} == old
    added = {str(p.relative_to("secrets")).split("/")[0] for p in set(now) - set(old)}
    assert added == {"FORMAT", "router-contract", "ssh-host"}, added


def test_no_secret_outside_the_secrets_folder(baked, tmp_path):
    """Secret values travel only in ceil/secrets/ (moved off the card on first boot)."""
    d = baked["dir"]
    secret_values = [p.read_bytes().strip() for p in (d / "secrets").rglob("*") if p.is_file() and p.name != ".gitignore"]
    chunks = {v[i : i + 24] for v in secret_values for i in range(0, max(len(v) - 24, 1), 97) if len(v) >= 16}
    for role in ROLES:
        fat = extract(d / "out" / f"ceil-{role}.img", 1, tmp_path / f"{role}.fat")
        dump = tmp_path / role
        subprocess.run(["mcopy", "-s", "-i", str(fat), "::/", str(dump)], env=MT, check=True, capture_output=True)
        for f in dump.rglob("*"):
            if f.is_file() and "secrets" not in f.relative_to(dump).parts and f.name != "network-config":
                data = f.read_bytes()
                assert not any(c in data for c in chunks), f"secret material in {f.relative_to(dump)}"


def test_wrong_base_image_is_refused_without_output(tmp_path, ssh_pubkey):
    base = make_base_image(tmp_path / "trixie.img", load_flavor("raspios-trixie"))
    (tmp_path / "cluster.yaml").write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    result = run_bake("--role", "router", "--base-image", str(base), cwd=tmp_path)
    assert result.returncode == 1
    assert "labelled" in result.stderr and "system-boot" in result.stderr
    assert not (tmp_path / "out" / "ceil-router.img").exists()


def test_another_releases_image_with_the_same_labels_is_refused_before_any_role_is_written(tmp_path, ssh_pubkey):
    """Ubuntu 26.04's image carries 24.04's partition labels: baked as 24.04, the router was
    written without a word and the first node failed on its command line, the router's image
    already in out/. Now the base is inspected once, before any role, and the message says
    what the image is and which flavor is made for it."""
    base = make_base_image(tmp_path / "resolute.img", load_flavor("ubuntu-26.04-raspi"))
    (tmp_path / "cluster.yaml").write_text(f"flavor: ubuntu-24.04-raspi\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
                                           "router: {uplink: {type: ethernet}}\n")
    result = run_bake("--all", "--base-image", str(base), cwd=tmp_path)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is synthetic ubuntu-26.04-raspi, not the OS flavor ubuntu-24.04-raspi is written for" in said, said
    assert "VERSION_ID=26.04 where ubuntu-24.04-raspi expects 24.04" in said
    assert "python3 3.14.1-1 where ubuntu-24.04-raspi bundles PiWatch for cp312" in said
    assert "set `flavor: ubuntu-26.04-raspi` in cluster.yaml" in said
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_base_without_the_flavors_command_line_is_refused_before_anything_is_written(tmp_path, ssh_pubkey):
    flavor = load_flavor("ubuntu-24.04-raspi")
    base = make_base_image(tmp_path / "base.img", flavor)
    boot = read_mbr(base)[0].start
    subprocess.run(["mdel", "-i", f"{base}@@{boot}", "::/cmdline.txt"], env=MT, check=True)
    (tmp_path / "cluster.yaml").write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
                                           "router: {uplink: {type: ethernet}}\n")
    result = run_bake("--all", "--base-image", str(base), cwd=tmp_path)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1 and "its boot partition has no cmdline.txt" in said, said
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_the_flavors_made_for_an_image_are_found_by_its_os_release_and_python():
    trixie = {"ID": "debian", "VERSION_CODENAME": "trixie"}
    assert [f.name for f in bakery.flavors_for(trixie, "cp313")][:1] == ["raspios-trixie"]  # offered ones first
    assert {f.name for f in bakery.flavors_for(trixie, "cp313")} >= {"testbed-ubuntu", "testbed-raspios"}
    assert [f.name for f in bakery.flavors_for({"ID": "ubuntu", "VERSION_ID": "24.04"}, "cp312")] == ["ubuntu-24.04-raspi"]
    assert bakery.flavors_for({"ID": "ubuntu", "VERSION_ID": "24.04"}, "cp313") == []
    # A twin's image under a real flavor: only the flavors whose partition labels and architecture
    # it has too (the Raspberry Pi OS ones label their partitions bootfs/rootfs).
    ubuntu_labels = load_flavor("testbed-ubuntu").partitions
    assert [f.name for f in bakery.flavors_for(trixie, "cp313", ubuntu_labels, "amd64")] == [
        "testbed-ubuntu-amd64", "testbed-ubuntu-slots-amd64"]
    assert bakery.packages_arch(b"Package: python3\nArchitecture: arm64\nVersion: 3.13.5-1\n\n") == "arm64"
    assert bakery.python_tag("3.12.3-0ubuntu2.1") == "cp312" and bakery.python_tag("1:3.13.5-1") == "cp313"
    assert bakery.python_tag("") is None


@pytest.mark.parametrize("status", [None, "Package: openssh-server\nStatus: install ok installed\nVersion: 1\n\n"
                                             "Package: cloud-init\nStatus: deinstall ok config-files\nVersion: 2\n"])
def test_a_base_image_without_cloud_init_is_refused_without_output(tmp_path, ssh_pubkey, status):
    """Such a card boots and never reads its seed (Raspberry Pi OS before 2025-11-24: firstrun.sh)."""
    base = make_base_image(tmp_path / "old.img", load_flavor("raspios-trixie"), dpkg_status=status)
    (tmp_path / "cluster.yaml").write_text(f"flavor: raspios-trixie\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
                                           "router: {uplink: {type: ethernet}}\n")
    result = run_bake("--role", "router", "--base-image", str(base), cwd=tmp_path)
    assert result.returncode == 1
    expected = "has no /var/lib/dpkg/status" if status is None else "has no cloud-init installed (1 packages"
    assert expected in result.stderr and "images/raspios-trixie.yaml" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "ceil-router.img").exists()


def test_installed_packages_reads_only_installed_stanzas():
    from ceil.bakery import installed_packages

    status = ("Package: a\nStatus: install ok installed\nVersion: 1.0\nDescription: x\n more: text\n\n"
              "Package: b\nStatus: deinstall ok config-files\nVersion: 2\n")
    assert installed_packages(status) == {"a": "1.0"}


def test_every_roles_checks_run_before_anything_is_written(tmp_path, ssh_pubkey):
    """Issue 19: with two servers, the router's image was written before the nodes' check refused
    the cluster. Now every problem of every role is reported at once and nothing is written."""
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    (tmp_path / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        "nodes: [{name: one, role: server}, {name: two, role: server}]\n"
        "vpn: {port: 22}\n")
    result = run_bake("--all", "--base-image", str(base), cwd=tmp_path)
    assert result.returncode == 1
    assert "nothing was baked" in result.stderr
    assert "role 'server'" in result.stderr and "vpn.port: 22" in result.stderr  # both, at once
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_role_fails_before_work(tmp_path, ssh_pubkey):
    (tmp_path / "cluster.yaml").write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    result = run_bake("--role", "five", cwd=tmp_path)
    assert result.returncode == 1 and "'five'" in result.stderr and "router, one" in result.stderr


def test_full_disk_leaves_no_partial_image(tmp_path, ssh_pubkey, monkeypatch):
    flavor = load_flavor("ubuntu-24.04-raspi")
    base = make_base_image(tmp_path / "base.img", flavor)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ceil-router.img").write_bytes(b"previous good image")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bakery, "copy_window", full)
    ctx = bakery.BakeContext(load_cluster(cfg), cfg, "router", out, SecretStore(tmp_path / "secrets"), base,
                             any_base_image=True)
    with pytest.raises(CeilError, match="no space left"):
        bakery.bake(ctx)
    assert (out / "ceil-router.img").read_bytes() == b"previous good image"
    assert not list(out.glob(".*partial"))


def test_a_second_bake_waits_for_the_one_writing_the_clusters_secrets(tmp_path, ssh_pubkey):
    """Two bakes of a new cluster at once each made a CA; the images of one then carried a CA that
    secrets/ no longer held. The second waits, says so, writes nothing meanwhile, then uses the
    first one's secrets."""
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    (tmp_path / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        "nodes: [{name: one, role: server}]\npiwatch: {enabled: false}\n")
    first = SecretStore(tmp_path / "secrets")
    with first.held():
        second, said = bake_py_waiting("--role", "one", "--base-image", str(base), "--any-base-image", cwd=tmp_path)
        time.sleep(1)
        assert second.poll() is None and not (tmp_path / "out").exists()
        assert {p.name for p in first.root.iterdir()} <= {".gitignore", ".lock", "FORMAT"}  # no secret made
        # what the first bake makes meanwhile is what the second must use
        ca = ensure_ca(first, "server-ca").cert_pem
    rest, _ = second.communicate(timeout=120)
    assert second.returncode == 0, said + rest
    crt, _ = ca_paths("server-ca")
    assert first.read(crt) == ca
    carried = subprocess.run(["mdir", "-/", "-b", "-i", f"{tmp_path / 'out' / 'ceil-one.img'}@@{read_mbr(tmp_path / 'out' / 'ceil-one.img')[0].start}",
                              "::/ceil"], env=MT, capture_output=True, text=True).stdout
    [path] = [line for line in carried.splitlines() if line.endswith("tls/server-ca.crt")]
    assert mtype(tmp_path / "out" / "ceil-one.img", path.removeprefix("::/")).encode() == ca


def test_a_second_bake_into_the_same_folder_waits_even_with_other_secrets(tmp_path, ssh_pubkey):
    """Found in review: two bakes sharing out/ with different secrets/ (two clusters' configs, or
    --secrets) held different locks; one's clean-up removed the other's partial image, and both
    staged the same partial names, so an image could be published with the other's boot files."""
    from ceil.locks import exclusive

    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    (tmp_path / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        "nodes: [{name: one, role: server}]\npiwatch: {enabled: false}\n")
    out = tmp_path / "out"
    out.mkdir()
    others = out / ".ceil-one.img.partial"  # another cluster's bake, half-way through its image
    others.write_bytes(b"half an image")
    with exclusive(out, "the test's other bake"):
        second, said = bake_py_waiting("--role", "one", "--base-image", str(base), "--any-base-image",
                                       "--secrets", str(tmp_path / "other-secrets"), cwd=tmp_path)
        time.sleep(1)
        assert second.poll() is None and "holds out: one bake at a time" in " ".join(said.split()), said
        assert sorted(p.name for p in out.iterdir()) == [others.name]  # nothing removed or written
        others.unlink()  # the other bake published its image
    rest, _ = second.communicate(timeout=120)
    assert second.returncode == 0, said + rest
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "ceil-one.img", "ceil-one.json"]  # no lock file left


def user_tmpdir(tmp_path: Path, monkeypatch) -> Path:
    """TMPDIR set by the user: the bake's work folder goes there."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    return temp


def test_the_work_folder_goes_to_ram_unless_the_user_chose_a_temporary_folder(tmp_path, monkeypatch):
    """Creating and removing its files on the output's disk waited for the writeback of the images
    just written (10 ms per file on ext4): RAM when there is room, TMPDIR when the user set it."""
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.delenv("TMPDIR", raising=False)
    assert bakery.work_root(shm) == str(shm)
    monkeypatch.setattr(bakery, "RAM_WORK_NEEDS", shutil.disk_usage(shm).free + (1 << 30))
    assert bakery.work_root(shm) is None  # a container's 64 MiB /dev/shm: the system's temporary folder
    assert bakery.work_root(tmp_path / "absent") is None
    monkeypatch.undo()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert bakery.work_root(shm) is None  # tempfile then takes TMPDIR


def own_k3s_build(binary: bytes, version: str = "v1.36.1+k3s1") -> str:
    """cluster.yaml's line for a k3s binary that is no release (these tests' random bytes): the
    user vouches for it by its digest, under a version ceil has no digest for."""
    return f"kubernetes: {{k3s_version: {version}, k3s_sha256: {hashlib.sha256(binary).hexdigest()}}}\n"


def airgap_node_context(tmp_path: Path, ssh_pubkey: str) -> bakery.BakeContext:
    """A server whose bake stages its root partition (the k3s binary goes into it)."""
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"), root_mib=160)
    release = tmp_path / "release"
    release.mkdir()
    binary = os.urandom(1 << 20)
    (release / "k3s-arm64").write_bytes(binary)
    (release / "sha256sum-arm64.txt").write_text(f"{hashlib.sha256(binary).hexdigest()}  k3s-arm64\n")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                   f"nodes: [{{name: one, role: server}}]\n{own_k3s_build(binary)}")
    return bakery.BakeContext(load_cluster(cfg), cfg, "one", tmp_path / "out", SecretStore(tmp_path / "secrets"),
                              base, release, any_base_image=True)


def test_the_staged_partitions_live_beside_the_output_not_in_the_temporary_folder(tmp_path, ssh_pubkey, monkeypatch):
    """The staged root holds as much as the root file system: in a RAM-backed /tmp (Fedora, Arch)
    it filled the tmpfs, and the error then told the user to free space in the output folder. The
    staged boot partition holds the role's secrets: 0600 from its first byte, as the image."""
    ctx = airgap_node_context(tmp_path, ssh_pubkey)
    temp = user_tmpdir(tmp_path, monkeypatch)
    seen = []
    real_write_files = bakery.write_files

    def watch(image, files):
        boot = ctx.staged_boot.stat()
        seen.append((image, image.stat().st_size, stat.S_IMODE(boot.st_mode), boot.st_size,
                     sorted(str(p.relative_to(temp)) for p in temp.glob("*/*"))))
        return real_write_files(image, files)

    monkeypatch.setattr(bakery, "write_files", watch)
    bakery.bake(ctx)
    [(image, size, boot_mode, boot_size, in_temp)] = seen
    assert image.parent == ctx.out_dir and size == ctx.root.size
    assert ctx.staged_boot.parent == ctx.out_dir and boot_mode == 0o600 and boot_size == ctx.boot.size
    # the work folder: the payload and the seed's files on their way to the FAT, no partition
    assert {Path(p).name for p in in_temp} == {"payload", "user-data", "meta-data", "network-config", "cmdline.txt"}
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [".gitignore", "ceil-one.img", "ceil-one.json"]


@pytest.mark.parametrize("where", ["temporary folder", "output folder"])
def test_a_full_disk_is_named_where_it_filled(tmp_path, ssh_pubkey, monkeypatch, where):
    ctx = airgap_node_context(tmp_path, ssh_pubkey)
    temp = user_tmpdir(tmp_path, monkeypatch)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bakery, "build_payload" if where == "temporary folder" else "write_files", full)
    with pytest.raises(CeilError) as e:
        bakery.bake(ctx)
    said = str(e.value)
    if where == "temporary folder":
        assert f"in the temporary folder {temp}" in said and "TMPDIR" in said
        assert str(ctx.out_dir) not in said
    else:
        # The image, and the staged partitions with the base's data in them beside it.
        with open(ctx.base.path, "rb") as f:
            staged = [sum(n for _, n in ranges_in(f.fileno(), p.start, p.size)) // 2**20 for p in (ctx.boot, ctx.root)]
        need = bakery.allocated_bytes(ctx.base.path) // 2**20 + sum(staged)
        assert f"free at least {need} MiB in {ctx.out_dir}" in said and "TMPDIR" not in said
        # With two images written at once, each needs that room at the same time.
        ctx.side_by_side = 2
        said = str(bakery.no_space(ctx, bakery.write_rootfs))
        assert f"free at least {2 * need} MiB in {ctx.out_dir} for 2 images written at once" in said
        assert f"or {need} MiB with --jobs 1" in said
    assert not list(ctx.out_dir.glob(".*partial"))


def test_router_carries_the_piwatch_bundle(baked, tmp_path):
    """The router's payload holds PiWatch's offline bundle (wheels from the cache, the piwatch
    wheel built here, the installer), so first boot needs no PyPI; its unit travels with ceil's."""
    if not baked["flavor"].python_tag:
        pytest.skip("flavor bundles no PiWatch")
    off = read_mbr(baked["dir"] / "out" / "ceil-router.img")[0].start
    img = f"{baked['dir'] / 'out' / 'ceil-router.img'}@@{off}"
    listing = subprocess.run(["mdir", "-/", "-b", "-i", img, "::/ceil/files/piwatch"], env=MT, capture_output=True, text=True).stdout
    for needed in ("install-piwatch.sh", "unpack_wheels.py", "requirements.txt",
                   "placeholder-0-py3-none-any.whl", "piwatch-"):
        assert needed in listing, listing
    assert "ExecStart=/opt/ceil/piwatch/venv/bin/python" in mtype(
        baked["dir"] / "out" / "ceil-router.img", "ceil/units/ceil-piwatch.service")
    node = subprocess.run(["mdir", "-b", "-i", f"{baked['dir'] / 'out' / 'ceil-one.img'}@@{off}", "::/ceil/files"], env=MT, capture_output=True, text=True)
    assert node.returncode != 0  # nodes carry no PiWatch
    assert "PIWATCH_HOST=10.42.0.1" in mtype(baked["dir"] / "out" / "ceil-router.img", "ceil/etc/piwatch.env")


def test_piwatch_on_a_flavor_without_python_facts_is_refused(tmp_path, ssh_pubkey):
    base = make_base_image(tmp_path / "hypriot.img", load_flavor("hypriot-1.12.3"))
    (tmp_path / "cluster.yaml").write_text(
        f"flavor: hypriot-1.12.3\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        # armhf: no shipped k3s digest, and cluster.yaml is judged whole, the nodes' pin included
        f"kubernetes: {{k3s_sha256: {'a' * 64}}}\n")
    result = run_bake("--role", "router", "--base-image", str(base), cwd=tmp_path)
    assert result.returncode == 1 and "piwatch.enabled: false" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "ceil-router.img").exists()


def test_airgap_bundle_goes_into_the_node_root_fs(tmp_path, ssh_pubkey, offline_wheels, monkeypatch):
    """`--airgap DIR`: the verified k3s binary lands in the node's ext4 root (debugfs), the file
    system stays clean, and the router gets the same files in its cache when the workstation has them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(offline_wheels))
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"), root_mib=160)
    release = tmp_path / "k3s-cache" / "v1.36.1+k3s1"  # the workstation cache's layout
    release.mkdir(parents=True)
    binary = os.urandom(3 << 20)
    (release / "k3s-arm64").write_bytes(binary)
    (release / "sha256sum-arm64.txt").write_text(f"{hashlib.sha256(binary).hexdigest()}  k3s-arm64\n")
    (tmp_path / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        f"nodes: [{{name: one, role: server}}]\n{own_k3s_build(binary)}")
    monkeypatch.setenv("CEIL_K3S_CACHE", str(release.parent))
    result = run_bake("--all", "--base-image", str(base), "--airgap", str(release), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from ceil.ext4fs import read_file
    from ceil.k3s.install import AIRGAP_ON_TARGET

    root = extract(tmp_path / "out" / "ceil-one.img", 2, tmp_path / "one-root.img")
    assert read_file(root, f"{AIRGAP_ON_TARGET}/k3s-arm64") == binary
    assert subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True).returncode == 0
    from ceil.k3s.cache import CACHE_ROOT_ON_ROUTER

    router_root = extract(tmp_path / "out" / "ceil-router.img", 2, tmp_path / "router-root.img")
    assert read_file(router_root, f"{CACHE_ROOT_ON_ROUTER}/k3s/v1.36.1+k3s1/k3s-arm64") == binary
    # the boot partition did not have to hold it
    boot = extract(tmp_path / "out" / "ceil-one.img", 1, tmp_path / "one-boot.img")
    assert subprocess.run(["fsck.vfat", "-n", str(boot)], capture_output=True).returncode == 0
    # The rewritten root partition is mapped and hashed too (not taken from the base's cache).
    for role in ("one", "router"):
        manifest = json.loads((tmp_path / "out" / f"ceil-{role}.json").read_text())
        assert blockmap_problems(tmp_path / "out" / f"ceil-{role}.img", manifest["output"]) == []


def bake_one_server_with_airgap(tmp_path, ssh_pubkey, base, release, kubernetes: str = ""):
    (tmp_path / "cluster.yaml").write_text(
        f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
        f"nodes: [{{name: one, role: server}}]\npiwatch: {{enabled: false}}\n{kubernetes}")
    return run_bake("--all", "--base-image", str(base), "--airgap", str(release), cwd=tmp_path)


def test_airgap_with_a_bad_digest_is_refused(tmp_path, ssh_pubkey):
    """Before the first image: it was refused at the node's bake, after out/ceil-router.img was written.
    The binary is checked against the digest ceil ships for the release, not the sums file beside
    it (issue 18: a forged pair passed)."""
    from ceil.config.schema import Kubernetes
    from ceil.k3s.digests import KNOWN

    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    release = tmp_path / "release"
    release.mkdir()
    (release / "k3s-arm64").write_bytes(b"tampered")
    (release / "sha256sum-arm64.txt").write_text(f"{hashlib.sha256(b'tampered').hexdigest()}  k3s-arm64\n")
    result = bake_one_server_with_airgap(tmp_path, ssh_pubkey, base, release)
    published = KNOWN[Kubernetes().k3s_version]["arm64"]
    assert result.returncode == 1 and "sha256" in result.stderr and published in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "secrets").exists()


@pytest.mark.parametrize("content", ["empty", "missing", "unlisted images"])
def test_an_airgap_folder_without_the_release_is_refused(tmp_path, ssh_pubkey, content):
    """An empty (or mistyped) --airgap folder was ignored: the nodes were baked without the bundle."""
    base = make_base_image(tmp_path / "base.img", load_flavor("ubuntu-24.04-raspi"))
    release = tmp_path / "release"
    if content != "missing":
        release.mkdir()
    if content == "unlisted images":  # the binary checks out, the images tarball cannot be checked
        binary = b"k3s"
        (release / "k3s-arm64").write_bytes(binary)
        (release / "sha256sum-arm64.txt").write_text(f"{hashlib.sha256(binary).hexdigest()}  k3s-arm64\n")
        (release / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"images")
    result = bake_one_server_with_airgap(tmp_path, ssh_pubkey, base, release,
                                         own_k3s_build(b"k3s") if content == "unlisted images" else "")
    said = " ".join(result.stderr.split())
    expected = {"empty": f"--airgap {release} is empty", "missing": f"--airgap {release} does not exist",
                "unlisted images": "k3s-airgap-images-arm64.tar.zst is not listed in"}[content]
    assert result.returncode == 1 and expected in said and "Traceback" not in said, said
    if content != "unlisted images":
        assert "k3s-arm64, sha256sum-arm64.txt" in said and "bake without --airgap" in said
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_bake_records_the_routers_contract(baked):
    """compat: a later bake of nodes alone can tell whether this router serves what they expect."""
    from ceil.compat import ROUTER_CONTRACT

    assert (baked["dir"] / "secrets" / "router-contract").read_text() == f"{ROUTER_CONTRACT}\n"
    from ceil.compat import SECRETS_FORMAT

    assert (baked["dir"] / "secrets" / "FORMAT").read_text() == f"{SECRETS_FORMAT}\n"
    assert (baked["dir"] / "secrets" / "nodes" / "one.k3s-version").read_text().startswith("v1.")
