"""Readiness waits and failure diagnostics for booted guests.

Every wait has an explicit, generous deadline (QEMU TCG on a loaded 2-core machine is slow) and
fails with a message that says what was awaited, for how long, and what the guest last showed:
the serial console tail before SSH works, and after that the failed ceil unit with its journal.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ceil_infra.ssh import SshConfig

from .vm import Guest


class NotReady(AssertionError):
    """A guest did not reach a state in time (an AssertionError so pytest shows the message)."""


def _deadline_loop(timeout: float, every: float):
    end = time.monotonic() + timeout
    while True:
        yield end - time.monotonic()
        if time.monotonic() > end:
            return
        time.sleep(every)


def wait_ssh(ssh: SshConfig, alias: str, timeout: float, guests: list[Guest], via: str = "") -> float:
    """Wait until `ssh alias true` works; `guests` are polled (reboots restarted, deaths raised)."""
    t0 = time.monotonic()
    last = ""
    for _ in _deadline_loop(timeout, 5):
        for g in guests:
            g.poll()
        proc = ssh.run(alias, "true", timeout=60)
        if proc.returncode == 0:
            return time.monotonic() - t0
        last = proc.stderr.strip()[-300:]
        ssh.drop_master(alias)  # a half-open master from an earlier try must not be reused
    g = guests[0]
    raise NotReady(
        f"{alias}: no SSH login within {timeout:.0f}s{via} (last ssh error: {last or 'none'}).\n"
        f"Serial console of {g.name} ({g.serial_log}), last lines:\n{g.serial_tail(40)}"
    )


def wait_cloud_init(ssh: SshConfig, alias: str, timeout: float) -> str:
    """`cloud-init status --wait`; raise with cloud-init's own report unless it finished clean."""
    proc = ssh.run(alias, "cloud-init status --wait --long", timeout=timeout)
    if proc.returncode != 0:
        log = ssh.run(alias, "sudo tail -n 40 /var/log/cloud-init-output.log", timeout=60).stdout
        raise NotReady(
            f"{alias}: cloud-init finished with status {proc.returncode} (0 = done without errors):\n"
            f"{proc.stdout.strip()}\n{proc.stderr.strip()}\n--- /var/log/cloud-init-output.log (tail) ---\n{log}"
        )
    return proc.stdout


@dataclass
class FirstBoot:
    target: str
    failed: list[str]       # failed ceil-* units
    status: dict            # /var/lib/ceil/status.json
    required: list[str] = field(default_factory=list)  # units ceil-firstboot.target requires
    jobs: int = -1          # queued/running systemd jobs of ceil units (-1: unknown)

    @property
    def stalled(self) -> bool:
        """Not active, yet nothing left to run: the target's start job failed and nobody retries."""
        busy = any(v.get("state") in ("running", "retrying", "pending") for v in self.status.get("steps", {}).values())
        return self.target != "active" and self.jobs == 0 and not busy and not self.failed_steps

    @property
    def failed_steps(self) -> list[str]:
        """Failed units the target needs: first boot cannot finish, so stop waiting."""
        return [u for u in self.failed if u in self.required] if self.required else self.failed


def firstboot_state(ssh: SshConfig, alias: str) -> FirstBoot:
    script = (
        "systemctl is-active ceil-firstboot.target; "
        "systemctl show -p Requires --value ceil-firstboot.target 2>/dev/null; echo '--'; "
        "systemctl list-units --state=failed --plain --no-legend 'ceil-*' | awk '{print $1}'; echo '--'; "
        "sudo cat /var/lib/ceil/status.json 2>/dev/null || echo '{}'; echo '--'; "
        "systemctl list-jobs --no-legend --plain 2>/dev/null | grep -c ' ceil-' || true"
    )
    out = ssh.run(alias, script, timeout=180).stdout  # a guest in first boot under TCG can be very slow
    parts = out.split("--\n")
    head = parts[0].split() if parts else []
    target = head[0] if head else "unknown"
    required = head[1:]
    failed = parts[1].split() if len(parts) > 1 else []
    try:
        status = json.loads(parts[2]) if len(parts) > 2 else {}
    except ValueError:
        status = {}
    try:
        jobs = int(parts[3].strip()) if len(parts) > 3 else -1
    except ValueError:
        jobs = -1
    return FirstBoot(target, failed, status, required, jobs)


def unit_report(ssh: SshConfig, alias: str, unit: str, lines: int = 40) -> str:
    cmd = f"sudo journalctl -u {shlex.quote(unit)} -b --no-pager -n {lines} -o short-monotonic"
    return ssh.run(alias, cmd, timeout=60).stdout.rstrip()


def wait_firstboot(ssh: SshConfig, alias: str, timeout: float, guests: list[Guest],
                   on_progress: Callable[[str], None] | None = None) -> float:
    """Wait for ceil-firstboot.target; fail fast, naming the unit and its log, if a step failed."""
    t0 = time.monotonic()
    stalls = 0
    state = FirstBoot("unknown", [], {})
    for _ in _deadline_loop(timeout, 10):
        for g in guests:
            g.poll()
        try:
            state = firstboot_state(ssh, alias)
        except Exception as exc:  # a reboot in progress or a very busy guest: the next round will tell
            if on_progress:
                on_progress(f"status query failed ({type(exc).__name__}); retrying")
            ssh.drop_master(alias)
            continue
        if state.failed_steps:
            unit = state.failed_steps[0]
            raise NotReady(
                f"{alias}: first-boot unit {unit} failed (failed ceil units: {', '.join(state.failed)}; "
                f"ceil-firstboot.target is {state.target}).\n--- journalctl -u {unit} (tail) ---\n"
                f"{unit_report(ssh, alias, unit)}"
            )
        if state.target == "active":
            return time.monotonic() - t0
        stalls = stalls + 1 if state.stalled else 0
        if stalls >= 3:  # ~30 s with no job: not a race with the next step starting
            raise NotReady(
                f"{alias}: ceil-firstboot.target is {state.target} but nothing is left to run (no ceil job "
                f"queued, no step running): its start job failed earlier, typically because a required "
                f"unit failed once and recovered later. Steps: {_summary(state)}\n"
                f"--- journalctl -u ceil-firstboot.target ---\n{unit_report(ssh, alias, 'ceil-firstboot.target')}"
                + "".join(f"\n--- journalctl -u {u} (tail) ---\n{unit_report(ssh, alias, u, 25)}"
                          for u in _restarted_units(ssh, alias, state))
            )
        if on_progress:
            on_progress(_summary(state))
    raise NotReady(
        f"{alias}: ceil-firstboot.target not reached within {timeout:.0f}s (it is {state.target}); "
        f"steps: {_summary(state)}" + _retrying_logs(ssh, alias, state)
        + "".join(f"\n--- journalctl -u {u} (tail) ---\n{unit_report(ssh, alias, u)}" for u in state.failed)
    )


def _restarted_units(ssh: SshConfig, alias: str, state: FirstBoot) -> list[str]:
    """Required units that failed at least once this boot (NRestarts > 0 or a 'Failed' line)."""
    out = []
    for unit in state.required:
        proc = ssh.run(alias, f"systemctl show -p NRestarts --value {shlex.quote(unit)}", timeout=60)
        if proc.stdout.strip() not in ("", "0"):
            out.append(unit)
    return out


def _summary(state: FirstBoot) -> str:
    steps = state.status.get("steps", {})
    text = ", ".join(f"{k}={v.get('state')}" + (f"#{v['attempt']}" if v.get("attempt", 1) > 1 else "")
                     for k, v in sorted(steps.items())) or "no status.json yet"
    # Failed units that are not steps (e.g. a timer's service) do not stop the wait, but show.
    others = [u for u in state.failed if u not in state.failed_steps]
    return text + (f"; failed (not a step): {', '.join(others)}" if others else "")


def _retrying_logs(ssh: SshConfig, alias: str, state: FirstBoot) -> str:
    out = []
    for step, entry in sorted(state.status.get("steps", {}).items()):
        if entry.get("state") in ("retrying", "running", "failed"):
            out.append(f"\n--- journalctl -u ceil-{step}.service (tail) ---\n{unit_report(ssh, alias, f'ceil-{step}.service')}")
    return "".join(out)


DIAGNOSTICS = {
    "systemctl-failed.txt": "systemctl --failed --no-pager",
    "journal-ceil.txt": "sudo journalctl -u 'ceil-*' -b --no-pager -o short-monotonic",
    "ceil-status.json": "sudo cat /var/lib/ceil/status.json",
    "cloud-init-status.txt": "cloud-init status --long",
    "cloud-init-output.log": "sudo cat /var/log/cloud-init-output.log",
    "cloud-init.log": "sudo cat /var/log/cloud-init.log",
    "journal-boot.txt": "sudo journalctl -b --no-pager -o short-monotonic",
    "ip.txt": "ip -d addr; ip route; cat /etc/resolv.conf",
    "time.txt": "date -u; stat -c 'clock-epoch %y' /usr/lib/clock-epoch; chronyc -n sources -v; chronyc -n sourcestats;"
                " chronyc -n tracking",
}


def collect(ssh: SshConfig, alias: str, dest: Path) -> list[Path]:
    """Copy the guest's diagnostics into `dest` (best effort: a dead guest yields nothing)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cmd in DIAGNOSTICS.items():
        try:
            proc = ssh.run(alias, cmd, timeout=60)
        except Exception as exc:  # timeout: the guest is gone
            (dest / "unreachable.txt").write_text(f"{cmd}: {exc}\n")
            break
        if proc.returncode == 255:
            (dest / "unreachable.txt").write_text(proc.stderr)
            break
        (dest / name).write_text(proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr.strip() else ""))
        written.append(dest / name)
    return written
