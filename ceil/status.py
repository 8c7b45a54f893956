"""`python bake.py status`: the cluster's first-boot progress, read from the router's status board.

The router (feature firstboot/status-board) collects every node's report; this command fetches
its JSON over plain HTTP on the LAN (or the VPN): no SSH, no keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config import load_cluster
from .errors import CeilError
from .text import printable
from .ui import notice

STATUS_PORT = 8081  # the board's port on the router's LAN address (opened by nat-firewall)
# Each node proves who reports with a token derived from a key only the router holds: the board
# recomputes it, so a node added to cluster.yaml later needs no new router card.
BOARD_KEY_SECRET = "status-board/key"
REPORT_TOKEN_SECRET = "status-report/token"


def report_token(key: str, node: str) -> str:
    """HMAC-SHA256(key, "status-report:<node>"), hex: what node `node` sends as its bearer token."""
    return hmac.new(bytes.fromhex(key), f"status-report:{node}".encode(), hashlib.sha256).hexdigest()
STATE_STYLE = {"done": "green", "failed": "bold red", "retrying": "yellow", "running": "cyan"}


def board_url(router_ip: str) -> str:
    return f"http://{router_ip}:{STATUS_PORT}/api/status"


# A board that cannot be reached says so within this long; one that answers gets `timeout`, since a
# router busy with its first boot (a Pi 3, a TCG twin) can take many seconds to answer.
CONNECT_TIMEOUT_S = 5.0
# --wait: seconds between two reads of a board that answered, and between tries of one that did not.
POLL_INTERVAL_S = 5.0
RETRY_INTERVAL_S = 2.0


class BoardUnreachable(CeilError):
    """The board did not answer: not up yet, a dropped connection, an error of the server's own.
    Worth trying again while the router boots, unlike an answer that is not a board's."""


def fetch_status(url: str, timeout: float = 20.0) -> dict:
    """The board's snapshot, or a CeilError that says why it could not be read."""
    import requests  # here, not at the top: every bake.py start imports this module

    try:
        resp = requests.get(url, timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout))
        resp.raise_for_status()
    except requests.RequestException as e:
        # A 4xx is an answer from something at that address that is not a board: no retry fixes it.
        refused = isinstance(e, requests.HTTPError) and e.response is not None and e.response.status_code < 500
        raise (CeilError if refused else BoardUnreachable)(
            f"could not read the status board at {url}: {e}. Expected the router's board on the"
            " cluster LAN: connect this machine to the LAN (or the VPN), wait until the router has"
            " booted, or give the address with --url"
        ) from None
    try:
        snap = resp.json()
    except ValueError:
        raise CeilError(f"{url} answered, but not with JSON: is that the ceil router's status board?") from None
    if not isinstance(snap, dict) or not isinstance(snap.get("hosts"), list):
        raise CeilError(f"{url} answered JSON without a 'hosts' list: not a ceil status board")
    # The board is read over plain HTTP: whatever answers there must not crash this command.
    if not all(isinstance(h, dict) for h in snap["hosts"]):
        raise CeilError(f"{url} answered a 'hosts' list whose entries are not objects: not a ceil status board")
    return snap


def _age(value: object) -> str:
    if (reported := _seconds(value)) is None:
        return "never"
    seconds = int(reported)
    if seconds < 120:
        return f"{seconds}s ago"
    return f"{seconds // 60}m ago"


def plain(value: object) -> Text:
    """What a host reported, as inert text: control, format and line-separator characters dropped
    (an escape sequence from the board would reach the terminal), no Rich markup read."""
    return Text(printable(str(value)))


def status_table(snap: dict) -> Table:
    table = Table("host", "state", "steps", "details", "last report", title=plain(f"{snap.get('cluster', '?')}: first boot"))
    for h in snap["hosts"]:
        state = plain(h.get("state", "?"))
        state.stylize(STATE_STYLE.get(state.plain, "dim"))
        why = h.get("why") if isinstance(h.get("why"), dict) else {}

        def said(step: object) -> str:
            return f"{step} ({why[step]})" if isinstance(step, str) and why.get(step) else str(step)

        def listed(key: str) -> list:
            return h[key] if isinstance(h.get(key), list) else []

        details = [f"failed: {said(s)}" for s in listed("failed")] + [f"busy: {said(s)}" for s in listed("busy")]
        table.add_row(
            plain(h.get("hostname", h.get("name", "?"))),
            state,
            plain(f"{h.get('done', 0)}/{h.get('total', 0)}"),
            plain(", ".join(map(str, details))),
            _age(h.get("age")),
        )
    return table


def _seconds(value: object) -> float | None:
    """A count of seconds as the board sends it, or None for anything else (JSON's 1e400 is inf)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
    return float(value) if ok else None


def step_profile(report: object) -> list[dict]:
    """The first-boot profile of one host's report: each step of the latest boot with its start
    (seconds since power-on), duration and share of the time from power-on to the last step's
    end, slowest first; steps of an earlier boot (a power cut) come last, without a share. The
    first row is the time before any step began: the OS's boot and cloud-init."""
    steps = report.get("steps") if isinstance(report, dict) else None
    if not isinstance(steps, dict):
        return []
    timed = []
    for name, entry in steps.items():
        if isinstance(entry, dict) and _seconds(entry.get("started")) is not None:
            end = _seconds(entry.get("finished"))
            timed.append((str(name), entry, _seconds(entry["started"]), end))
    if not timed:
        return []
    # The boot whose steps ran last, by the wall clock each record was written at ("at"): times since
    # power-on do not compare across boots (a step early in a later boot has a smaller one).
    latest = max(timed, key=lambda t: (_seconds(t[1].get("at")) or 0, t[2]))[1].get("boot")
    current = [t for t in timed if t[1].get("boot") == latest]
    span = max([end for *_, end in current if end is not None] + [start for _, _, start, _ in current])
    rows = [{"step": "(power-on to the first step)", "started": 0.0, "took": min(t[2] for t in current),
             "state": "done", "boot": "latest"}]
    for name, entry, start, end in current:
        rows.append({"step": name, "started": start, "took": None if end is None else end - start,
                     "state": str(entry.get("state", "?")), "boot": "latest"})
    for row in rows:
        row["share"] = row["took"] / span if row["took"] is not None and span else None
    rows.sort(key=lambda r: -(r["took"] or 0))
    rows += [{"step": name, "started": start, "took": None if end is None else end - start,
              "state": str(entry.get("state", "?")), "boot": "earlier", "share": None}
             for name, entry, start, end in timed if entry.get("boot") != latest]
    return rows


def times_tables(snap: dict) -> list[Table]:
    tables = []
    for h in snap["hosts"]:
        rows = step_profile(h.get("report"))
        table = Table("step", "started", "took", "share", "state",
                      title=plain(f"{h.get('hostname', h.get('name', '?'))}: first-boot profile"))
        for r in rows:
            took = "running" if r["took"] is None else f"{r['took']:.0f} s"
            share = "" if r["share"] is None else f"{100 * r['share']:.0f} %"
            started = f"{r['started']:.0f} s" + (" (earlier boot)" if r["boot"] == "earlier" else "")
            table.add_row(plain(r["step"]), started, took, share, plain(r["state"]))
        if not rows:
            table.add_row(plain("(no step times reported yet)"), "", "", "", "")
        tables.append(table)
    return tables


def settled(snap: dict) -> bool:
    """Every host finished: all done, or something failed (waiting longer would not help)."""
    states = [h.get("state") for h in snap["hosts"]]
    return "failed" in states or all(s == "done" for s in states)


def fetch_while_waiting(url: str, timeout: float, deadline: float) -> dict:
    """The board's snapshot, trying again until `deadline` (time.monotonic()) while it does not
    answer: a router still booting, or a connection dropped mid-poll. Then its last error."""
    said = False
    while True:
        try:
            return fetch_status(url, timeout)
        except BoardUnreachable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if not said:  # once per outage, not every few seconds
                notice(f"waiting for the status board at {url} to answer (at most {left:.0f} s more, --wait)")
                said = True
            time.sleep(min(RETRY_INTERVAL_S, left))


def poll_status(url: str, timeout: float, wait: float) -> dict:
    """The board's snapshot once every host is done or one failed, or the last one when `wait`
    seconds ran out; without `wait`, the first one (and an unreachable board fails at once)."""
    if not wait:
        return fetch_status(url, timeout)
    deadline = time.monotonic() + wait
    snap = fetch_while_waiting(url, timeout, deadline)
    while not settled(snap) and time.monotonic() < deadline:
        time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        snap = fetch_while_waiting(url, timeout, deadline)
    return snap


def _resolve_url(url: str | None, config_path: Path) -> str:
    if url:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # "http://[10.42.0.1:8081": an unclosed bracket
            usable = False
        if not usable:
            raise click.BadParameter(f"{url!r} is not a web address: give http://HOST[:PORT], e.g."
                                     " http://10.42.0.1:8081", param_hint="--url")
        return url if "/api/" in url else url.rstrip("/") + "/api/status"
    return board_url(str(load_cluster(config_path, env_optional=True).network.router_ip))


@click.command("status")
@click.option("--config", "config_path", default="cluster.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The cluster description (for the router's address).")
@click.option("--url", default=None, help="The board's address instead, e.g. http://10.42.0.1:8081")
@click.option("--json", "as_json", is_flag=True, help="Print the board's raw JSON.")
@click.option("--times", is_flag=True, help="Each host's first-boot profile: every step's start (seconds after"
              " power-on), duration and share of the first boot, slowest first.")
@click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Poll until every host is done (or one failed), at most this long; a board that does"
              " not answer yet (the router still booting) is tried again meanwhile.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True, help="Seconds to wait for the board's"
              " answer (the connection itself gets at most 5).")
def status_command(config_path: Path, url: str | None, as_json: bool, times: bool, wait: float, timeout: float) -> None:
    """Show each machine's first-boot progress, as collected by the router's status board.

    Exits 1 when a host reports a failed step, 2 when --wait ran out before all were done."""
    snap = poll_status(_resolve_url(url, config_path), timeout, wait)
    if as_json:
        click.echo(json.dumps(snap, indent=1))
    elif times:
        for table in times_tables(snap):
            Console().print(table)
    else:
        Console().print(status_table(snap))  # stdout: the table is this command's output
    states = [h.get("state") for h in snap["hosts"]]
    if "failed" in states:
        raise SystemExit(1)
    if wait and not settled(snap):
        raise SystemExit(2)
