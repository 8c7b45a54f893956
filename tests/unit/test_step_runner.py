"""The first-boot step runner (firstboot/common/lib/ceil-step), run for real on a scratch state
directory: done-markers, retries, permanent failure, and parallel steps sharing status.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "firstboot" / "common" / "lib" / "ceil-step"


@pytest.fixture
def runner(tmp_path):
    """The runner with its state directory moved into tmp_path (the script's only constant)."""
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "ceil-step"
    script.write_text(RUNNER.read_text().replace('STATE = "/var/lib/ceil"', f'STATE = "{state}"'))

    def run(name, *cmd, env=None):
        return subprocess.run([sys.executable, str(script), name, *cmd], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=120)

    return run, state


def test_success_writes_marker_and_is_not_repeated(runner, tmp_path):
    run, state = runner
    counter = tmp_path / "count"
    cmd = ["sh", "-c", f"echo x >> {counter}"]
    assert run("demo", *cmd).returncode == 0
    assert (state / "done" / "demo").is_file()
    assert run("demo", *cmd).returncode == 0
    assert counter.read_text().count("x") == 1  # a re-run after success does nothing
    assert json.loads((state / "status.json").read_text())["steps"]["demo"]["state"] == "done"


def test_permanent_failure_exits_3_without_marker(runner):
    run, state = runner
    r = run("bad", "sh", "-c", "exit 3")
    assert r.returncode == 3 and "FAILED" in r.stderr
    assert not (state / "done" / "bad").exists()
    assert json.loads((state / "status.json").read_text())["steps"]["bad"]["state"] == "failed"


def test_transient_failure_is_retried(runner, tmp_path, monkeypatch):
    run, state = runner
    flag = tmp_path / "flag"
    # fails once, then succeeds; the runner's first backoff is 5 s
    cmd = ["sh", "-c", f"if [ -f {flag} ]; then exit 0; else touch {flag}; exit 1; fi"]
    r = run("flaky", *cmd)
    assert r.returncode == 0 and "retrying" in r.stderr
    assert (state / "done" / "flaky").is_file()


def test_backoff_doubles_from_5_s_and_is_capped_at_a_minute(runner, tmp_path):
    run, state = runner
    script = state.parent / "ceil-step"
    script.write_text(script.read_text().replace("time.sleep(delay)", "pass  # (test: no waiting)"))
    count = tmp_path / "count"
    # fails 7 times, then succeeds
    cmd = ["sh", "-c", f"echo x >> {count}; [ $(wc -l < {count}) -gt 7 ]"]
    r = run("slow-router", *cmd)
    assert r.returncode == 0, r.stderr
    waits = [int(line.rsplit(" ", 1)[1].rstrip("s")) for line in r.stderr.splitlines() if "retrying in" in line]
    assert waits == [5, 10, 20, 40, 60, 60, 60]


def test_parallel_steps_keep_every_state(runner):
    """Steps start together at first boot: status.json must hold all of them (a race here once
    crashed a router's firewall step in the QEMU suite)."""
    run_one, state = runner
    script = state.parent / "ceil-step"
    procs = [subprocess.Popen([sys.executable, str(script), f"s{i}", "true"]) for i in range(12)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    steps = json.loads((state / "status.json").read_text())["steps"]
    assert sorted(steps) == sorted(f"s{i}" for i in range(12))
    assert all(v["state"] == "done" for v in steps.values())


def test_each_step_records_when_it_ran_in_seconds_since_power_on(runner):
    """The first-boot profile: start and end in CLOCK_BOOTTIME seconds, immune to the clock step
    a Pi's stale clock gets from chrony; a retried step keeps its first start."""
    import time

    run, state = runner
    assert run("slow", "sh", "-c", "sleep 1.2").returncode == 0
    entry = json.loads((state / "status.json").read_text())["steps"]["slow"]
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert entry["started"] <= entry["finished"] <= now + 0.1
    assert entry["finished"] - entry["started"] >= 1.1
    assert len(entry["boot"]) == 8
    assert run("bad", "sh", "-c", "exit 3").returncode == 3
    failed = json.loads((state / "status.json").read_text())["steps"]["bad"]
    assert failed["state"] == "failed" and failed["finished"] >= failed["started"]


def test_why_a_step_waits_is_shown_while_it_retries_and_kept_once_done(runner, tmp_path):
    """A command says why an attempt failed in $CEIL_STEP_WHY; status.json shows it while the step
    retries, and keeps each distinct reason (not the journal, which a power cut truncates)."""
    run, state = runner
    script = state.parent / "ceil-step"
    script.write_text(script.read_text().replace("time.sleep(delay)", "pass  # (test: no waiting)"))
    count = tmp_path / "count"
    seen = tmp_path / "seen"
    # attempts 1-2: the clock; 3: no reason; 4: the network; 5: succeeds. Each attempt also
    # copies what status.json said during it (the previous attempt's record).
    cmd = ["sh", "-c", f"""cat {state}/status.json >> {seen}; echo >> {seen}; echo x >> {count}; n=$(wc -l < {count})
case $n in 1|2) echo 'waiting for network time' > "$CEIL_STEP_WHY"; exit 1 ;;
  3) exit 1 ;; 4) printf 'no route\\033[2J to the router\\nsecond line\\n' > "$CEIL_STEP_WHY"; exit 1 ;; esac"""]
    r = run("packages", *cmd)
    assert r.returncode == 0, r.stderr
    assert "attempt 1 failed (exit 1: waiting for network time), retrying" in r.stderr
    records = [json.loads(chunk)["steps"]["packages"] for chunk in seen.read_text().split("\n}\n") if chunk.strip()
               for chunk in [chunk + "}"]]
    assert records[1]["state"] == "running" and records[1]["waited"] == ["waiting for network time"]
    final = json.loads((state / "status.json").read_text())["steps"]["packages"]
    # one line, control characters dropped; the repeated reason kept once
    assert final["state"] == "done" and "why" not in final
    assert final["waited"] == ["waiting for network time", "no route[2J to the router"]


def test_a_retrying_step_records_its_reason_and_a_later_boot_keeps_the_history(runner, tmp_path):
    run, state = runner
    fail = ["sh", "-c", 'echo "the router is not answering" > "$CEIL_STEP_WHY"; exit 3']
    assert run("join", *fail).returncode == 3
    entry = json.loads((state / "status.json").read_text())["steps"]["join"]
    assert entry["state"] == "failed" and entry["why"] == "the router is not answering"
    # the next boot's run (after a power cut, say) starts from what the card kept
    assert run("join", "true").returncode == 0
    entry = json.loads((state / "status.json").read_text())["steps"]["join"]
    assert entry["state"] == "done" and entry["waited"] == ["the router is not answering"]
