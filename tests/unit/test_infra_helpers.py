"""ceil_infra.helpers' detached root jobs and block scan, run against this machine through a stand-in host."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

from ceil_infra.helpers import block_scan_command, start_as_root_detached  # noqa: E402


class LocalHost:
    """The two testinfra Host methods the helper uses, on this machine; `sudo` runs as is."""

    def __init__(self, bindir: Path):
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
        self.commands: list[str] = []

    def run(self, command: str):
        self.commands.append(command)
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL)
        done.rc = done.returncode  # testinfra's name for it
        return done

    def run_expect(self, codes, command: str):
        done = self.run(command)
        assert done.rc in codes, done.stderr
        return done


@pytest.fixture
def host(tmp_path):
    if not os.access("/run", os.W_OK):
        pytest.skip("needs a writable /run (the helper's result files live there, as on the machines)")
    sudo = tmp_path / "sudo"
    sudo.write_text('#!/bin/sh\nexec "$@"\n')
    sudo.chmod(0o755)
    return LocalHost(tmp_path)


def test_detached_script_reads_stdin_from_a_private_file_and_leaves_nothing(host, tmp_path):
    haystack = tmp_path / "disk"
    haystack.write_bytes(b"\0" * 4096 + b"xx-s3cret-token-xx" + b"\0" * 4096)
    job = start_as_root_detached(host, f"grep -aoF -f - {haystack}", "a scan", stdin="s3cret-token\nnot-there")
    out = job.result(every=0.1)
    assert out.strip() == "s3cret-token"
    assert not any("s3cret" in c for c in host.commands if "CEIL_EOF" not in c), "secret on a command line"
    assert not list(Path("/run").glob(f"ceil-check-{os.getpid()}-*"))


def test_detached_script_times_out_naming_what_it_waited_for_and_is_stopped(host):
    with pytest.raises(AssertionError, match="a slow scan"):
        start_as_root_detached(host, "sleep 31.5", "a slow scan").result(timeout=1, every=0.1)
    assert subprocess.run(["pgrep", "-f", "sleep 31.5"], capture_output=True).returncode == 1


def test_jobs_started_together_run_at_the_same_time_and_each_gives_its_own_result(host):
    """The boot-partition scans of all machines start at once; each check collects its own."""
    t0 = time.monotonic()
    jobs = [start_as_root_detached(host, f"sleep 2; cat; echo {i}", f"job {i}", stdin=f"in-{i}") for i in range(3)]
    outs = [job.result(timeout=30, every=0.1).split() for job in jobs]
    assert outs == [["in-0", "0"], ["in-1", "1"], ["in-2", "2"]]
    assert time.monotonic() - t0 < 5, "the jobs ran one after the other"
    assert not list(Path("/run").glob(f"ceil-check-{os.getpid()}-*"))


def test_a_job_never_collected_is_stopped_and_removed_by_cancel(host):
    job = start_as_root_detached(host, "sleep 32.5", "an abandoned scan")
    job.cancel()
    job.cancel()  # idempotent: a fixture's teardown may cancel what a check already collected
    # Killed at once, but on a loaded machine the process may take a moment to be gone.
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "sleep 32.5"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the abandoned job still runs 10 s after cancel()"
        time.sleep(0.2)
    assert not list(Path("/run").glob(f"ceil-check-{os.getpid()}-*"))


def test_block_scan_finds_secrets_in_a_mostly_zero_partition_in_little_memory(host, tmp_path):
    """A boot partition is mostly zeros: newline-delimited grep held 300 MB "lines" in memory and
    made 1 GiB guests lock up; the scan splits at NUL bytes instead."""
    disk = tmp_path / "boot.img"
    with open(disk, "wb") as f:
        f.truncate(256 << 20)  # zeros (sparse)
        f.seek(200 << 20)
        f.write(b"\x00\x07deleted-file:s3cret-token-AbC\x00")  # a deleted file's bytes in a free cluster
    (tmp_path / "needles").write_text("s3cret-token-AbC\nnot-there\n")
    measure = ("import resource, subprocess, sys; "
               "out = subprocess.run(['sh', '-c', sys.argv[1]], stdin=open(sys.argv[2]), capture_output=True, text=True).stdout; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(out, end='')")
    done = subprocess.run([sys.executable, "-c", measure, block_scan_command(str(disk)), str(tmp_path / "needles")],
                          capture_output=True, text=True, env=host.env, check=True)
    max_rss_kib, *found = done.stdout.splitlines()
    assert found == ["s3cret-token-AbC"]
    assert int(max_rss_kib) < 64 << 10, f"the scan used {int(max_rss_kib) >> 10} MiB"


def test_the_secrets_cluster_yaml_holds_are_found_wherever_they_are(monkeypatch):
    """The block scan looks for them on the boot partition too: the WiFi passphrase and the DDNS
    token came only from cluster.yaml, never from secrets/, so no scan ever looked for them."""
    from ceil.config import parse_cluster
    from ceil_infra.helpers import cluster_secrets

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
    text = (f"ssh: {{authorized_keys: ['{key}']}}\n"
            "router: {uplink: {type: wifi, wifi: {ssid: Home, psk: '${CEIL_TEST_PSK}', country: DE}}}\n"
            "ddns: {enabled: true, api_token: cf-token-0123456789, zone: example.com, record: vpn.example.com}\n")
    monkeypatch.setenv("CEIL_TEST_PSK", "correct-horse-battery")
    assert sorted(cluster_secrets(parse_cluster(text, "cluster.yaml"))) == ["cf-token-0123456789", "correct-horse-battery"]
    monkeypatch.delenv("CEIL_TEST_PSK")
    unset = parse_cluster(text, "cluster.yaml", env_optional=True)  # as workstation commands load it
    assert cluster_secrets(unset) == ["cf-token-0123456789"]


def test_wait_for_names_what_it_waited_for_and_what_the_parts_said():
    from ceil_infra.helpers import wait_for

    assert wait_for("a value", iter([None, 0, "ready"]).__next__, timeout=5, every=0) == "ready"
    with pytest.raises(AssertionError, match=r"waiting for the sync\nsource-controller: 401") as failed:
        wait_for("the sync", lambda: None, timeout=0, every=0, explain=lambda: "source-controller: 401")
    assert str(failed.value).startswith("timed out after 0s")
