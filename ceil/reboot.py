"""`bake.py reboot`: reboot machines from the workstation and know they came back.

The seed's `router-reboot` (and a reboot of everything) as one command over the same SSH paths
as `bake.py run`. Two things a plain `ssh ... sudo reboot` gets wrong:
- the reboot can cut the SSH connection before its exit status arrives (ssh then exits 255), so
  a working reboot reads as a failure and a Makefile stops before the next machine. The reboot
  is scheduled two seconds ahead instead (`systemd-run --on-active`), so the command returns
  cleanly, and whether a machine rebooted is judged by its boot id, not by ssh's exit status;
- the router carries the workstation's way to the nodes (the VPN, the route, `--via`): it goes
  last, after every node is back, and a node is only waited for while the router still stands.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import click

from .config import Cluster
from .errors import CeilError
from .workstation import config_option, machines_named, not_reached, run_everywhere, secrets_option

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# Two seconds ahead, so sshd sends the exit status before systemd stops it.
SCHEDULE_REBOOT = "sudo systemd-run --quiet --on-active=2 --timer-property=AccuracySec=100ms systemctl reboot"
POLL_SECONDS = 5


UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def boot_ids(cluster: Cluster, names: list[str], via: str | None, run=None) -> dict[str, str | None]:
    """Each machine's current boot id, None where it did not answer (down, or still booting). The
    id is picked out of the answer, which holds ssh's own warnings too."""
    answers = run_everywhere(cluster, names, BOOT_ID, via, run)
    return {name: (found.group(0) if code == 0 and (found := UUID_RE.search(output)) else None)
            for name, (code, output) in answers.items()}


def reboot_group(cluster: Cluster, names: list[str], via: str | None, wait: bool, timeout: float,
                 say: Callable[[str], None], run=None, sleep=time.sleep, clock=time.monotonic) -> None:
    """Reboot `names` side by side; with `wait`, return once each answers with a new boot id."""
    before = boot_ids(cluster, names, via, run)
    down = [name for name, boot in before.items() if boot is None]
    if down:
        hint = not_reached({name: (255, "") for name in down})
        raise CeilError(f"{', '.join(down)} did not answer before the reboot, so nothing was rebooted; {hint}")
    results = run_everywhere(cluster, names, SCHEDULE_REBOOT, via, run)
    refused = {name: output for name, (code, output) in results.items() if code not in (0, 255)}
    if refused:
        # 255 is ssh's own: the connection may have gone with the reboot; the boot id tells.
        lines = "; ".join(f"{name}: {output.splitlines()[-1] if output else 'no output'}" for name, output in refused.items())
        raise CeilError(f"the reboot was refused on {', '.join(refused)} ({lines})")
    say(f"rebooting {', '.join(names)}")
    if not wait:
        return
    started, pending = clock(), list(names)
    sleep(POLL_SECONDS)
    while True:
        now = boot_ids(cluster, pending, via, run)
        for name, boot in now.items():
            if boot is not None and boot != before[name]:
                say(f"{name} is back ({clock() - started:.0f} s)")
                pending.remove(name)
        if not pending:
            return
        if clock() - started > timeout:
            raise CeilError(f"{', '.join(pending)} did not answer with a new boot within {timeout:.0f} s: look at"
                            " its console or status LEDs; `bake.py status` shows its boot once the router has it")
        sleep(POLL_SECONDS)


@click.command("reboot")
@config_option
@secrets_option
@click.option("--via", metavar="ADDRESS", help="Jump through the router at this address (see `ssh`).")
@click.option("--on", "only", multiple=True, metavar="NAME",
              help="Only these machines (repeatable) [default: every node, then the router].")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until each machine answers again with a new boot (the router only after the nodes)."
                   " --no-wait schedules every reboot and returns: the router's then overlaps the nodes', as at"
                   " power-on (the nodes retry DHCP and the join until the router is back).")
@click.option("--timeout", default=900, show_default=True, type=click.IntRange(min=10), metavar="SECONDS",
              help="How long to wait for each group (the nodes, then the router) to come back.")
def reboot_command(config_path: Path, secrets_path: Path | None, via: str | None, only: tuple[str, ...],
                   wait: bool, timeout: int) -> None:
    """Reboot the cluster's machines over SSH: the nodes side by side, then the router (the
    workstation's way to the nodes goes through it). Each reboot is confirmed by the machine's
    new boot id, not by ssh's exit status, which a reboot can cut off. `make reboot-all`,
    `make router-reboot` (`--on router`)."""
    cluster, names = machines_named(config_path, secrets_path, only)
    nodes = [name for name in cluster.roles if name in names and name != "router"]
    for group in (nodes, ["router"] if "router" in names else []):
        if group:
            reboot_group(cluster, group, via, wait, timeout, click.echo)
