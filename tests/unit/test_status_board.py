"""Status board (router), status reporter (nodes) and `bake.py status` (workstation), end to end
on 127.0.0.1: the real scripts, a real HTTP server, the real click command."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ceil.errors import CeilError
from ceil.status import fetch_status, report_token, settled, status_command
from router_lan_render import REPO, cluster_from, render

BOARD = REPO / "firstboot/status-board/lib/status-board"
KEY = "5e" * 32  # the router's reporting key in these tests
REPORTER = REPO / "firstboot/status-report/lib/status-report"
sys.path.insert(0, str(REPO / "firstboot/status-report/lib"))
import ceil_board  # noqa: E402  (the nodes' signing helper)


def signed_post(url: str, path: str, body: bytes, token: str) -> requests.Response:
    """POST as a node does: a fresh nonce from the board, the request signed with `token`."""
    nonce = requests.get(f"{url}/api/nonce", timeout=5).json()["nonce"]
    sig = ceil_board.signature(token, "POST", path, nonce, body)
    return requests.post(f"{url}{path}", data=body, timeout=5, headers={
        "Content-Type": "application/json", "Authorization": f"CEIL-HMAC nonce={nonce},sig={sig}"})


def load_board():
    """The board script (no .py suffix: it is installed as a command) as a module."""
    loader = SourceFileLoader("ceil_status_board", str(BOARD))
    module = module_from_spec(spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def board_config(tmp_path: Path) -> dict:
    return {"bind": "127.0.0.1", "port": 0, "cluster": "ceil", "domain": "ceil.internal", "nodes": ["one", "two"],
            "hostnames": {"router": "ceil-router", "one": "ceil-one", "two": "ceil-two"},
            "state_dir": str(tmp_path / "state"),
            "lan": {"cidr": "10.42.0.0/24", "router_ip": "10.42.0.1", "pool": ["10.42.0.100", "10.42.0.199"],
                    "lb": ["10.42.0.240", "10.42.0.250"]},
            "reserved": {"one": {"ip": "10.42.0.11", "mac": None}, "two": {"ip": "10.42.0.12", "mac": "dc:a6:32:00:00:02"}}}


@contextmanager
def running_board(mod, tmp_path: Path, **server_args):
    """The board module `mod` serving on 127.0.0.1:<free port>; yields (base URL, server)."""
    mod.Handler.board = mod.Board(board_config(tmp_path), bytes.fromhex(KEY))
    server = mod.FreeBindServer(("127.0.0.1", 0), mod.Handler, **server_args)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def board(tmp_path, monkeypatch):
    """A running board on 127.0.0.1:<free port> for nodes one and two; yields its base URL."""
    mod = load_board()
    router_status = tmp_path / "router-status.json"
    router_status.write_text(json.dumps({"host": "ceil-router", "steps": {
        "dnsmasq": {"state": "done"}, "nat-firewall": {"state": "done"}, "status-board": {"state": "pending"}}}))
    monkeypatch.setattr(mod, "ROUTER_STATUS_CMD", ["/nonexistent/ceil-status"])
    monkeypatch.setattr(mod, "ROUTER_STATUS_FILE", str(router_status))
    with running_board(mod, tmp_path) as (url, _):
        yield url, tmp_path / "state"


def report(url: str, node: str, steps: dict, token: str | None = None) -> requests.Response:
    """POST as node `node` does, with its token (or `token`)."""
    body = json.dumps({"host": f"ceil-{node}", "steps": steps}).encode()
    return signed_post(url, f"/api/status/{node}", body, token if token is not None else report_token(KEY, node))


def test_summary_counts_steps_and_ignores_the_status_services():
    mod = load_board()
    assert mod.summarize(None) == ("waiting", 0, 0, [], [])
    assert mod.summarize({"steps": {"a": {"state": "done"}, "status-report": {"state": "pending"}}}) == (
        "done", 1, 1, [], [])
    assert mod.summarize({"steps": {"a": {"state": "done"}, "b": {"state": "retrying"}}})[0] == "retrying"
    assert mod.summarize({"steps": {"a": {"state": "failed"}, "b": {"state": "running"}}}) == (
        "failed", 0, 2, ["a"], ["b"])


def test_board_stores_reports_and_serves_json_and_page(board):
    url, state = board
    assert report(url, "one", {"k3s-install": {"state": "running"}, "chrony": {"state": "done"}}).status_code == 200
    snap = requests.get(f"{url}/api/status", timeout=5).json()
    hosts = {h["name"]: h for h in snap["hosts"]}
    assert list(hosts) == ["router", "one", "two"]
    assert hosts["router"]["state"] == "done" and hosts["router"]["total"] == 2
    assert (hosts["one"]["state"], hosts["one"]["done"], hosts["one"]["busy"]) == ("running", 1, ["k3s-install"])
    assert hosts["two"]["state"] == "waiting" and hosts["two"]["last_seen"] is None
    assert json.loads((state / "one.json").read_text())["report"]["host"] == "ceil-one"
    page = requests.get(url + "/", timeout=5).text
    assert "ceil-one" in page and "busy: k3s-install" in page
    assert requests.get(f"{url}/healthz", timeout=5).text == "ok\n"


def test_board_refuses_unknown_nodes_and_bad_bodies(board):
    url, state = board
    assert report(url, "intruder", {}).status_code == 404
    token = report_token(KEY, "one")
    assert signed_post(url, "/api/status/one", b"not json", token).status_code == 400
    assert signed_post(url, "/api/status/one", b"[1, 2]", token).status_code == 400
    assert signed_post(url, "/api/status/one", b"x" * 300_000, token).status_code == 413
    assert not list(state.glob("*.json"))


def test_a_lan_neighbour_without_the_nodes_token_changes_nothing(board):
    """Issue 18: any LAN host could set any node's state. Now only the node's own token works."""
    url, state = board
    assert report(url, "one", {"k3s-install": {"state": "done"}}).status_code == 200
    before = (state / "one.json").read_bytes()
    for token in ("", "0" * 64, report_token(KEY, "two"), report_token("ab" * 32, "one")):
        answer = report(url, "one", {"k3s-install": {"state": "failed"}}, token=token)
        assert answer.status_code == 401 and "no valid signature for one" in answer.text
    no_header = requests.post(f"{url}/api/status/one", json={"steps": {}}, timeout=5)
    assert no_header.status_code == 401
    # The old way (the token itself as a bearer) is refused: the token never crosses the LAN now.
    bearer = requests.post(f"{url}/api/status/one", json={"steps": {}}, timeout=5,
                           headers={"Authorization": f"Bearer {report_token(KEY, 'one')}"})
    assert bearer.status_code == 401
    assert (state / "one.json").read_bytes() == before


def test_a_recorded_request_cannot_be_replayed_or_altered(board):
    """What a LAN neighbour who records a node's request can do with it: nothing."""
    url, state = board
    token = report_token(KEY, "one")
    body = json.dumps({"steps": {"k3s-install": {"state": "done"}}}).encode()
    nonce = requests.get(f"{url}/api/nonce", timeout=5).json()["nonce"]
    auth = {"Authorization": f"CEIL-HMAC nonce={nonce},sig={ceil_board.signature(token, 'POST', '/api/status/one', nonce, body)}"}
    assert requests.post(f"{url}/api/status/one", data=body, headers=auth, timeout=5).status_code == 200
    assert requests.post(f"{url}/api/status/one", data=body, headers=auth, timeout=5).status_code == 401  # replay
    nonce = requests.get(f"{url}/api/nonce", timeout=5).json()["nonce"]
    auth = {"Authorization": f"CEIL-HMAC nonce={nonce},sig={ceil_board.signature(token, 'POST', '/api/status/one', nonce, body)}"}
    other = json.dumps({"steps": {"k3s-install": {"state": "failed"}}}).encode()
    assert requests.post(f"{url}/api/status/one", data=other, headers=auth, timeout=5).status_code == 401  # altered
    assert requests.post(f"{url}/api/register/one", data=body, headers=auth, timeout=5).status_code == 401  # moved
    assert json.loads((state / "one.json").read_text())["report"]["steps"]["k3s-install"]["state"] == "done"


def test_page_escapes_what_nodes_send(board):
    url, _ = board
    report(url, "one", {"<script>alert(1)</script>": {"state": "failed"}})
    page = requests.get(url + "/", timeout=5).text
    assert "<script>alert" not in page and "&lt;script&gt;" in page


# ---- a flood of reads from the LAN (security review: memory exhaustion of the router) ----------


def stand_in_ceil_status(tmp_path: Path) -> tuple[Path, Path]:
    """A `ceil-status` on a PATH of its own that notes each run in a file and takes a while (so
    that concurrent requests overlap it); returns (the command, the file of runs)."""
    runs = tmp_path / "ceil-status.runs"
    command = tmp_path / "bin/ceil-status"
    command.parent.mkdir()
    command.write_text(f"#!/bin/sh\necho \"$*\" >> {runs}\nsleep 0.5\n"
                       'echo \'{"host": "ceil-router", "steps": {"dnsmasq": {"state": "done"}}}\'\n')
    command.chmod(0o755)
    return command, runs


def test_concurrent_reads_run_ceil_status_once_per_cache_period(tmp_path, monkeypatch):
    """Every GET / and /api/status started a Python process: a few hundred at once took a 1 GB
    Pi's memory, and the OOM killer could take dnsmasq with it."""
    mod = load_board()
    command, runs = stand_in_ceil_status(tmp_path)
    monkeypatch.setenv("PATH", f"{command.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(mod, "ROUTER_STATUS_CMD", ["ceil-status", "--json"])
    monkeypatch.setattr(mod, "ROUTER_REPORT_TTL", 2.0)
    with running_board(mod, tmp_path) as (url, _):
        paths = ["/api/status", "/"] * 20
        with ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(lambda p: requests.get(url + p, timeout=30), paths))
        assert [a.status_code for a in answers] == [200] * len(paths)
        assert runs.read_text() == "--json\n"  # one run for 40 requests
        router = requests.get(f"{url}/api/status", timeout=5).json()["hosts"][0]
        assert (router["name"], router["state"]) == ("router", "done")  # the stand-in's report
        assert runs.read_text().count("\n") == 1  # still within the period
        time.sleep(2.1)
        requests.get(f"{url}/api/status", timeout=5)
        assert runs.read_text().count("\n") == 2  # a period later: a fresh report


def test_the_board_handles_at_most_max_handlers_requests_at_once(tmp_path):
    """More connections than handlers wait in the kernel's listen queue, not in threads."""
    mod = load_board()
    with running_board(mod, tmp_path, max_handlers=2) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # send nothing
        try:
            with pytest.raises(requests.ReadTimeout):  # both handlers busy: queued, not served
                requests.get(f"{url}/healthz", timeout=(5, 1))
            handlers = [t for t in threading.enumerate() if "process_request_thread" in t.name]
            assert len(handlers) == 2  # and no thread started for it
        finally:
            for sock in idle:
                sock.close()
        assert requests.get(f"{url}/healthz", timeout=5).text == "ok\n"  # handlers free again


def test_a_connection_that_sends_nothing_gives_its_handler_back(tmp_path, monkeypatch):
    """Without a timeout MAX_HANDLERS silent connections would shut the board for good."""
    mod = load_board()
    monkeypatch.setattr(mod.Handler, "timeout", 0.5)
    with running_board(mod, tmp_path, max_handlers=1) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)):
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).text == "ok\n"
            assert time.monotonic() - started < 4


def test_the_boards_unit_limits_its_tasks_and_memory():
    """Should the board's own bounds fail, the unit's keep it from starving dnsmasq."""
    mod = load_board()
    unit = (REPO / "firstboot/status-board/units/ceil-status-board.service.j2").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    # The main thread, every handler, ceil-status and its systemctl must fit, or requests fail.
    assert mod.MAX_HANDLERS + 3 <= int(settings["TasksMax"]) <= 64
    assert f"at most {mod.MAX_HANDLERS} handler threads" in unit  # the comment's sum is this code's
    memory = re.fullmatch(r"(\d+)M", settings["MemoryMax"])
    assert memory and 64 <= int(memory.group(1)) <= 256, settings["MemoryMax"]
    assert int(settings["OOMScoreAdjust"]) > 0  # killed before dnsmasq where no memory cgroup is


def run_reporter(url: str, state_dir: Path, node: str = "two") -> subprocess.CompletedProcess:
    (state_dir / "token").write_text(report_token(KEY, node) + "\n")
    env = {**os.environ, "CEIL_STATE_DIR": str(state_dir), "CEIL_REPORT_TOKEN": str(state_dir / "token")}
    return subprocess.run([sys.executable, str(REPORTER), url], capture_output=True, text=True, env=env, timeout=30)


def test_reporter_posts_on_change_only(board, tmp_path):
    url, board_state = board
    node_state = tmp_path / "node"
    node_state.mkdir()
    (node_state / "status.json").write_text(json.dumps({"host": "ceil-two", "steps": {"chrony": {"state": "done"}}}))
    first = run_reporter(f"{url}/api/status/two", node_state)
    assert first.returncode == 0 and "reported" in first.stdout, first.stderr
    stored = (board_state / "two.json").stat().st_mtime_ns
    again = run_reporter(f"{url}/api/status/two", node_state)  # unchanged: nothing sent
    assert again.returncode == 0 and again.stdout == ""
    assert (board_state / "two.json").stat().st_mtime_ns == stored
    (node_state / "status.json").write_text(json.dumps({"host": "ceil-two", "steps": {"chrony": {"state": "failed"}}}))
    assert "reported" in run_reporter(f"{url}/api/status/two", node_state).stdout
    assert json.loads((board_state / "two.json").read_text())["report"]["steps"]["chrony"]["state"] == "failed"


def test_reporter_tolerates_an_absent_router(tmp_path):
    done = run_reporter("http://127.0.0.1:9/api/status/one", tmp_path)
    assert done.returncode == 0 and "the timer retries" in done.stderr
    assert not (tmp_path / "status-report.last").exists()


def test_status_command_prints_the_table(board):
    url, _ = board
    report(url, "one", {"chrony": {"state": "done"}})
    report(url, "two", {"chrony": {"state": "done"}})
    result = CliRunner().invoke(status_command, ["--url", url])
    assert result.exit_code == 0, result.output
    for text in ("ceil-router", "ceil-one", "ceil-two", "done", "1/1"):
        assert text in result.output
    raw = CliRunner().invoke(status_command, ["--url", url, "--json"])
    assert json.loads(raw.stdout)["cluster"] == "ceil", raw.output


def test_why_a_step_retries_reaches_the_page_and_the_status_command(board):
    """ceil-step's "why" (the step's own words for its failing attempts) is what a user needs
    while a card waits: the board's JSON, its page and `bake.py status` show it."""
    url, _ = board
    why = "the clock is earlier than the package archive's signature: waiting for network time"
    report(url, "one", {"packages": {"state": "retrying", "why": why}, "chrony": {"state": "done", "why": "old"}})
    hosts = {h["name"]: h for h in requests.get(f"{url}/api/status", timeout=5).json()["hosts"]}
    assert hosts["one"]["why"] == {"packages": why}  # a done step's old reason is history, not news
    assert f"busy: packages ({why})".replace("'", "&#x27;") in requests.get(url + "/", timeout=5).text
    result = CliRunner().invoke(status_command, ["--url", url], env={"COLUMNS": "250"})
    assert f"busy: packages ({why})" in result.output, result.output


def test_status_command_exits_1_on_a_failed_step(board):
    url, _ = board
    report(url, "one", {"k3s-install": {"state": "failed"}})
    result = CliRunner().invoke(status_command, ["--url", url, "--wait", "30"])
    assert result.exit_code == 1
    assert "failed: k3s-install" in result.output


def test_status_command_prints_what_nodes_send_as_inert_text(board):
    """A LAN host's report reaches the user's terminal: no escape sequence, no Rich markup."""
    url, _ = board
    # ... nor a line break of Unicode's, nor a bidirectional override showing text reversed.
    hostile = "k3s\x1b]0;owned\x07\x1b[2J[/][bold red]x\u2028\u202eyz"
    report(url, "one", {hostile: {"state": "failed"}})
    result = CliRunner().invoke(status_command, ["--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert not any(c in result.output for c in "\x1b\x07\u2028\u202e")
    assert "failed: k3s]0;owned[2J[/][bold red]xyz" in result.output


def test_status_times_shows_each_steps_share_of_the_first_boot(board):
    """Step times travel node -> board -> workstation as the step runner records them."""
    url, _ = board
    boot, old = "1a2b3c4d", "99999999"
    report(url, "one", {
        "packages": {"state": "done", "started": 100.0, "finished": 400.0, "boot": boot, "at": 2000},
        "chrony": {"state": "done", "started": 100.0, "finished": 130.0, "boot": boot},
        "k3s-install": {"state": "running", "started": 400.0, "boot": boot},
        # Before a power cut: later in its boot than anything above, but written earlier ("at").
        "secrets": {"state": "done", "started": 900.0, "finished": 910.0, "boot": old, "at": 1000},
        "evil\x1b[2J": {"state": "done", "started": "soon", "boot": boot},  # not a number: no row
    })
    result = CliRunner().invoke(status_command, ["--url", url, "--times"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "ceil-one" in line or "│" in line]
    text = "\n".join(lines)
    assert "ceil-one: first-boot profile" in result.output
    # power-on to the last step's end is 400 s: packages 300 s (75 %), power-on to the first step 100 s.
    assert "packages" in text and "300 s" in text and "75 %" in text
    assert "(power-on to the first step)" in text and "25 %" in text
    assert "running" in text and "(earlier boot)" in text and "\x1b" not in result.output
    order = [n for n in ("packages", "(power-on", "chrony") if n in text]
    assert sorted(order, key=text.index) == ["packages", "(power-on", "chrony"]  # slowest first
    assert "no step times reported yet" in result.output  # node two has not reported


def test_status_command_without_a_board_says_how_to_reach_it():
    with pytest.raises(CeilError, match="could not read the status board at http://127.0.0.1:9/api/status.*--url"):
        fetch_status("http://127.0.0.1:9/api/status", timeout=2)
    assert settled({"hosts": [{"state": "done"}, {"state": "failed"}]})
    assert not settled({"hosts": [{"state": "done"}, {"state": "waiting"}]})


# ---- `status --wait` while the router boots (the board not up yet, or dropping a connection) ----

DONE_SNAPSHOT = {"cluster": "ceil", "hosts": [{"name": "router", "hostname": "ceil-router", "state": "done",
                                               "done": 2, "total": 2, "failed": [], "busy": []}]}
RUNNING_SNAPSHOT = {"cluster": "ceil", "hosts": [{**DONE_SNAPSHOT["hosts"][0], "state": "running", "done": 1}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fake_board(port: int, answers: list, after: float = 0.0):
    """A board on 127.0.0.1:`port` that starts listening `after` seconds from now and answers GET
    /api/status with the next of `answers` (the last one again once they run out): a snapshot,
    or None to drop the connection without an answer. Yields the list of requests it saw."""
    seen = []

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            snap = answers[min(len(seen), len(answers)) - 1]
            if snap is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = json.dumps(snap).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = []

    def start():
        time.sleep(after)
        servers.append(ThreadingHTTPServer(("127.0.0.1", port), Answer))
        servers[0].serve_forever()

    threading.Thread(target=start, daemon=True).start()
    try:
        yield seen
    finally:
        while after and not servers:  # started late: stop it all the same
            time.sleep(0.05)
        if servers:
            servers[0].shutdown()
            servers[0].server_close()


def test_status_wait_waits_for_a_board_that_comes_up_later():
    """`status --wait 15` exited 1 after 0.4 s with "could not read the status board" when the
    router's board came up 3 s later: the waiting is what --wait is for."""
    port = free_port()
    with fake_board(port, [DONE_SNAPSHOT], after=1.5) as seen:
        started = time.monotonic()
        result = CliRunner().invoke(status_command, ["--url", f"http://127.0.0.1:{port}", "--wait", "15"],
                                    env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.5 and seen == ["/api/status"]
    assert f"waiting for the status board at http://127.0.0.1:{port}/api/status to answer" in result.output
    assert "ceil-router" in result.output and "done" in result.output


def test_status_wait_survives_a_connection_dropped_mid_poll(monkeypatch):
    monkeypatch.setattr("ceil.status.POLL_INTERVAL_S", 0.2)
    port = free_port()
    with fake_board(port, [RUNNING_SNAPSHOT, None, DONE_SNAPSHOT]) as seen:
        result = CliRunner().invoke(status_command, ["--url", f"http://127.0.0.1:{port}", "--wait", "15"],
                                    env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(seen) == 3 and "done" in result.output and "2/2" in result.output


def test_status_fails_with_the_board_unreachable_once_wait_runs_out_and_at_once_without_it():
    url = f"http://127.0.0.1:{free_port()}"
    for args, at_least, at_most in (([], 0, 1.5), (["--wait", "1"], 1, 3)):
        started = time.monotonic()
        result = CliRunner().invoke(status_command, ["--url", url, *args])
        took = time.monotonic() - started
        assert isinstance(result.exception, CeilError) and at_least <= took < at_most, (args, took, result.output)
        assert "could not read the status board" in str(result.exception)
        assert "wait until the router has booted" in str(result.exception)
        assert ("waiting for the status board" in result.output) == bool(args)


def test_status_wait_does_not_retry_an_answer_that_is_no_boards(monkeypatch):
    """A 404 comes from something else at that address: waiting would not change it."""
    import requests

    class NotFound:
        status_code = 404

        def raise_for_status(self):
            raise requests.HTTPError("404 Client Error: Not Found", response=self)

    calls = []
    monkeypatch.setattr(requests, "get", lambda url, timeout: calls.append(url) or NotFound())
    result = CliRunner().invoke(status_command, ["--url", "http://127.0.0.1:9", "--wait", "30"])
    assert isinstance(result.exception, CeilError) and len(calls) == 1


def test_rendered_configs_agree_on_address_and_port(tmp_path):
    cluster = cluster_from()
    router = render(cluster, "router", tmp_path)
    node = render(cluster, "three", tmp_path)
    config = json.loads((router / "etc/status-board/config.json").read_text())
    assert (config["bind"], config["port"]) == ("10.42.0.1", 8081)
    assert config["nodes"] == ["one", "two", "three", "four"]
    assert (node / "etc/status-report/url").read_text().strip() == "http://10.42.0.1:8081/api/status/three"


def test_the_router_holds_the_key_and_each_node_only_its_own_token(tmp_path):
    """A node added later gets a token the board already accepts: no new router card."""
    from ceil.hooks.status_board import secret_files
    from ceil.secrets import SecretStore

    cluster = cluster_from()
    store = SecretStore(tmp_path / "secrets")
    key = secret_files(cluster, "router", store)["status-board/key"].strip()
    for node in ("one", "three"):
        token = secret_files(cluster, node, store)["status-report/token"].strip()
        assert token == report_token(key, node) and key not in token
    assert "status-board/key" not in secret_files(cluster, "one", store)


# ---- nodes baked after the router (issue 19) -------------------------------------------------


def register(url: str, node: str, ip: str, mac: str, token: str | None = None) -> requests.Response:
    body = json.dumps({"ip": ip, "mac": mac}).encode()
    return signed_post(url, f"/api/register/{node}", body, token if token is not None else report_token(KEY, node))


def test_a_node_baked_after_the_router_registers_and_then_reports(board):
    url, state = board
    assert report(url, "five", {"chrony": {"state": "done"}}).status_code == 404  # not registered yet
    answer = register(url, "five", "10.42.0.15", "dc:a6:32:00:00:05")
    assert answer.status_code == 200, answer.text
    entry = json.loads((state / "registered/five.json").read_text())
    assert (entry["ip"], entry["mac"], entry["hostname"]) == ("10.42.0.15", "dc:a6:32:00:00:05", "ceil-five")
    assert entry["names"] == ["ceil-five.ceil.internal", "five.ceil.internal"]
    assert report(url, "five", {"chrony": {"state": "done"}}).status_code == 200
    hosts = {h["name"]: h for h in requests.get(f"{url}/api/status", timeout=5).json()["hosts"]}
    assert hosts["five"]["hostname"] == "ceil-five" and hosts["five"]["state"] == "done"
    # A replacement card under the same name (another MAC) takes the entry over.
    assert register(url, "five", "10.42.0.15", "dc:a6:32:00:00:55").status_code == 200
    assert json.loads((state / "registered/five.json").read_text())["mac"] == "dc:a6:32:00:00:55"


@pytest.mark.parametrize("node,ip,mac,code,why", [
    ("five", "10.42.0.1", "dc:a6:32:00:00:05", 409, "the router's address"),
    ("five", "10.42.0.150", "dc:a6:32:00:00:05", 409, "DHCP pool"),
    ("five", "10.42.0.245", "dc:a6:32:00:00:05", 409, "load-balancer range"),
    ("five", "192.168.1.5", "dc:a6:32:00:00:05", 409, "not a host address of the cluster LAN"),
    ("five", "10.42.0.255", "dc:a6:32:00:00:05", 409, "not a host address"),
    ("five", "10.42.0.11", "dc:a6:32:00:00:05", 409, "belongs to one"),
    ("five", "10.42.0.15", "dc:a6:32:00:00:02", 409, "belongs to two"),
    ("five", "10.42.0.15", "01:00:5e:00:00:01", 400, "unicast"),
    ("five", "10.42.0.15", "dc:a6:32:00:00:05\n", 400, "unicast"),
    ("five", "10.42.0.15\nx", "dc:a6:32:00:00:05", 400, "not an IPv4 address"),
    ("two", "10.42.0.13", "dc:a6:32:00:00:02", 409, "reserved at 10.42.0.12 by the router's own card"),
])
def test_registration_keeps_to_the_lans_plan(board, node, ip, mac, code, why):
    url, state = board
    answer = register(url, node, ip, mac)
    assert answer.status_code == code and why in answer.json()["error"], answer.text
    assert not (state / "registered" / f"{node}.json").exists()


def test_registration_needs_the_nodes_own_token(board):
    url, state = board
    for token in ("", report_token(KEY, "one"), report_token("ab" * 32, "five")):
        assert register(url, "five", "10.42.0.15", "dc:a6:32:00:00:05", token=token).status_code == 401
    assert register(url, "router", "10.42.0.15", "dc:a6:32:00:00:05").status_code == 404
    assert not (state / "registered").exists()
    # A second node may not take the first one's address.
    assert register(url, "five", "10.42.0.15", "dc:a6:32:00:00:05").status_code == 200
    assert "belongs to five" in register(url, "six", "10.42.0.15", "dc:a6:32:00:00:06").text


def test_a_node_the_router_was_baked_with_is_told_so(board):
    url, state = board
    answer = register(url, "one", "10.42.0.11", "dc:a6:32:00:00:01")
    assert answer.status_code == 200 and "reserved by the router's own card" in answer.text
    assert not (state / "registered").exists()


LAN_HOSTS = REPO / "firstboot/dnsmasq/lib/ceil-lan-hosts"


def run_lan_hosts(config: Path, registered: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CEIL_REGISTERED_DIR": str(registered), "CEIL_LAN_HOSTS_DIR": str(out),
           "PATH": f"{out.parent / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, str(LAN_HOSTS), str(config)], capture_output=True, text=True, env=env,
                          timeout=30)


def test_lan_hosts_turns_registrations_into_dnsmasq_entries_and_drops_the_rest(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lan": {"cidr": "10.42.0.0/24"}, "reserved": {"one": {"ip": "10.42.0.11"}}}))
    reg, out = tmp_path / "registered", tmp_path / "lan-hosts"
    reg.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'hup'}\n")
    (tmp_path / "bin/systemctl").chmod(0o755)
    good = {"ip": "10.42.0.15", "mac": "dc:a6:32:00:00:05", "hostname": "ceil-five",
            "names": ["ceil-five.ceil.internal", "five.ceil.internal"]}
    (reg / "five.json").write_text(json.dumps(good))
    (reg / "six.json").write_text(json.dumps({**good, "ip": "10.42.0.16", "names": ["x\n10.0.0.1 evil"]}))
    (reg / "seven.json").write_text(json.dumps({**good, "ip": "192.168.0.7"}))
    (reg / "one.json").write_text(json.dumps({**good, "ip": "10.42.0.11"}))  # baked: the router's own card
    done = run_lan_hosts(config, reg, out)
    assert done.returncode == 0, done.stderr
    assert (out / "dhcp/five").read_text() == "dc:a6:32:00:00:05,ceil-five,10.42.0.15,12h\n"
    assert (out / "dns/five").read_text() == "10.42.0.15 ceil-five.ceil.internal five.ceil.internal\n"
    assert sorted(p.name for p in (out / "dhcp").iterdir()) == ["five"]
    assert "skipping six.json: bad names" in done.stderr and "skipping seven.json: bad ip" in done.stderr
    (reg / "five.json").unlink()  # `bake.py node remove five`
    assert run_lan_hosts(config, reg, out).returncode == 0
    assert not list((out / "dhcp").iterdir()) and not list((out / "dns").iterdir())
    # The unit's reload job, queued behind a start in progress; `systemctl kill --signal=HUP`
    # also signalled dnsmasq's start helper and failed a start running at that moment (CI, stop 33).
    assert (tmp_path / "hup").read_text() == "--no-block try-reload-or-restart dnsmasq.service\n"


def test_a_slow_board_gets_time_to_answer_an_unreachable_one_fails_fast(monkeypatch):
    """Run e2e23: a router just back from a power cut answered after more than 5 s, the old
    timeout, and the user saw an error. The answer gets 20 s; the connection still 5."""
    import requests

    seen = {}

    class Answer:
        def raise_for_status(self):
            pass

        def json(self):
            return {"hosts": []}

    monkeypatch.setattr(requests, "get", lambda url, timeout: seen.update(timeout=timeout) or Answer())
    assert fetch_status("http://10.42.0.1:8081/api/status") == {"hosts": []}
    assert seen["timeout"] == (5.0, 20.0)
    fetch_status("http://10.42.0.1:8081/api/status", timeout=2)
    assert seen["timeout"] == (2, 2)


@contextmanager
def answering(body: bytes):
    """Something at the board's address that answers every GET with `body` (a LAN host can)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/status"
    finally:
        server.shutdown()


def test_a_malformed_board_answer_is_a_message_not_a_traceback():
    """Issue 18: `bake.py status` reads the board over plain HTTP; an age that is a string, lists
    that are not lists, or hosts that are not objects crashed it (TypeError, AttributeError)."""
    odd = {"cluster": "x", "hosts": [{"name": "one", "age": "soon", "failed": "k3s", "busy": 3, "state": ["?"],
                                      "done": "a", "total": None}, {"name": "two", "age": 1e400}]}
    with answering(json.dumps(odd).encode().replace(b"Infinity", b"1e400")) as url:
        result = CliRunner().invoke(status_command, ["--url", url], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "one" in result.output and "never" in result.output
    with answering(json.dumps({"hosts": ["one", 2]}).encode()) as url:
        result = CliRunner().invoke(status_command, ["--url", url])
    assert isinstance(result.exception, CeilError) and "not a ceil status board" in str(result.exception)
