"""One QEMU guest booted from a (baked) test-bed disk image, the way a Pi boots its SD card.

Owns: the QEMU command line (TCG; arm64 `-M virt -cpu cortex-a72`, cortex-a76 for a Pi 5 twin, amd64 `-M q35`), reading
the kernel, initrd and command line from the image's boot partition at every (re)start where
config.txt names them (boot slots and tryboot included), like the Pi firmware does, the NICs (LAN on an L2 segment shared with the other guests; the router's
uplink on QEMU user networking with restrict=on), the serial console log, and the life cycle:
start, power cut (SIGKILL, then boot again from the same disk), guest-initiated reboot (QEMU runs
with -no-reboot; `poll()` notices the kernel's "reboot: Restarting system" and starts it again),
stop. Processes are started in their own session with PR_SET_PDEATHSIG, so nothing outlives the
test run even when pytest itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU = {
    "arm64": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"],
    "amd64": ["qemu-system-x86_64", "-M", "q35", "-cpu", "max"],
}

# Added to every guest's kernel command line. systemd waits 90 s for an fstab device before it
# gives up and enters emergency mode (no SSH, so the run would wait out its SSH timeout). Three
# arm64 guests on two emulated cores took longer than that for udev to announce the boot
# partition's label (run arm21: router and one in emergency mode, two fine). A Pi has it in a
# second; an emulator gets ten minutes. The image's own cmdline.txt is not changed.
TCG_APPEND = "systemd.default_device_timeout_sec=600"
# Hostile twin (docs/testing.md): no Pi has a real-time clock, so a fresh card starts months in
# the past. Every guest's RTC starts CEIL_E2E_STALE_CLOCK_DAYS (150) days behind the host; 0
# turns the twin off.
# On a tryboot (Ubuntu 26.04's boot slots), the word the twin reads where a Pi's OS reads the
# device tree's /chosen/bootloader/tryboot (testbed/rootfs.py, boot_slots).
TRYBOOT_MARK = "ceil_twin.tryboot=1"
STALE_CLOCK_DAYS = int(os.environ.get("CEIL_E2E_STALE_CLOCK_DAYS", "150"))
# Hostile twin (docs/testing.md): a Raspberry Pi kernel leaves the memory cgroup off unless the
# command line turns it on (its firmware's arguments, which come before cmdline.txt's, carry
# cgroup_disable=memory; the downstream-only cgroup_enable=memory in cmdline.txt wins). The
# twins' Debian kernels have it on and know no cgroup_enable=, so the harness plays the outcome:
# cgroup_disable=memory unless cmdline.txt says cgroup_enable=memory.
PI_MEMCG_OFF = "cgroup_disable=memory"


def pi_kernel_args(line: str) -> str:
    """What a Pi's firmware puts before cmdline.txt's `line`, as far as a twin's kernel can show it."""
    enabled = {c for w in line.split() if w.startswith("cgroup_enable=") for c in w.split("=", 1)[1].split(",")}
    return "" if "memory" in enabled else PI_MEMCG_OFF


def rtc_args(days: int = STALE_CLOCK_DAYS) -> list[str]:
    """QEMU's -rtc for a clock `days` behind the host's (none: the host's time)."""
    if not days:
        return []
    import datetime as dt

    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    return ["-rtc", f"base={when.strftime('%Y-%m-%dT%H:%M:%S')},clock=host"]


class GuestError(Exception):
    pass


LOG = logging.getLogger("ceil.e2e")

# A kernel hung-task report whose task sleeps in block I/O: the virtual disk stopped completing a
# request. Seen once on a loaded 2-core CI machine under TCG (the initramfs's read of the ext4
# journal after a power cut never completed; the guest sat there for 40 minutes, hung-task reports
# every 2 minutes, and every later check failed). That is the emulator, not ceil: `poll()` pulls
# the plug and boots the guest again, which every ceil machine must survive anyway, at most
# STALL_RESTARTS times per guest, and says so in progress.log and the serial log.
_HUNG_TASK = re.compile(r"INFO: task (\S+) blocked for more than \d+ seconds")
_IO_WAIT = re.compile(r"\b(io_schedule|bit_wait_io|folio_wait_bit\w*|wait_on_page_bit\w*|blk_mq_get_tag)\b")
STALL_RESTARTS = 2


def io_stall(serial: str) -> str | None:
    """The first hung-task report in `serial` whose stack waits on block I/O, as one line; or None."""
    reports = _HUNG_TASK.split(serial)
    # split() with one group gives [before, task1, after1, task2, after2, ...]
    for task, after in zip(reports[1::2], reports[2::2]):
        trace = after.split("</TASK>")[0]
        wait = _IO_WAIT.search(trace)
        if wait:
            return f"task {task} blocked in {wait.group(1)}"
    return None


class Qmp:
    """A QEMU Machine Protocol connection (a unix socket): one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("r")
        json.loads(self.lines.readline())  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments) -> dict:
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = json.loads(self.lines.readline() or "{}")
            if "return" in reply:
                return reply["return"]
            if "error" in reply or not reply:
                raise GuestError(f"QMP {command}: {reply.get('error', 'connection closed')}")

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@contextlib.contextmanager
def paused(qmp_socket: Path):
    """QEMU's own pause (QMP stop/cont): block I/O in flight is finished first, and the guest's
    clock stops too. A SIGSTOP froze the process but not time: the guest saw its clock jump and
    chrony dropped its source for two minutes (a node's time check failed in the QEMU suite)."""
    qmp = Qmp(qmp_socket)
    try:
        qmp.execute("stop")
        yield
    finally:
        qmp.execute("cont")
        qmp.close()


@dataclass(frozen=True)
class Lan:
    """A local-only L2 segment: QEMU socket netdevs on one multicast group bound to 127.0.0.1.

    Frames never leave the host: multicast with localaddr=127.0.0.1 stays on the loopback
    interface. Group and port are per test run, so parallel runs do not share a segment.
    """

    group: str
    port: int

    @classmethod
    def random(cls) -> "Lan":
        r = int.from_bytes(os.urandom(4), "big")
        return cls(f"230.{(r >> 8) & 0xFF}.{r & 0xFF}.{1 + (r >> 16) % 254}", 20000 + (r >> 3) % 40000)

    def netdev(self, ident: str) -> str:
        return f"socket,id={ident},mcast={self.group}:{self.port},localaddr=127.0.0.1"


@dataclass(frozen=True)
class Wire:
    """A local-only point-to-point Ethernet link: a QEMU socket netdev and a peer in this
    process exchange frames as UDP datagrams on 127.0.0.1.

    Unlike a multicast segment (Lan), a QEMU port never hears its own frames back. That matters
    on a hub: QEMU's user network would take its own echoed replies for guest traffic and answer
    them with resets.
    """

    qemu_port: int
    peer_port: int

    @classmethod
    def random(cls) -> "Wire":
        ports = []
        for _ in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        return cls(*ports)

    def reversed(self) -> "Wire":
        """The other end's view: lets two peers in this process be wired to each other."""
        return Wire(self.peer_port, self.qemu_port)

    def netdev(self, ident: str) -> str:
        return f"socket,id={ident},udp=127.0.0.1:{self.peer_port},localaddr=127.0.0.1:{self.qemu_port}"

    def peer_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", self.peer_port))
        s.connect(("127.0.0.1", self.qemu_port))
        return s


# The address QEMU's user network leases to the first (here: the only) guest NIC on it.
UPLINK_GUEST_IP = "10.0.2.15"


@dataclass
class Uplink:
    """QEMU user networking, restrict=on: the guest reaches nothing but the forwards given here.

    With `side_wire`, the NIC sits on a QEMU hub that also joins that local-only wire, so a
    test-side host (ceil_e2e.vpn_client.NetnsTap) can talk to the uplink directly, e.g. over
    UDP, which restrict=on never lets out of the guest through a forward.
    """

    ssh_port: int                                   # 127.0.0.1:<ssh_port> -> guest :22
    guestfwds: list[str] = field(default_factory=list)  # from fakes.Internet.guestfwds()
    extra_hostfwds: list[str] = field(default_factory=list)  # e.g. "tcp:127.0.0.1:8080-:8080"
    side_wire: Wire | None = None
    # (NIC's wire, hub port's wire): the NIC reaches the hub through uplink_guard.UplinkGuard in
    # this process, which keeps slirp from resetting the side host's connections to the router.
    guard: tuple[Wire, Wire] | None = None

    def user_netdev(self, ident: str) -> str:
        parts = [f"user,id={ident},restrict=on,net=10.0.2.0/24", f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        parts += [f"hostfwd={h}" for h in self.extra_hostfwds]
        parts += [f"guestfwd={g}" for g in self.guestfwds]
        return ",".join(parts)

    def netdev_args(self, ident: str) -> list[str]:
        """-netdev arguments that end in a netdev called `ident` for the NIC."""
        if self.side_wire is None and self.guard is None:
            return ["-netdev", self.user_netdev(ident)]
        hub = "hubid=7"  # any id: hubs are per QEMU process
        args = ["-netdev", self.user_netdev(f"{ident}-user"),
                "-netdev", f"hubport,id={ident}-hub-user,{hub},netdev={ident}-user"]
        if self.side_wire is not None:
            args += ["-netdev", self.side_wire.netdev(f"{ident}-side"),
                     "-netdev", f"hubport,id={ident}-hub-side,{hub},netdev={ident}-side"]
        if self.guard is None:
            return args + ["-netdev", f"hubport,id={ident},{hub}"]
        nic_wire, hub_wire = self.guard
        return args + ["-netdev", hub_wire.netdev(f"{ident}-guard"),
                       "-netdev", f"hubport,id={ident}-hub-guard,{hub},netdev={ident}-guard",
                       "-netdev", nic_wire.netdev(ident)]


def mac_for(run_id: int, index: int, nic: int) -> str:
    """Locally administered, unique per run/guest/NIC (QEMU's default MAC is the same for all)."""
    return "52:54:%02x:%02x:%02x:%02x" % ((run_id >> 8) & 0xFF, run_id & 0xFF, index & 0xFF, nic & 0xFF)


def usb_mac_for(run_id: int, index: int) -> str:
    """A USB Ethernet adapter's MAC: universally administered (an adapter maker's OUI, ASIX's
    00:0e:c6), which is what makes udev name it enx<MAC>; locally administered ones get no MAC name."""
    return "00:0e:c6:%02x:%02x:%02x" % ((run_id >> 8) & 0xFF, run_id & 0xFF, index & 0xFF)


def partition_offset(image: Path, index: int) -> tuple[int, int]:
    """(offset, size) in bytes of MBR primary partition `index` (1-based)."""
    with open(image, "rb") as f:
        mbr = f.read(512)
    if mbr[510:512] != b"\x55\xaa":
        raise GuestError(f"{image}: no MBR signature")
    entry = mbr[446 + 16 * (index - 1): 446 + 16 * index]
    start, count = struct.unpack("<II", entry[8:16])
    if count == 0:
        raise GuestError(f"{image}: partition {index} is empty")
    return start * 512, count * 512


@dataclass(frozen=True)
class BootAssets:
    """What a Pi's firmware loads from the boot partition (paths on the FAT)."""

    kernel: str = "vmlinuz"
    initrd: str = "initrd.img"
    cmdline: str = "cmdline.txt"
    prefix: str = ""


# A board's own default kernels, in the firmware's order, where config.txt names none (the
# Raspberry Pi OS twin stands in for a Pi 5: its firmware boots kernel_2712.img, the 16K-page
# kernel, when the boot partition has one, else kernel8.img). Other guests boot vmlinuz.
BOARD_KERNELS = {"pi5": ("kernel_2712.img", "kernel8.img")}
# auto_initramfs=1: the initramfs named after a kernel the firmware chose by its default name.
AUTO_INITRAMFS = {"kernel_2712.img": "initramfs_2712", "kernel8.img": "initramfs8"}
# The Pi 5's core, which runs 16K-page kernels (QEMU's cortex-a72 has no 16K granule).
BOARD_CPU = {"pi5": "cortex-a76"}


def firmware_choice(config_txt: str, tryboot: bool = False, board: str | None = None,
                    present: set[str] | None = None) -> BootAssets:
    """The boot assets config.txt names, as the Pi firmware reads it: `kernel=`, `cmdline=`,
    `initramfs FILE followkernel`, `auto_initramfs=` and `os_prefix=` (prepended to all three:
    Ubuntu 26.04's boot slots), in `[all]` sections, on a tryboot `[tryboot]` ones, and the
    board's own (`[pi5]` for board "pi5"); any other model filter never matches. Without a
    `kernel=`, a board boots its default kernel that `present` (the partition's top-level file
    names) holds, with its initramfs by name where auto_initramfs is on. For a kernel config.txt
    names, the initramfs must be named too: stricter than Raspberry Pi's documentation ("the same
    rules as the kernel selection"), on purpose, since a Pi 5 was seen loading the wrong one there
    (raspberrypi/firmware#1965): the twin fails where a real Pi might. Other guests boot vmlinuz
    and initrd.img. A board with os_prefix is not modelled (no twin has both)."""
    if board is not None and "os_prefix" in config_txt:
        raise ValueError("firmware_choice: os_prefix on a board with default kernels is not modelled")
    found = {"kernel": None, "cmdline": "cmdline.txt", "initramfs": None, "os_prefix": "", "auto_initramfs": "0"}
    active = True
    for raw in config_txt.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            active = name == "all" or (name == "tryboot" and tryboot) or (board is not None and name == board)
        elif active and line.startswith("initramfs ") and len(line.split()) >= 2:
            found["initramfs"] = line.split()[1]
        elif active and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if key in found:
                found[key] = value
    kernel, initramfs = found["kernel"], found["initramfs"]
    if kernel is None:
        defaults = [k for k in BOARD_KERNELS.get(board, ()) if present is not None and k in present]
        kernel = defaults[0] if defaults else "vmlinuz"
        if initramfs is None and found["auto_initramfs"] == "1" and kernel in AUTO_INITRAMFS:
            initramfs = AUTO_INITRAMFS[kernel]
    p = found["os_prefix"]
    return BootAssets(p + kernel, p + (initramfs or "initrd.img"), p + found["cmdline"], p)


# The firmware stand-in reads the card with mtools itself, not through ceil.fatfs: ceil writes
# config.txt with those helpers, and a stand-in must not decide what it boots with the code it checks.
def _fat_text(image: Path, off: int, name: str) -> str:
    proc = subprocess.run(["mtype", "-i", f"{image}@@{off}", f"::{name}"], capture_output=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else ""


def _fat_names(image: Path, off: int) -> set[str]:
    proc = subprocess.run(["mdir", "-b", "-i", f"{image}@@{off}", "::/"], capture_output=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if proc.returncode != 0:
        raise GuestError(f"{image}: cannot list its boot partition: {proc.stderr.decode(errors='replace').strip()}")
    # FAT names are case-insensitive: compared in lower case (BOARD_KERNELS are).
    return {line.rstrip("/").rsplit("/", 1)[-1].lower() for line in proc.stdout.decode(errors="replace").splitlines()}


def firmware_assets(image: Path, boot_index: int = 1, tryboot: bool = False, board: str | None = None) -> BootAssets:
    """The firmware's choice for this image: config.txt, or tryboot.txt on a tryboot if there is one."""
    off, _ = partition_offset(image, boot_index)
    config = (_fat_text(image, off, "tryboot.txt") if tryboot else "") or _fat_text(image, off, "config.txt")
    return firmware_choice(config, tryboot, board, _fat_names(image, off) if board else None)


def read_boot_files(image: Path, dest: Path, boot_index: int = 1,
                    assets: BootAssets = BootAssets()) -> tuple[Path, Path, str]:
    """Copy the kernel and initrd out of the boot FAT and return them with the command line."""
    off, _ = partition_offset(image, boot_index)
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    names = {"vmlinuz": assets.kernel, "initrd.img": assets.initrd, "cmdline.txt": assets.cmdline}
    for local, name in names.items():
        target = dest / local
        target.unlink(missing_ok=True)
        proc = subprocess.run(["mcopy", "-n", "-i", f"{image}@@{off}", f"::{name}", str(target)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise GuestError(f"{image}: cannot read {name} from the boot partition: {proc.stderr.strip()}")
    line = (dest / "cmdline.txt").read_text().strip().splitlines()[0]
    return dest / "vmlinuz", dest / "initrd.img", line


def _pdeathsig() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test run


class Guest:
    """A QEMU virtual machine. `start()` returns at once; readiness is the caller's business."""

    def __init__(
        self,
        name: str,
        image: Path,
        arch: str,
        artifacts: Path,
        *,
        lan: Lan | None,
        uplink: Uplink | None = None,
        index: int = 0,
        run_id: int = 0,
        memory_mib: int = 1024,
        cpus: int = 2,
        extra_append: str = "",
        boot_index: int = 1,
        segments: tuple[Lan, ...] = (),
        uplink_nic: str = "virtio",
        drives: tuple[Path, ...] = (),
        board: str | None = None,
    ):
        self.name = name
        self.image = image
        self.arch = arch
        self.artifacts = artifacts
        self.lan = lan
        self.uplink = uplink
        self.index = index
        self.run_id = run_id
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.extra_append = extra_append
        self.boot_index = boot_index
        self.segments = segments  # more local-only segments, after LAN and uplink (eth2, ...)
        # "usb-net": the uplink is a USB Ethernet adapter (QEMU usb-net on an xHCI controller), as
        # on a Pi whose wired uplink is plugged into USB; the test bed's manifest says which.
        if uplink_nic not in ("virtio", "usb-net"):
            raise GuestError(f"{name}: unknown uplink NIC type {uplink_nic!r}")
        self.uplink_nic = uplink_nic
        # The Pi model the firmware stand-in plays ("pi5": [pi5] sections, its default kernels and,
        # on arm64, its core); the test bed's manifest says which. None: a generic board.
        self.board = board
        # USB mass storage (thumb drives, as QEMU usb-storage on the xHCI controller): the guest
        # sees /dev/sda, /dev/sdb, ... as a Pi does, its own disk being virtio (vda), not SCSI.
        self.drives = tuple(drives)
        # Indices of drives left unplugged at the next start (their image stays attached to QEMU
        # without a USB device, so plug() can plug them in while the guest runs).
        self.unplugged: set[int] = set()
        self.proc: subprocess.Popen | None = None
        self.boots = 0
        self.started_at = 0.0
        self.serial_log = artifacts / f"{name}.serial.log"
        self._serial_mark = 0
        self._bootdir = Path(tempfile.mkdtemp(prefix=f"ceil-boot-{name}-"))
        self.qmp_socket = self._bootdir / "qmp.sock"  # short: a unix socket path has ~107 bytes
        self._stopping = False
        self.stall_restarts = 0
        # The Pi's one-shot tryboot flag: set by a reboot whose command says "tryboot", read (and
        # cleared) by the next start, lost on a power cut. `slots` is each boot's os_prefix.
        self.tryboot_next = False
        self._tryboot = False
        self.slots: list[str] = []
        self.assets = BootAssets()

    # -- command line -------------------------------------------------------------------------
    def command(self) -> list[str]:
        self.assets = assets = firmware_assets(self.image, self.boot_index, self._tryboot, self.board)
        kernel, initrd, line = read_boot_files(self.image, self._bootdir, self.boot_index, assets)
        # A Pi's firmware tells the OS it is a tryboot in the device tree (/chosen/bootloader/
        # tryboot); QEMU's virt machine has no such node, so the twin reads this word instead.
        tryboot = TRYBOOT_MARK if self._tryboot else ""
        append = " ".join(filter(None, (pi_kernel_args(line), line, TCG_APPEND, tryboot, self.extra_append)))
        qemu = list(QEMU[self.arch])
        if self.arch == "arm64" and self.board in BOARD_CPU:
            qemu[qemu.index("-cpu") + 1] = BOARD_CPU[self.board]
        cmd = [
            *qemu,
            "-accel", "tcg,thread=multi",
            "-smp", str(self.cpus), "-m", str(self.memory_mib),
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-drive", f"if=none,id=disk,file={self.image},format=raw,cache=unsafe,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk",
            "-device", "virtio-rng-pci",
            *rtc_args(),
            "-chardev", f"file,id=serial,path={self.serial_log},append=on",
            "-serial", "chardev:serial",
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-no-reboot",
        ]
        # NIC order is the guest's interface order for the virtio NICs (kernel names): LAN first
        # is eth0, like a Pi's built-in port; a virtio uplink second is eth1.
        nic = 0
        if self.lan:
            cmd += ["-netdev", self.lan.netdev("lan"),
                    "-device", f"virtio-net-pci,netdev=lan,mac={mac_for(self.run_id, self.index, nic)}"]
            nic += 1
        usb_net = bool(self.uplink) and self.uplink_nic == "usb-net"
        if usb_net or self.drives:
            cmd += ["-device", "qemu-xhci,id=xhci"]
        if usb_net:
            # Not a PCI NIC: the kernel numbers it after the virtio ones, and udev names it
            # enx<MAC> where predictable names are on (Ubuntu).
            cmd += [*self.uplink.netdev_args("up"),
                    "-device", f"usb-net,netdev=up,bus=xhci.0,mac={self.uplink_mac}"]
        elif self.uplink:
            cmd += [*self.uplink.netdev_args("up"),
                    "-device", f"virtio-net-pci,netdev=up,mac={self.uplink_mac}"]
            nic += 1
        for i, seg in enumerate(self.segments):
            cmd += ["-netdev", seg.netdev(f"seg{i}"),
                    "-device", f"virtio-net-pci,netdev=seg{i},mac={self.segment_mac(i)}"]
        for i, drive in enumerate(self.drives):
            cmd += ["-drive", f"if=none,id=usb{i},file={drive},format=raw,cache=unsafe"]
            if i not in self.unplugged:
                # removable: a thumb drive says so (lsblk RM 1), as the real ones do.
                cmd += ["-device", f"usb-storage,bus=xhci.0,drive=usb{i},removable=on,id=usbdev{i}"]
        return cmd

    def plug(self, i: int) -> None:
        """Plug drive i in while the guest runs (a USB hot-plug: the guest's kernel and udev see
        it arrive, as when a drive is plugged into a running Pi or announces itself late)."""
        if i not in self.unplugged:
            raise GuestError(f"{self.name}: drive {i} is already plugged in")
        qmp = Qmp(self.qmp_socket)
        try:
            qmp.execute("device_add", driver="usb-storage", bus="xhci.0", drive=f"usb{i}",
                        removable=True, id=f"usbdev{i}")
        finally:
            qmp.close()
        self.unplugged.discard(i)

    @property
    def uplink_mac(self) -> str:
        if self.uplink_nic == "usb-net":
            return usb_mac_for(self.run_id, self.index)
        return mac_for(self.run_id, self.index, 1 if self.lan else 0)

    def segment_mac(self, i: int) -> str:
        """MAC of the NIC on self.segments[i] (the guest finds that NIC by it)."""
        nic = (1 if self.lan else 0) + (1 if self.uplink and self.uplink_nic == "virtio" else 0) + i
        return mac_for(self.run_id, self.index, nic)

    @property
    def macs(self) -> dict[str, str]:
        out = {}
        if self.lan:
            out["lan"] = mac_for(self.run_id, self.index, 0)
        if self.uplink:
            out["uplink"] = self.uplink_mac
        return out

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.running:
            raise GuestError(f"{self.name}: already running (pid {self.proc.pid})")
        self._tryboot, self.tryboot_next = self.tryboot_next, False
        cmd = self.command()
        self.slots.append(self.assets.prefix)
        self.boots += 1
        with open(self.serial_log, "a") as f:
            f.write(f"\n===== ceil e2e: boot {self.boots} of {self.name} at {time.strftime('%H:%M:%S')} =====\n")
        self._serial_mark = self.serial_log.stat().st_size
        (self.artifacts / f"{self.name}.qemu.sh").write_text(shlex.join(cmd) + "\n")
        qemu_log = open(self.artifacts / f"{self.name}.qemu.log", "a")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig,
        )
        qemu_log.close()
        self.started_at = time.monotonic()
        self._stopping = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> None:
        """Restart the guest after a guest-initiated reboot or a stalled virtual disk; raise if
        QEMU died otherwise."""
        if self.proc is None or self._stopping:
            return
        if self.proc.poll() is None:
            self._restart_if_disk_stalled()
            return
        tail = self.serial_since_boot()[-4000:]
        if "reboot: Restarting system" in tail:
            # `reboot "0 tryboot"` reaches the kernel as the restart command, as on a Pi.
            command = re.findall(r"reboot: Restarting system with command '([^']*)'", tail)
            self.tryboot_next = bool(command) and "tryboot" in command[-1].split()
            self.start()  # a Pi's firmware re-reads cmdline.txt and the kernel on reboot, so do we
            return
        raise GuestError(
            f"{self.name}: QEMU exited (status {self.proc.returncode}) while the guest was expected to run;"
            f" last serial lines:\n{self.serial_tail()}\nQEMU log: {self.artifacts / (self.name + '.qemu.log')}"
        )

    def _restart_if_disk_stalled(self) -> None:
        stall = io_stall(self.serial_since_boot())
        if stall is None:
            return
        what = f"{self.name}: the virtual disk stopped answering in boot {self.boots} ({stall}; kernel hung-task report)"
        if self.stall_restarts >= STALL_RESTARTS:
            raise GuestError(f"{what}, again after {self.stall_restarts} power cycles; last serial lines:\n"
                             f"{self.serial_tail()}")
        self.stall_restarts += 1
        LOG.warning("%s: test-bed fault, not ceil's: power-cycling it (%d of at most %d)",
                    what, self.stall_restarts, STALL_RESTARTS)
        self.power_cut(reason="stalled virtual disk")
        self.start()

    def paused(self):
        """`with guest.paused():` the guest stands still, its disk quiet (QMP stop ... cont)."""
        return paused(self.qmp_socket)

    def power_cut(self, reason: str = "") -> None:
        """Pull the plug: SIGKILL QEMU, whatever the guest was doing (its page cache is lost)."""
        if self.running:
            self.proc.kill()
            self.proc.wait()
        self.tryboot_next = False  # the flag does not survive losing power
        why = f" ({reason})" if reason else ""
        with open(self.serial_log, "a") as f:
            f.write(f"\n===== ceil e2e: power cut {self.name} at {time.strftime('%H:%M:%S')}{why} =====\n")

    def stop(self, timeout: float = 5) -> None:
        """Tear down (no clean shutdown needed for a throwaway disk)."""
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"{self.name}: did not shut down within {timeout:.0f} s; serial:\n{self.serial_tail()}") from None

    def cleanup(self) -> None:
        self.stop()
        for p in self._bootdir.glob("*"):
            p.unlink()
        self._bootdir.rmdir()

    # -- logs ---------------------------------------------------------------------------------
    def serial_since_boot(self) -> str:
        try:
            with open(self.serial_log, "rb") as f:
                f.seek(self._serial_mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_tail(self, lines: int = 30) -> str:
        text = self.serial_since_boot().replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])
