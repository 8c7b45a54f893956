"""ceil-ddns against a local fake Cloudflare API: one write per new address, retries, no token leaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.fakes.cloudflare import FakeCloudflare  # noqa: E402

SCRIPT = REPO / "firstboot/ddns/lib/ceil-ddns"
TOKEN = "cf-SECRET-token-1234567890abcdef"
RECORD = "home.example.com"


@pytest.fixture
def fake():
    with FakeCloudflare(token=TOKEN, zone="example.com", public_ip="203.0.113.7",
                        records={RECORD: "198.51.100.1", "other.example.com": "198.51.100.9"}) as cf:
        yield cf


@pytest.fixture
def config(tmp_path, fake):
    token_file = tmp_path / "ddns-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cfg = {"api_url": fake.api_url, "ip_url": fake.ip_url, "zone": "example.com", "record": RECORD,
           "token_file": str(token_file), "state_file": str(tmp_path / "state/state.json"),
           "attempts": 4, "backoff_seconds": 0.05, "timeout_seconds": 5, "recheck_hours": 6}
    path = tmp_path / "ddns.json"
    path.write_text(json.dumps(cfg))
    return path


def run(config: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert TOKEN not in done.stdout + done.stderr, "the API token leaked into the output"
    return done


def record_content(fake: FakeCloudflare, name: str) -> str:
    return next(r["content"] for r in fake.records.values() if r["name"] == name)


def test_new_address_is_written_exactly_once(fake, config):
    first = run(config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(fake.writes) == 1
    write = fake.writes[0]
    assert write["method"] == "PATCH" and write["body"]["content"] == "203.0.113.7"
    assert record_content(fake, RECORD) == "203.0.113.7"
    assert record_content(fake, "other.example.com") == "198.51.100.9"
    assert "198.51.100.1 -> 203.0.113.7" in first.stdout


def test_unchanged_address_writes_nothing_and_skips_the_api(fake, config):
    run(config)
    before = len(fake.requests)
    second = run(config)
    assert second.returncode == 0 and len(fake.writes) == 1
    # The cached state means only the public-address lookup was made.
    assert [r["path"] for r in fake.requests[before:]] == ["/ip"]


def test_lost_state_rechecks_without_writing(fake, config, tmp_path):
    run(config)
    (tmp_path / "state/state.json").unlink()
    again = run(config)
    assert again.returncode == 0 and "already points" in again.stdout and len(fake.writes) == 1


def test_address_change_is_written_once_more(fake, config):
    run(config)
    fake.public_ip = "203.0.113.99"
    run(config)
    run(config)
    assert [w["body"]["content"] for w in fake.writes] == ["203.0.113.7", "203.0.113.99"]


def test_missing_record_is_created(fake, config):
    fake.records.clear()
    done = run(config)
    assert done.returncode == 0
    assert [w["method"] for w in fake.writes] == ["POST"] and record_content(fake, RECORD) == "203.0.113.7"


def test_5xx_is_retried_with_backoff(fake, config):
    fake.fail_next = 2
    done = run(config)
    assert done.returncode == 0, done.stdout
    assert sum(r["status"] == 503 for r in fake.requests) == 2
    assert "retrying" in done.stdout and len(fake.writes) == 1


def test_persistent_5xx_gives_up_transiently(fake, config):
    fake.fail_next = 100
    done = run(config)
    assert done.returncode == 1 and "gave up after 4 attempts" in done.stdout
    assert not fake.writes


def test_bad_token_is_permanent_and_not_printed(fake, config, tmp_path):
    fake.token = "another-token"
    done = run(config)
    assert done.returncode == 3 and "Authentication error" in done.stdout
    assert sum(r["path"].endswith("/zones") for r in fake.requests) == 1  # a 403 is not retried


def test_unknown_zone_says_what_to_check(fake, config):
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "zone": "example.org", "record": "home.example.org"}))
    done = run(config)
    assert done.returncode == 3 and "zone 'example.org' not found" in done.stdout


def test_garbage_from_ip_url_is_not_published(fake, config):
    fake.public_ip = "<html>captive portal</html>"
    done = run(config)
    assert done.returncode == 1 and not fake.writes


def test_fake_runs_as_a_process_for_the_harness():
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/fakes/cloudflare.py"), "--port", "0",
                             "--record", f"{RECORD}=198.51.100.1"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("fake cloudflare on http://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rendered_config_and_timer_follow_cluster_yaml(tmp_path):
    from ceil.catalog import load_flavor
    from ceil.config import parse_cluster
    from ceil.features import RoleContext, render_features
    from ceil.secrets import SecretStore

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
    cluster = parse_cluster(
        f'ssh: {{authorized_keys: ["{key}"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n'
        "nodes: [{name: one, role: server, ip: 10.42.0.11}]\nvpn: {enabled: false}\n"
        f"ddns: {{enabled: true, api_token: {TOKEN}, zone: example.com, record: {RECORD},"
        " api_url: 'http://10.0.2.100:8053/client/v4', interval_minutes: 7}\n")
    ctx = RoleContext(cluster, "router", load_flavor(cluster.flavor), SecretStore(tmp_path / "s"))
    rendered = render_features(ctx, tmp_path / "payload")
    cfg = json.loads((tmp_path / "payload/etc/ddns.json").read_text())
    assert cfg["api_url"] == "http://10.0.2.100:8053/client/v4" and cfg["record"] == RECORD
    assert cfg["token_file"] == "/etc/ceil/secrets/ddns-token" and TOKEN not in json.dumps(cfg)
    assert "OnUnitActiveSec=7min" in (tmp_path / "payload/units/ceil-ddns-update.timer").read_text()
    assert rendered.secrets["ddns-token"].decode().strip() == TOKEN
    assert "python3" in rendered.packages
