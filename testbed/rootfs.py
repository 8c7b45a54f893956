"""Root file system of a test bed: mmdebstrap a Debian base, then shape it like the mimicked flavor.

Owns: the mmdebstrap call (as root, foreign arch through qemu-user/binfmt) and the post-install
edits that make the tree a faithful stand-in for a Pi image: no SSH host keys, empty machine-id,
no passwords, fstab by label, cloud-init seed discovery as the flavor does it, and the boot
partition's contents (kernel, initrd, cmdline.txt) staged in a separate directory.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import shutil
import subprocess
from pathlib import Path

from .recipe import Recipe

log = logging.getLogger("testbed")


# The Pi's built-in Ethernet port gets no predictable name (no firmware index, not on a PCI or
# USB path udev names) and stays eth0; QEMU's virtio NICs play that port in the twin.
BUILTIN_NIC_LINK_NAME = "10-testbed-builtin-nic.link"
BUILTIN_NIC_LINK = """# ceil test bed: the virtio NICs stand in for a Pi's built-in port, which keeps the kernel's eth0.
# No policy yields a name and Name= is unset, so udev leaves the kernel's name (systemd.link).
[Match]
Driver=virtio_net

[Link]
NamePolicy=kernel
"""


def mmdebstrap(recipe: Recipe, root: Path, logfile: Path) -> None:
    """Install the base into `root` (as root; a foreign arch runs under qemu-user)."""
    # initramfs-tools includes fsck for the root file system only if /etc/fstab names it: write it
    # after the essential packages, before the kernel's postinst builds the initramfs (once).
    fstab = shlex.quote(fstab_text(recipe))
    essential = f'printf %s {fstab} > "$1/etc/fstab"'
    if recipe.twin.get("builtin_nic_keeps_kernel_name"):
        # Before the initramfs is built: it carries /etc/systemd/network/*.link and names NICs.
        link = shlex.quote(BUILTIN_NIC_LINK)
        essential += f' && mkdir -p "$1/etc/systemd/network" && printf %s {link} > "$1/etc/systemd/network/{BUILTIN_NIC_LINK_NAME}"'
    # Under qemu-user every file and trigger costs: leave out what a test bed never reads
    # (manual pages, info, translations, docs except the copyright files).
    excludes = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "info", "locale", "doc")]
    excludes += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-include=/usr/share/locale/locale.alias"]
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--format=directory",
        f"--arch={recipe.arch}",
        f"--components={','.join(recipe.data['components'])}",
        f"--include={','.join(recipe.packages())}",
        "--dpkgopt=force-unsafe-io",
        "--aptopt=Acquire::Retries=3",
        *excludes,
        f"--essential-hook={essential}",
        recipe.suite,
        str(root),
        recipe.mirror,
    ]
    log.info("mmdebstrap %s %s (%d packages + deps); log: %s", recipe.suite, recipe.arch, len(recipe.packages()), logfile)
    with open(logfile, "ab") as out:
        out.write(("$ " + shlex.join(cmd) + "\n").encode())
        out.flush()
        # Own process group: on interruption every helper (apt, dpkg under qemu-user) is stopped,
        # not just mmdebstrap itself.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            _stop_group(proc)
            raise
    if proc.returncode != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"mmdebstrap failed (exit {proc.returncode}); last lines of {logfile}:\n{tail}")


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait()


def fstab_text(recipe: Recipe) -> str:
    fl = recipe.flavor
    return (f"LABEL={fl.root_label}\t/\text4\tdefaults\t0\t1\n"
            f"LABEL={fl.boot_label}\t{fl.boot_mount}\tvfat\tdefaults\t0\t1\n")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def seed_config(recipe: Recipe) -> str:
    """cloud.cfg.d snippet: where NoCloud finds the seed, as the mimicked image ships it."""
    fl = recipe.flavor
    renderers = ", ".join(recipe.net["cloud_init_renderers"])
    if fl.seed_method == "fs_label":
        # Ubuntu raspi's 99-fake_cloud.cfg
        ds = f"datasource:\n  NoCloud:\n    fs_label: {fl.boot_label}\n"
    elif fl.seed_method == "seedfrom":
        # rpi-cloud-init-mods: by path on the mounted boot partition, not by label
        ds = f"datasource:\n  NoCloud:\n    seedfrom: file://{fl.boot_mount}/\n"
    else:
        raise ValueError(f"flavor {fl.name}: seed method {fl.seed_method!r} is not built by the test bed")
    return (
        f"# ceil test bed: seed discovery as {fl.name} mimics it\n"
        "datasource_list: [ NoCloud, None ]\n"
        f"{ds}"
        f"system_info:\n  network:\n    renderers: [ {renderers} ]\n"
    )


def shape(recipe: Recipe, root: Path, bootfs: Path, repo_key_asc: str) -> dict:
    """Post-install edits on `root`; stage the boot partition's files in `bootfs`.

    Returns facts for the manifest (kernel version).
    """
    fl = recipe.flavor
    # Each machine makes its own identity on first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    for f in ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed", "var/lib/systemd/credential.secret"):
        (root / f).unlink(missing_ok=True)

    # iputils-ping's postinst can run before libcap2-bin is configured, leaving ping without its
    # capability (Ubuntu's and Pi OS's ping work for any user): set it here, on the host.
    ping = root / "usr/bin/ping"
    if ping.is_file():
        subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)

    hostname = recipe.data["image"]["hostname"]
    _write(root / "etc/hostname", hostname + "\n")
    _write(root / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/fstab", fstab_text(recipe))
    (root / fl.boot_mount.lstrip("/")).mkdir(parents=True, exist_ok=True)

    # apt: deb822 sources like Ubuntu 24.04 / Pi OS trixie; the real archive URL, which the
    # bake's apt_mirror option rewrites. The local repo is signed by a key only test beds trust.
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    _write(
        root / "etc/apt/sources.list.d/debian.sources",
        f"Types: deb\nURIs: {recipe.mirror}\nSuites: {recipe.suite}\n"
        f"Components: {' '.join(recipe.data['components'])}\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    _write(root / "etc/apt/trusted.gpg.d/ceil-testbed.asc", repo_key_asc)

    _write(root / "etc/cloud/cloud.cfg.d/99-ceil-testbed.cfg", seed_config(recipe))
    if fl.seed_method == "seedfrom":
        # The seed is read by path in cloud-init's local stage, which runs before local-fs.target:
        # the boot partition must be mounted by then.
        _write(
            root / "etc/systemd/system/cloud-init-local.service.d/10-boot-firmware.conf",
            f"[Unit]\nRequiresMountsFor={fl.boot_mount}\n",
        )
    boundary = recipe.twin.get("cloud_init_deprecation_boundary")
    if boundary:
        features = next((root / "usr/lib/python3/dist-packages/cloudinit").glob("features.py"), None)
        text = features.read_text() if features else ""
        if 'DEPRECATION_INFO_BOUNDARY = "devel"' not in text:
            raise RuntimeError("cloud-init's features.py has no DEPRECATION_INFO_BOUNDARY to patch: recipe out of date?")
        features.write_text(text.replace('DEPRECATION_INFO_BOUNDARY = "devel"', f'DEPRECATION_INFO_BOUNDARY = "{boundary}"'))
    for gen in recipe.twin.get("mask_generators", []):
        # A generator the mimicked image does not have, which runs at every daemon-reload.
        link = root / "etc/systemd/system-generators" / gen
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    facts = recipe.twin
    for unit in facts.get("disable_units", []):
        subprocess.run(["systemctl", f"--root={root}", "disable", unit], check=True, capture_output=True)
        if any((root / "etc/systemd/system").glob(f"*.wants/{unit}")):
            raise RuntimeError(f"{unit} is still enabled in the test bed after disabling it")
    if facts.get("hold_apt_locks_after_cloud_final_s"):
        hold_apt_locks(root, facts["hold_apt_locks_after_cloud_final_s"])
    if facts.get("resize_reboot"):
        resize_reboot(root, fl.boot_mount, fl.cmdline_file)
    if facts.get("regenerate_host_keys"):
        regenerate_host_keys(root)
    if facts.get("first_user"):
        first_user(root, facts["first_user"], rename=bool(facts.get("rename_first_user")))
    if facts.get("boot_slots"):
        boot_slots(root, fl.boot_mount)
    if fl.network == "netplan-nm":
        _write(root / "etc/netplan/01-network-manager-all.yaml", "network:\n  version: 2\n  renderer: NetworkManager\n", 0o600)
    for unit in recipe.net["enable"]:
        subprocess.run(["systemctl", f"--root={root}", "enable", unit], check=True, capture_output=True)

    return stage_kernels(recipe, root, bootfs)


def stage_kernels(recipe: Recipe, root: Path, bootfs: Path) -> dict:
    """The boot partition's kernels and initrds, named as the mimicked image names them; the
    harness boots these directly, as the Pi firmware would. Returns the manifest's kernel facts."""
    bootfs.mkdir(parents=True, exist_ok=True)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    by_pages = {"16k" if k.name.endswith("-16k") else "4k": k for k in kernels}
    if "4k" not in by_pages:
        raise RuntimeError(f"no kernel in {root}/boot: is {recipe.data['kernel'][recipe.arch]} in the recipe?")
    initrds = {}
    for pages, kernel in by_pages.items():
        initrds[pages] = root / "boot" / f"initrd.img-{kernel.name.removeprefix('vmlinuz-')}"
        if not initrds[pages].is_file():
            raise RuntimeError(f"kernel {kernel.name} has no initrd ({initrds[pages]}): initramfs-tools missing?")
    version = by_pages["4k"].name.removeprefix("vmlinuz-")
    if recipe.twin.get("board") == "pi5":
        # Raspberry Pi OS's names: the Pi 5's kernel_2712.img (16K pages where the arch has them)
        # and the Pi 3/4's kernel8.img, each with its initramfs; no vmlinuz.
        pi5 = "16k" if "16k" in by_pages else "4k"
        for name, src in (("kernel8.img", by_pages["4k"]), ("initramfs8", initrds["4k"]),
                          ("kernel_2712.img", by_pages[pi5]), ("initramfs_2712", initrds[pi5])):
            shutil.copyfile(src, bootfs / name)
        return {"kernel": version, "pi5_kernel": by_pages[pi5].name.removeprefix("vmlinuz-")}
    shutil.copyfile(by_pages["4k"], bootfs / "vmlinuz")
    shutil.copyfile(initrds["4k"], bootfs / "initrd.img")
    return {"kernel": version}


APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
             "/var/cache/apt/archives/lock")


def hold_apt_locks(root: Path, seconds: int) -> None:
    """A stand-in for Ubuntu's first unattended-upgrades run: a unit that takes dpkg's and apt's
    locks at boot (fcntl locks, as apt takes them) and keeps them until `seconds` after
    cloud-final.service started, then records that it ran (once per instance)."""
    _write(root / "usr/local/lib/testbed/hold-apt-locks", f"""#!/usr/bin/python3
# ceil test bed: unattended-upgrades' first run, as far as other apt users can tell (testbed/rootfs.py).
import fcntl, os, subprocess, time
held = []
for path in {APT_LOCKS!r}:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a")
    fcntl.lockf(f, fcntl.LOCK_EX)
    held.append(f)
print("holding", ", ".join({APT_LOCKS!r}), flush=True)
def state():
    return subprocess.run(["systemctl", "show", "-P", "ActiveState", "cloud-final.service"],
                          capture_output=True, text=True).stdout.strip()
deadline = time.monotonic() + 1200  # cloud-init may be disabled on this boot: never hold for ever
while state() not in ("activating", "active", "failed") and time.monotonic() < deadline:
    time.sleep(2)
time.sleep({seconds})
os.makedirs("/var/lib/testbed", exist_ok=True)
open("/var/lib/testbed/unattended-upgrades.done", "w").close()
print("released after cloud-final + {seconds}s", flush=True)
""", 0o755)
    _write(root / "etc/systemd/system/testbed-unattended-upgrades.service", """[Unit]
Description=ceil test bed: unattended-upgrades holding dpkg's and apt's locks after the first boot
ConditionPathExists=!/var/lib/testbed/unattended-upgrades.done
After=local-fs.target

[Service]
Type=simple
ExecStart=/usr/local/lib/testbed/hold-apt-locks

[Install]
WantedBy=multi-user.target
""")
    subprocess.run(["systemctl", f"--root={root}", "enable", "testbed-unattended-upgrades.service"],
                   check=True, capture_output=True)


def resize_reboot(root: Path, boot_mount: str, cmdline_file: str) -> None:
    """Raspberry Pi OS's first-boot resize: with `resize` on the command line, grow the root
    partition and file system, take the word off cmdline.txt and reboot, before cloud-init."""
    _write(root / "usr/local/lib/testbed/resize-reboot", f"""#!/bin/sh
# ceil test bed (testbed/rootfs.py): Raspberry Pi OS's first-boot root resize and its reboot.
set -eu
dev=$(findmnt -no SOURCE /)
disk=/dev/$(lsblk -no PKNAME "$dev")
part=$(cat /sys/class/block/$(basename "$dev")/partition)
growpart "$disk" "$part" || true   # exit 1: nothing to grow
resize2fs "$dev"
sed -i -e 's/ resize\\b//' -e 's/^resize //' {boot_mount}/{cmdline_file}
sync
echo "resized $dev; rebooting as Raspberry Pi OS does after its first-boot resize"
systemctl reboot --force
""", 0o755)
    _write(root / "etc/systemd/system/testbed-resize-reboot.service", f"""[Unit]
Description=ceil test bed: grow the root file system and reboot (Raspberry Pi OS's first boot)
DefaultDependencies=no
ConditionKernelCommandLine=resize
After=local-fs.target
Before=cloud-init-local.service sysinit.target
RequiresMountsFor={boot_mount}

[Service]
Type=oneshot
ExecStart=/usr/local/lib/testbed/resize-reboot

[Install]
WantedBy=sysinit.target
""")
    subprocess.run(["systemctl", f"--root={root}", "enable", "testbed-resize-reboot.service"],
                   check=True, capture_output=True)


# Raspberry Pi OS's cloud.cfg.d file, by its own name: cloud-init reads cloud.cfg.d in name order and a
# later file wins, and "99_" sorts after the twin's 99-ceil-testbed.cfg (and any "99-" file) as it
# does on a card. Only the host-key settings: the twin's seed discovery is in 99-ceil-testbed.cfg.
PI_OS_CLOUD_CFG = "99_raspberry-pi.cfg"
PI_OS_HOST_KEY_SETTINGS = """\
# ceil test bed (testbed/rootfs.py): Raspberry Pi OS's host-key settings (pi-gen's 99_raspberry-pi.cfg).
# cloud-init deletes no host key and makes none: regenerate_ssh_host_keys.service makes them at the
# first boot, after cloud-init's init stages.
ssh_deletekeys: false
ssh_genkeytypes: []
"""
REGENERATE_HOST_KEYS_UNIT = "regenerate_ssh_host_keys.service"
REGENERATE_HOST_KEYS_SCRIPT = "usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys"


def regenerate_host_keys(root: Path) -> None:
    """Raspberry Pi OS's first-boot host keys: cloud-init neither deletes nor makes any, and
    raspberrypi-sys-mods' regenerate_ssh_host_keys.service (enabled in the image by pi-gen) deletes
    whatever host keys /etc/ssh holds and makes new ones, once, before sshd starts. With default
    dependencies it runs after basic.target, so after cloud-init's local and network stages
    (ordered before sysinit.target): a host key a seed put there (ssh_keys, bootcmd) is replaced."""
    _write(root / "etc/cloud/cloud.cfg.d" / PI_OS_CLOUD_CFG, PI_OS_HOST_KEY_SETTINGS)
    _write(root / REGENERATE_HOST_KEYS_SCRIPT, """#!/bin/sh
# ceil test bed (testbed/rootfs.py): raspberrypi-sys-mods' regenerate_ssh_host_keys. Every host key in
# /etc/ssh goes, whoever put it there, new ones are made, and the unit disables itself: once per card.
set -e
# A Pi has a hardware RNG: a little of it goes into the kernel's pool first.
if [ -c /dev/hwrng ]; then
  dd if=/dev/hwrng of=/dev/urandom bs=4096 count=1 status=none
fi
rm -f /etc/ssh/ssh_host_*_key*
ssh-keygen -A >/dev/null
systemctl -q disable regenerate_ssh_host_keys
echo "regenerated the SSH host keys:" $(cd /etc/ssh && ls ssh_host_*_key.pub)
""", 0o755)
    # Where the package puts it (not /etc/systemd/system): a unit file in /etc could not be masked.
    _write(root / "usr/lib/systemd/system" / REGENERATE_HOST_KEYS_UNIT, f"""[Unit]
Description=ceil test bed: regenerate the SSH host keys once (raspberrypi-sys-mods, Raspberry Pi OS)
Before=ssh.service
ConditionFileIsExecutable=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/{REGENERATE_HOST_KEYS_SCRIPT}

[Install]
WantedBy=multi-user.target
""")
    subprocess.run(["systemctl", f"--root={root}", "enable", REGENERATE_HOST_KEYS_UNIT], check=True, capture_output=True)


def boot_slots(root: Path, boot_mount: str) -> None:
    """Ubuntu 26.04's A/B boot (piboot-try) as far as the booted system can tell: with a pending
    new/ slot (state "unknown"), the boot marks it "trying" and reboots into the Pi's tryboot mode,
    whose firmware boots new/ (the harness reads the reboot command, as the firmware reads its
    one-shot flag, and says so on the command line, where a Pi has /chosen/bootloader/tryboot); a
    tryboot that reaches multi-user makes new/ current/ and current/ old/; a tryboot that never got
    there (the next boot is not one) marks new/ "bad"."""
    _write(root / "usr/local/lib/testbed/piboot-try", f"""#!/bin/sh
# ceil test bed (testbed/rootfs.py): Ubuntu 26.04's piboot-try-reboot and piboot-try-validate.
set -eu
boot={boot_mount}
state=$(cat "$boot/new/state" 2>/dev/null || echo none)
tryboot() {{ grep -qw ceil_twin.tryboot=1 /proc/cmdline; }}
case "$1" in
reboot)
  tryboot && exit 0
  case "$state" in
    unknown)
      echo trying > "$boot/new/state"; sync
      echo "new/ boot assets are pending: rebooting into tryboot"
      systemctl reboot --force --reboot-argument="0 tryboot" ;;
    trying)
      echo bad > "$boot/new/state"; sync
      echo "the tryboot of new/ did not validate: new/ marked bad, booting current/" ;;
  esac ;;
validate)
  tryboot && [ "$state" = trying ] || exit 0
  echo good > "$boot/new/state"
  rm -rf "$boot/old"
  mv "$boot/current" "$boot/old"
  mv "$boot/new" "$boot/current"
  sync
  echo "the tryboot of new/ validated: new/ is now current/, current/ is old/" ;;
esac
""", 0o755)
    _write(root / "etc/systemd/system/testbed-piboot-try-reboot.service", f"""[Unit]
Description=ceil test bed: reboot into tryboot when new/ boot assets are pending (piboot-try-reboot)
DefaultDependencies=no
ConditionPathExists={boot_mount}/new/state
After=local-fs.target
Before=cloud-init-local.service sysinit.target
RequiresMountsFor={boot_mount}

[Service]
Type=oneshot
ExecStart=/usr/local/lib/testbed/piboot-try reboot

[Install]
WantedBy=sysinit.target
""")
    _write(root / "etc/systemd/system/testbed-piboot-try-validate.service", f"""[Unit]
Description=ceil test bed: make a tryboot's new/ boot assets current/ (piboot-try-validate)
ConditionPathExists={boot_mount}/new/state
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/lib/testbed/piboot-try validate

[Install]
WantedBy=multi-user.target
""")
    for unit in ("testbed-piboot-try-reboot.service", "testbed-piboot-try-validate.service"):
        subprocess.run(["systemctl", f"--root={root}", "enable", unit], check=True, capture_output=True)


def first_user(root: Path, user: dict, rename: bool) -> None:
    """Raspberry Pi OS's built-in first account and, with `rename`, what happens to it on a card
    given a cloud-init user: renamed to that user (keeping its shell), a rename banner on sshd and
    the first-user dialog waiting on the console (userconf-pi)."""
    known = {line.split(":", 1)[0] for line in (root / "etc/group").read_text().splitlines()}
    groups = [g for g in user["groups"] if g in known]
    subprocess.run(["useradd", f"--root={root}", "--uid", str(user["uid"]), "--user-group", "--create-home",
                    "--shell", user["shell"], "--groups", ",".join(groups), user["name"]], check=True, capture_output=True)
    _write(root / f"etc/sudoers.d/010_{user['name']}-nopasswd", f"{user['name']} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    if not rename:
        return
    _write(root / "usr/share/userconf-pi/sshd_banner",
           "\nPlease note that SSH may not work until a valid user has been set up.\n\n"
           "See http://rptl.io/newuser for details.\n\n")
    _write(root / "etc/ssh/sshd_config.d/rename_user.conf", "Banner /usr/share/userconf-pi/sshd_banner\n")
    _write(root / "etc/systemd/system/userconfig.service", """[Unit]
Description=ceil test bed: userconf-pi's first-user dialog, waiting on the console for a user name
After=systemd-user-sessions.service

[Service]
Type=simple
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
""")
    subprocess.run(["systemctl", f"--root={root}", "enable", "userconfig.service"], check=True, capture_output=True)
    _write(root / "usr/local/lib/testbed/rename-first-user", f"""#!/usr/bin/python3
# ceil test bed (testbed/rootfs.py): Raspberry Pi OS renames its uid-{user['uid']} account to the first
# user a card's cloud-init seed names, instead of creating that user; the shell stays {user['shell']}.
import os, pwd, subprocess, sys, yaml
try:
    with open("/boot/firmware/user-data") as f:
        data = yaml.safe_load(f) or {{}}
except (OSError, yaml.YAMLError):
    sys.exit(0)
names = [u if isinstance(u, str) else u.get("name") for u in data.get("users") or []]
names = [n for n in names if n and n != "default"]
old = pwd.getpwuid({user['uid']}).pw_name
if not names or names[0] == old:
    sys.exit(0)
new = names[0]
try:
    pwd.getpwnam(new)
    sys.exit(0)  # already there: nothing to rename
except KeyError:
    pass
subprocess.run(["usermod", "-l", new, "-d", f"/home/{{new}}", "-m", old], check=True)
subprocess.run(["groupmod", "-n", new, old], check=True)
sudoers = f"/etc/sudoers.d/010_{{old}}-nopasswd"
if os.path.exists(sudoers):
    with open(sudoers) as f:
        text = f.read().replace(f"{{old}} ", f"{{new}} ", 1)
    with open(sudoers, "w") as f:
        f.write(text)
print(f"renamed {{old}} to {{new}}", flush=True)
""", 0o755)
    _write(root / "etc/systemd/system/testbed-rename-first-user.service", """[Unit]
Description=ceil test bed: rename the image's first account to the seed's first user (as Raspberry Pi OS)
DefaultDependencies=no
After=local-fs.target cloud-init-local.service
Before=cloud-init-network.service cloud-init.service
ConditionPathExists=!/var/lib/testbed/first-user-renamed

[Service]
Type=oneshot
ExecStart=/usr/local/lib/testbed/rename-first-user
ExecStartPost=/bin/sh -c 'mkdir -p /var/lib/testbed && touch /var/lib/testbed/first-user-renamed'

[Install]
WantedBy=cloud-init-network.service
""")
    subprocess.run(["systemctl", f"--root={root}", "enable", "testbed-rename-first-user.service"],
                   check=True, capture_output=True)


def cmdline(recipe: Recipe, disk_id: str) -> str:
    template = recipe.data["cmdline"][recipe.flavor.seed_method]
    return template.format(
        console=recipe.data["console"][recipe.arch], root_label=recipe.flavor.root_label, disk_id=disk_id
    )


BOOT_ASSETS = ("vmlinuz", "initrd.img", "cmdline.txt")

# The shape of Raspberry Pi OS trixie's config.txt (as users post it from their cards).
PI_OS_CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""


def write_boot_files(recipe: Recipe, bootfs: Path, disk_id: str) -> None:
    """cmdline.txt and config.txt; with boot slots, the assets (kernel, initrd, command line) move
    into current/ and a copy into a pending new/, so the first boot is a double boot."""
    slot = Path(recipe.flavor.cmdline_file).parent.as_posix()
    _write(bootfs / "cmdline.txt", cmdline(recipe, disk_id) + "\n")
    if recipe.twin.get("board") == "pi5":
        # Raspberry Pi OS trixie's config.txt: no kernel= (the firmware picks the board's own),
        # auto_initramfs, model sections and a closing [all] (docs/testing.md, "Hostile twins").
        _write(bootfs / "config.txt", PI_OS_CONFIG_TXT)
        return
    if slot == ".":
        # A Pi boot partition has config.txt; the harness reads it like the firmware (its
        # defaults: vmlinuz, initrd.img, cmdline.txt, no prefix), and nothing here sets any.
        _write(bootfs / "config.txt", "# ceil test bed: the harness boots vmlinuz/initrd.img/cmdline.txt\n")
        return
    for name in BOOT_ASSETS:
        for where in (slot, "new"):
            (bootfs / where).mkdir(exist_ok=True)
            shutil.copyfile(bootfs / name, bootfs / where / name)
        (bootfs / name).unlink()
    _write(bootfs / slot / "state", "good\n")
    _write(bootfs / "new" / "state", "unknown\n")
    # The firmware's view of the slots (the harness reads it): known-good assets by default, the
    # pending ones on a tryboot.
    _write(bootfs / "config.txt", f"[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n"
                                  f"os_prefix={slot}/\n\n[tryboot]\nos_prefix=new/\n")
