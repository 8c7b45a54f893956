"""`bake.py route` and `bake.py ssh` (issue 19): the commands they run, recorded (macOS cannot run
here; the route itself is proven in test_trusted_networks_netns.py with the real ruleset)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from click.testing import CliRunner

from ceil import tools, workstation
from ceil.config import parse_cluster
from ceil.errors import CeilError
from ceil.secrets import SecretStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
CLUSTER = f"""ssh: {{authorized_keys: ["{KEY}"], user: pi-admin}}
router: {{uplink: {{type: ethernet}}, trusted_networks: [192.168.1.0/24]}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}, {{name: two, ip: 10.42.0.12}}]
"""


def test_route_command_per_platform():
    assert workstation.route_command_for("linux", "10.42.0.0/24", "192.168.1.50") == [
        "ip", "route", "replace", "10.42.0.0/24", "via", "192.168.1.50"]
    assert workstation.route_command_for("darwin", "10.42.0.0/24", "192.168.1.50") == [
        "route", "-n", "add", "-net", "10.42.0.0/24", "192.168.1.50"]
    with pytest.raises(CeilError, match="by hand"):
        workstation.route_command_for("win32", "10.42.0.0/24", "192.168.1.50")


def test_macos_route_that_exists_is_changed(monkeypatch):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if "add" in cmd else 0, "", "route: writing to routing socket: File exists")

    monkeypatch.setattr(workstation.os, "geteuid", lambda: 1000)
    workstation.add_route(workstation.route_command_for("darwin", "10.42.0.0/24", "192.168.1.50"), run)
    assert calls == [["sudo", "route", "-n", "add", "-net", "10.42.0.0/24", "192.168.1.50"],
                     ["sudo", "route", "-n", "change", "-net", "10.42.0.0/24", "192.168.1.50"]]


def test_linux_route_failure_names_the_command(monkeypatch):
    monkeypatch.setattr(workstation.os, "geteuid", lambda: 0)
    run = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 2, "", "RTNETLINK answers: Network is unreachable")  # noqa: E731
    with pytest.raises(CeilError, match="ip route replace 10.42.0.0/24 via 192.168.1.50 failed: RTNETLINK"):
        workstation.add_route(workstation.route_command_for("linux", "10.42.0.0/24", "192.168.1.50"), run)


@pytest.mark.parametrize("euid, missing", [(0, "ip"), (1000, "sudo")])
def test_a_route_command_this_machine_lacks_is_named_not_a_traceback(tmp_path, monkeypatch, euid, missing):
    """`route --add` on a machine without `ip` (a minimal container) or, as a user, without sudo
    ended in a FileNotFoundError traceback."""
    monkeypatch.setattr(workstation.os, "geteuid", lambda: euid)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CeilError, match=rf"^{missing} not found on this workstation: cannot run"
                                        r" .*ip route replace 10.42.0.0/24 via 192.168.1.50"):
        workstation.add_route(workstation.route_command_for("linux", "10.42.0.0/24", "192.168.1.50"))


def test_the_workstation_gets_the_clusters_fixed_names_in_a_marked_hosts_block():
    """Not the router's DNS, which answers only the LAN and the VPN (run ci-art35), nor
    systemd-resolved's per-interface setting, which replaces the interface's own servers."""
    cluster = parse_cluster(CLUSTER)
    block = workstation.hosts_block(cluster).splitlines()
    assert block[0].startswith("# ceil cluster ceil: written by") and block[-1] == "# ceil cluster ceil (end)"
    assert "10.42.0.1 ceil-router.ceil.internal router.ceil.internal" in block
    assert "10.42.0.11 ceil-one.ceil.internal one.ceil.internal" in block
    ingress = [line for line in block if line.startswith(f"{cluster.network.ingress_ip} ")]
    assert ingress and "grafana.ceil.internal" in ingress[0]
    # Written again: the old block replaced, the user's own lines kept, in place.
    mine = "127.0.0.1 localhost\n192.168.1.5 nas\n"
    once = workstation.with_hosts_block(mine, cluster)
    assert once.startswith(mine) and once.count("(begin)") == 1
    moved = parse_cluster(CLUSTER.replace("ip: 10.42.0.12", "ip: 10.42.0.22"))
    twice = workstation.with_hosts_block(once + "10.0.0.9 printer\n", moved)
    assert twice.count("(begin)") == 1 and "10.42.0.12" not in twice and "10.42.0.22 ceil-two" in twice
    assert "192.168.1.5 nas" in twice and "10.0.0.9 printer" in twice


@pytest.mark.parametrize("platform", ["linux", "darwin"])
@pytest.mark.parametrize("apply", [False, True])
def test_route_with_dns_routes_then_writes_the_hosts_block_in_one_rename(tmp_path, monkeypatch, apply, platform):
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    monkeypatch.setattr(workstation, "HOSTS_FILE", hosts)
    calls = []
    real_run = subprocess.run

    def run(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["sh", "-c"]:  # the hosts write, run for real on the scratch file
            return real_run(cmd, **kw)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(workstation.subprocess, "run", run)
    monkeypatch.setattr(workstation.sys, "platform", platform)
    monkeypatch.setattr(workstation.os, "geteuid", lambda: 0)
    args = ["--config", str(tmp_path / "cluster.yaml"), "--via", "192.168.1.50", "--dns"] + (["--add"] if apply else [])
    result = CliRunner().invoke(workstation.route_command, args)
    assert result.exit_code == 0, result.output
    if apply:
        assert calls[0] == {"linux": ["ip", "route", "replace", "10.42.0.0/24", "via", "192.168.1.50"],
                            "darwin": ["route", "-n", "add", "-net", "10.42.0.0/24", "192.168.1.50"]}[platform]
        text = hosts.read_text()
        assert text.startswith("127.0.0.1 localhost\n") and "10.42.0.11 ceil-one.ceil.internal" in text
        assert (hosts.stat().st_mode & 0o777) == 0o644 and not list(tmp_path.glob("hosts.ceil-tmp"))
        assert not any(c[0] == "resolvectl" for c in calls)
    else:
        assert calls == [] and hosts.read_text() == "127.0.0.1 localhost\n"
        assert "10.42.0.11 ceil-one.ceil.internal one.ceil.internal" in result.output


def test_router_address_from_mdns_then_dns_else_a_clear_error():
    cluster = parse_cluster(CLUSTER)
    asked = []

    def resolve(name):
        asked.append(name)
        raise OSError("not found")

    with pytest.raises(CeilError, match="--via ADDRESS"):
        workstation.router_address(cluster, None, resolve)
    assert asked == ["ceil-router.local", "ceil-router"]
    assert workstation.router_address(cluster, None, lambda n: "192.168.1.50") == "192.168.1.50"
    assert workstation.router_address(cluster, "192.168.1.9", resolve) == "192.168.1.9"


def test_route_prints_the_command_and_warns_without_trusted_networks(tmp_path, monkeypatch):
    monkeypatch.setattr(workstation.sys, "platform", "linux")
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    args = ["--config", str(tmp_path / "cluster.yaml"), "--via", "192.168.1.50"]
    result = CliRunner().invoke(workstation.route_command, args)
    assert result.exit_code == 0 and result.output == "sudo ip route replace 10.42.0.0/24 via 192.168.1.50\n"
    (tmp_path / "cluster.yaml").write_text(CLUSTER.replace(", trusted_networks: [192.168.1.0/24]", ""))
    result = CliRunner().invoke(workstation.route_command, args)
    assert "router.trusted_networks is empty" in result.output


def pinned(name: str, known_hosts) -> list[str]:
    return ["-o", f"HostKeyAlias=ceil-{name}", "-o", f'UserKnownHostsFile="{known_hosts}"',
            "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no"]


@pytest.fixture
def known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "known_hosts-ceil"


def test_ssh_reaches_the_router_and_the_nodes_directly_or_through_the_router(tmp_path, monkeypatch, known_hosts):
    cluster = parse_cluster(CLUSTER)
    assert workstation.ssh_argv(cluster, "router", None) == ["ssh", *pinned("router", known_hosts), "pi-admin@10.42.0.1"]
    assert workstation.ssh_argv(cluster, "two", None, ("uptime",)) == [
        "ssh", *pinned("two", known_hosts), "pi-admin@10.42.0.12", "uptime"]
    hop = shlex.join(["ssh", *pinned("router", known_hosts), "-W", "%h:%p", "pi-admin@192.168.1.50"])
    assert workstation.ssh_argv(cluster, "one", "192.168.1.50") == [
        "ssh", *pinned("one", known_hosts), "-o", f"ProxyCommand={hop}", "pi-admin@10.42.0.11"]
    assert workstation.ssh_argv(cluster, "router", "192.168.1.50") == [
        "ssh", *pinned("router", known_hosts), "pi-admin@192.168.1.50"]
    assert known_hosts.parent.is_dir(), "ssh cannot record a first key in a missing folder"
    execs = []
    monkeypatch.setattr(workstation, "run_ssh_attached", lambda argv, what: execs.append(argv) or 0)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(workstation.ssh_command, ["--config", str(tmp_path / "cluster.yaml"), "one", "--", "df", "-h"])
    assert result.exit_code == 0, result.output
    assert execs == [["ssh", *pinned("one", known_hosts), *workstation.CONNECT_OPTIONS, "pi-admin@10.42.0.11",
                      "df", "-h"]]
    result = CliRunner().invoke(workstation.ssh_command, ["--config", str(tmp_path / "cluster.yaml"), "nine"])
    assert result.exit_code != 0 and "not in the cluster" in str(result.exception)


def test_pinning_a_host_key_replaces_only_that_machines_lines(known_hosts):
    """A key recorded on first contact (ssh files it under the alias; under [alias]:port it would
    be with a port other than 22) is replaced by the baked key, the other machines' lines and
    comments stay, and pinning the same key again writes nothing."""
    assert workstation.pin_host_key(known_hosts, "one", "ssh-ed25519 AAAAbaked") == "new"
    assert known_hosts.read_text() == "ceil-one ssh-ed25519 AAAAbaked\n"
    known_hosts.write_text("ceil-router ssh-ed25519 AAAArouter\n"
                           "ceil-one ssh-ed25519 AAAAone\n"
                           "[ceil-one]:2222 ecdsa-sha2-nistp256 AAAAone2\n"
                           "ceil-one1 ssh-ed25519 AAAAother\n"
                           "# ceil-one a comment stays\n")
    assert workstation.pin_host_key(known_hosts, "one", "ssh-ed25519 AAAAbaked root@ceil-one") == "changed"
    assert known_hosts.read_text() == ("ceil-router ssh-ed25519 AAAArouter\n"
                                       "ceil-one1 ssh-ed25519 AAAAother\n"
                                       "# ceil-one a comment stays\n"
                                       "ceil-one ssh-ed25519 AAAAbaked\n")
    mtime = known_hosts.stat().st_mtime_ns
    assert workstation.pin_host_key(known_hosts, "one", "ssh-ed25519 AAAAbaked") == "same"
    assert known_hosts.stat().st_mtime_ns == mtime
    # A last line without its newline (edited by hand) is not joined to the new entry.
    known_hosts.write_text("ceil-router ssh-ed25519 AAAArouter")
    assert workstation.pin_host_key(known_hosts, "two", "ssh-ed25519 AAAAtwo") == "new"
    assert known_hosts.read_text() == "ceil-router ssh-ed25519 AAAArouter\nceil-two ssh-ed25519 AAAAtwo\n"
    assert sorted(p.name for p in known_hosts.parent.iterdir()) == [known_hosts.name]  # no temp file left


def test_ssh_and_run_check_even_a_first_contact_against_the_keys_in_secrets(tmp_path, monkeypatch, known_hosts):
    """A new workstation cache (or an emptied one) with the cluster's secrets/: `ssh` and `run`
    file every baked host key before connecting, so ssh's accept-new records nothing on trust:
    a machine answering with another key is refused. A machine secrets/ holds no key of (a card
    baked before ceil made host keys) is left to first contact."""
    from ceil.host_keys import host_key, public_line

    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    store = SecretStore(tmp_path / "secrets")
    keys = {name: public_line(host_key(store, name)) for name in ("router", "two")}
    monkeypatch.setattr(workstation, "run_ssh_attached", lambda argv, what: 0)
    result = CliRunner().invoke(workstation.ssh_command, ["--config", str(tmp_path / "cluster.yaml"), "one"])
    assert result.exit_code == 0, result.output
    assert sorted(known_hosts.read_text().splitlines()) == [f"ceil-router {keys['router']}", f"ceil-two {keys['two']}"]
    # --secrets names another folder; a folder that is not there pins nothing and refuses nothing.
    known_hosts.unlink()
    other = SecretStore(tmp_path / "elsewhere")
    mine = public_line(host_key(other, "one"))
    monkeypatch.setattr(workstation.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, "", ""))
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"),
                                                          "--secrets", str(tmp_path / "elsewhere"), "true"])
    assert result.exit_code == 0, result.output
    assert known_hosts.read_text() == f"ceil-one {mine}\n"
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"),
                                                          "--secrets", str(tmp_path / "nowhere"), "true"])
    assert result.exit_code == 0, result.output
    # One damaged key file: said, that machine left as it is, the others pinned, the command runs.
    (tmp_path / "secrets" / "ssh-host" / "router").write_text("damaged\n")
    known_hosts.unlink()
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "true"])
    assert result.exit_code == 0, result.output
    assert "router's host key not checked against secrets/" in " ".join(result.output.split())
    assert known_hosts.read_text() == f"ceil-two {keys['two']}\n"


def test_run_labels_each_machines_answer_and_fails_when_one_fails(tmp_path, monkeypatch, known_hosts):
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        dest = argv[-2]
        code = 1 if dest.endswith("10.42.0.12") else 0
        return subprocess.CompletedProcess(argv, code, f" 07:00 up 1 day ({dest})\n", "")

    monkeypatch.setattr(workstation.subprocess, "run", fake_run)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "uptime"])
    assert result.exit_code != 0 and "failed on two" in str(result.exception)
    out = result.stdout  # the labels with the answers: `bake.py run uptime > file` keeps both
    assert out.index("router (ceil-router)") < out.index("one (ceil-one)") < out.index("two (ceil-two) exit 1")
    assert "up 1 day (pi-admin@10.42.0.11)" in out
    assert sorted(calls) == sorted([
        ["ssh", *pinned(name, known_hosts), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"pi-admin@{ip}", "uptime"]
        for name, ip in (("router", "10.42.0.1"), ("one", "10.42.0.11"), ("two", "10.42.0.12"))])
    calls.clear()
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "--on", "one",
                                                          "--via", "192.168.1.50", "--", "df", "-h", "/"])
    assert result.exit_code == 0, result.output
    batch = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    hop = shlex.join(["ssh", *pinned("router", known_hosts), *batch, "-W", "%h:%p", "pi-admin@192.168.1.50"])
    assert calls == [["ssh", *pinned("one", known_hosts), *batch, "-o", f"ProxyCommand={hop}",
                      "pi-admin@10.42.0.11", "df -h /"]]
    # --nodes: every node and not the router (make k8s-check-ip); make no longer lists them itself,
    # which put the router in when cluster.yaml could not be read.
    calls.clear()
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "--nodes", "true"])
    assert sorted(argv[-2] for argv in calls) == ["pi-admin@10.42.0.11", "pi-admin@10.42.0.12"]
    assert "router" not in result.stdout
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "--nodes",
                                                          "--on", "one", "true"])
    assert result.exit_code != 0 and "--nodes and --on" in str(result.exception)


def test_run_tells_the_way_in_when_ssh_reached_no_machine(tmp_path, monkeypatch, known_hosts):
    """Against a cluster not reachable from here, `run` said "the command failed on router, one,
    two: see above": ssh's own failures (exit 255), where the command never ran, read as the
    command's, and nothing said what to do."""
    def fake_run(argv, **kw):
        code = 255 if argv[-2].endswith(("10.42.0.1", "10.42.0.12")) else 1
        return subprocess.CompletedProcess(argv, code, "", "ssh: connect to host port 22: Network is unreachable")

    monkeypatch.setattr(workstation.subprocess, "run", fake_run)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(workstation.run_command, ["--config", str(tmp_path / "cluster.yaml"), "uptime"])
    said = str(result.exception)
    assert said.startswith("the command failed on router, one, two: see above; router, two not reached over SSH"
                           " (exit 255"), said
    assert "the VPN, or --via ADDRESS" in said, said


@pytest.mark.parametrize("args", [["ssh", "one"], ["run", "uptime"], ["k8s-proxy"], ["datastore", "backup"],
                                  ["k3s", "reset", "--yes"]])
def test_a_workstation_without_an_ssh_client_is_told_what_to_install(tmp_path, monkeypatch, known_hosts, capsys, args):
    """No `ssh` on PATH (a minimal container, a fresh macOS-less Linux): every command that SSHes
    ended in a FileNotFoundError traceback, from execvp or from subprocess."""
    from ceil.cli import main

    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 1
    assert "ssh not found: it reaches the machines" in " ".join(capsys.readouterr().err.split())


def test_the_missing_ssh_client_is_named_with_its_package(tmp_path, monkeypatch, known_hosts):
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    with pytest.raises(CeilError, match=r"ssh not found: it reaches the machines .*openssh-client"):
        workstation.ssh_argv(parse_cluster(CLUSTER), "one", None)
    with pytest.raises(CeilError, match=r"ssh not found"):
        workstation.tunnel_argv(parse_cluster(CLUSTER), None, 6443)


@pytest.mark.parametrize("command", [["ssh", "one", "--", "true"], ["k8s-proxy", "--port", "16443"]])
def test_ssh_and_the_tunnel_give_up_on_a_silent_cluster_and_say_what_is_missing(tmp_path, command):
    """Issue 19: `bake.py ssh` and `k8s-proxy` waited for the system's TCP timeout (minutes) when
    the cluster's address was silent (no VPN up), then ended with ssh's bare error. Run in a
    network namespace whose cluster LAN routes into a tun device nobody reads."""
    import os
    import shutil
    import sys
    import time
    from pathlib import Path

    if os.geteuid() != 0 or not shutil.which("unshare") or not Path("/dev/net/tun").exists():
        pytest.skip("needs root, unshare and /dev/net/tun")
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    bake = Path(__file__).resolve().parents[2] / "bake.py"
    silent_lan = ("ip link set lo up && ip tuntap add ceiltun0 mode tun && ip addr add 10.42.0.200/24 dev ceiltun0"
                  " && ip link set ceiltun0 up && exec \"$0\" \"$@\"")
    started = time.monotonic()
    done = subprocess.run(["unshare", "-n", "sh", "-c", silent_lan, sys.executable, str(bake), *command[:1],
                           "--config", str(tmp_path / "cluster.yaml"), *command[1:]],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HOME": str(tmp_path)})
    took = time.monotonic() - started
    assert done.returncode == 255, done.stdout + done.stderr
    assert "timed out" in done.stderr and "Your way in" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert took < 30, took


def test_the_attached_ssh_ends_with_bake_py_even_when_it_is_killed_outright():
    """`k8s-proxy` runs ssh as a child (to say what is missing when it cannot connect): killed
    with SIGKILL, bake.py must not leave a tunnel behind."""
    import sys
    import time
    from pathlib import Path

    if sys.platform != "linux":
        pytest.skip("the kernel's parent-death signal is Linux's")
    repo = Path(__file__).resolve().parents[2]
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from ceil import workstation;"
            " workstation.run_ssh_attached(['sleep', '300'], 'test')")
    parent = subprocess.Popen([sys.executable, "-c", code])
    child = None
    for _ in range(100):
        found = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        if found:
            child = int(found[0])
            break
        time.sleep(0.05)
    assert child, "no child started"
    parent.kill()
    parent.wait()

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    for _ in range(100):
        if not running(child):
            break
        time.sleep(0.05)
    assert not running(child), "ssh's stand-in outlived a killed bake.py"


def test_a_child_whose_parent_died_before_it_asked_for_the_parent_death_signal_ends_itself():
    """The window the test above may hit by chance: bake.py killed between ssh's fork and its
    prctl, when the kernel has no parent death left to signal. Here the child is told another
    parent than its own, as it would find itself reparented."""
    import signal
    import sys

    from ceil import workstation

    if sys.platform != "linux":
        pytest.skip("the kernel's parent-death signal is Linux's")
    # -1: no process's pid (1 would be this one's parent when pytest runs as a container's init).
    child = subprocess.Popen(["sleep", "30"], preexec_fn=workstation._ending_with(-1))
    try:
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()


def test_the_attached_ssh_stopped_by_a_signal_is_not_told_as_a_missing_way_in():
    """Review: a tunnel stopped with `kill` (passed on to ssh, which then exits 255) said "could not
    connect ... needs a way to the cluster LAN"; and a child killed by a signal gave exit 241."""
    import signal
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    stand_in = "trap 'exit 255' TERM; sleep 30 & wait"
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from ceil import workstation;"
            f" sys.exit(workstation.run_ssh_attached(['sh', '-c', {stand_in!r}], 'k8s-proxy'))")
    parent = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=30)
    assert parent.returncode == 255 and "Your way in" not in err, err
    from ceil import workstation

    assert workstation.run_ssh_attached(["sh", "-c", "kill -TERM $$"], "x") == 128 + signal.SIGTERM


def test_a_router_baked_with_no_way_in_but_ssh_is_warned_about(tmp_path):
    """README walkthrough: the quick start baked the router before a way in was chosen: VPN on,
    no client, no trusted network; the router answered SSH alone, and nothing said so."""
    store = SecretStore(tmp_path / "secrets")
    bare = parse_cluster(CLUSTER.replace(", trusted_networks: [192.168.1.0/24]", "")
                         + "vpn: {enabled: true, endpoint: vpn.example.com}\n")
    said = workstation.no_way_in_warning(bare, store)
    assert said and "no client yet" in said and "Your way in" in said and "--via" in said
    off = parse_cluster(CLUSTER.replace(", trusted_networks: [192.168.1.0/24]", "") + "vpn: {enabled: false}\n")
    assert "the VPN is off" in workstation.no_way_in_warning(off, store)
    from ceil import wireguard

    wireguard.add_client(bare, store, "laptop")
    assert workstation.no_way_in_warning(bare, store) is None
    assert "the VPN is off" in workstation.no_way_in_warning(off, store)  # its clients are baked into no router
    assert workstation.no_way_in_warning(parse_cluster(CLUSTER), SecretStore(tmp_path / "other")) is None  # trusted
