"""`bake.py k3s upgrade` (issue 19, day two): the node's swap script run for real on a scratch
binary with stand-ins for systemctl and journalctl, and the roll's order, checks and stops
against recorded SSH and a fake API."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from command_stubs import write_stubs

from ceil.addons.job.kube import ApiError
from ceil.config import parse_cluster
from ceil.errors import CeilError, ConfigError
from ceil.k3s import upgrade as up
from ceil.secrets import SecretStore

OLD, NEW = "v1.35.3+k3s1", "v1.35.4+k3s1"


def k3s_script(version: str) -> bytes:
    return f'#!/bin/sh\necho "k3s version {version} (0123abcd)"\necho "go version go1.26"\n'.encode()


@pytest.fixture
def node(tmp_path):
    bin_path = tmp_path / "k3s"
    bin_path.write_bytes(k3s_script(OLD))
    bin_path.chmod(0o755)
    log = tmp_path / "calls.log"
    write_stubs(tmp_path / "stubs", log, ["systemctl", "journalctl"])
    return bin_path, log, tmp_path


def swap(node, new: bytes, digest: str, systemctl_rc: int = 0) -> subprocess.CompletedProcess:
    bin_path, _, tmp = node
    script = up.swap_script("k3s-agent", digest, wait_s=5, bin_path=str(bin_path))
    env = {"PATH": f"{tmp / 'stubs'}:/usr/bin:/bin", "STUB_SYSTEMCTL_RC": str(systemctl_rc),
           "STUB_JOURNALCTL_OUT": "k3s-agent: fatal: the new k3s says no"}
    return subprocess.run(["sh", "-c", script], input=new, capture_output=True, env=env, timeout=30)


def test_the_node_swaps_in_the_vouched_binary_and_keeps_the_previous(node):
    bin_path, log, _ = node
    new = k3s_script(NEW)
    done = swap(node, new, hashlib.sha256(new).hexdigest())
    assert done.returncode == 0, done.stderr
    assert up.parse_version(done.stdout.decode()) == NEW
    assert bin_path.read_bytes() == new and (bin_path.stat().st_mode & 0o777) == 0o755
    assert Path(f"{bin_path}.prev").read_bytes() == k3s_script(OLD)
    assert "systemctl restart k3s-agent" in log.read_text()


def test_bytes_other_than_the_vouched_ones_change_nothing(node):
    bin_path, log, _ = node
    done = swap(node, k3s_script(NEW) + b"# tampered on the way\n", hashlib.sha256(k3s_script(NEW)).hexdigest())
    assert done.returncode == 3 and b"nothing changed" in done.stderr
    assert bin_path.read_bytes() == k3s_script(OLD)
    assert not Path(f"{bin_path}.new").exists() and not log.exists()


def test_a_k3s_that_does_not_come_back_is_rolled_back_on_the_node(node):
    bin_path, log, _ = node
    new = k3s_script(NEW)
    done = swap(node, new, hashlib.sha256(new).hexdigest(), systemctl_rc=1)
    assert done.returncode == 4
    assert b"previous one is back in place" in done.stderr and b"the new k3s says no" in done.stderr
    assert bin_path.read_bytes() == k3s_script(OLD)
    assert log.read_text().count("systemctl restart k3s-agent") == 2  # the new one, then the old one again


CLUSTER = """
flavor: ubuntu-24.04-raspi
ssh: {authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"]}
router: {uplink: {type: ethernet}}
kubernetes: {k3s_version: "%s"}
nodes: [{name: one, role: server}, {name: two}, {name: three}]
"""


class FakeRemote:
    """Answers `k3s --version` per node and the swap with a code; records every call."""

    def __init__(self, versions: dict[str, str], swap_rc: dict[str, int] | None = None):
        self.versions, self.swap_rc, self.calls = versions, swap_rc or {}, []
        self.before = dict(versions)

    def run(self, name, command, stdin=None, timeout=120):
        self.calls.append((name, "swap" if "sha256sum" in command else "cache" if "install -d" in command
                           else "rollback" if ".prev;" in command else "version"))
        if ".prev;" in command:
            self.versions[name] = self.before[name]
            return 0, f"k3s version {self.before[name]} (abc)\n", ""
        if "sha256sum" in command:
            rc = self.swap_rc.get(name, 0)
            if rc == 0:
                self.versions[name] = NEW
                return 0, f"k3s version {NEW} (0123abcd)\n", ""
            return rc, "", "k3s-agent did not come back"
        if "install -d" in command:
            return 0, "", ""
        return 0, f"k3s version {self.versions[name]} (abc)\n", ""


class FakeApi:
    def __init__(self):
        self.unschedulable: dict[str, bool] = {}

    def get(self, version, kind, name, namespace=None):
        return {"status": {"nodeInfo": {"kubeletVersion": NEW},
                           "conditions": [{"type": "Ready", "status": "True"}]}}

    def merge_patch(self, version, kind, name, patch):
        self.unschedulable[name] = patch["spec"]["unschedulable"]

    def list(self, *a, **kw):
        return []


def node_answer(kubelet: str, ready: bool, reason: str = "KubeletReady") -> dict:
    return {"status": {"nodeInfo": {"kubeletVersion": kubelet},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": reason}]}}


class NotReadyOnceSwapped(FakeApi):
    """Every node Ready with the k3s it runs, until its swap: then it reports the new kubelet and
    never turns Ready."""

    def __init__(self, remote: FakeRemote):
        super().__init__()
        self.remote = remote

    def get(self, version, kind, name, namespace=None):
        node = name.removeprefix("ceil-")
        swapped = (node, "swap") in self.remote.calls
        return node_answer(self.remote.versions[node] if not swapped else NEW, ready=not swapped)


def release(tmp_path) -> up.Release:
    binary = tmp_path / "k3s-arm64"
    binary.write_bytes(k3s_script(NEW))
    return up.Release(NEW, binary, hashlib.sha256(binary.read_bytes()).hexdigest(), {"k3s-arm64": binary})


def test_servers_go_first_each_node_is_uncordoned_and_recorded(tmp_path):
    cluster = parse_cluster(CLUSTER % NEW)
    store = SecretStore(tmp_path / "secrets")
    remote, api = FakeRemote({"one": OLD, "two": OLD, "three": NEW}), FakeApi()
    lines = up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert lines == [f"one: {OLD} -> {NEW}", f"two: {OLD} -> {NEW}", f"three: already at {NEW}"]
    assert [c for c in remote.calls if c[1] == "swap"] == [("one", "swap"), ("two", "swap")]
    # Every node's version is read before the router's cache or any node changes.
    assert remote.calls[:4] == [("one", "version"), ("two", "version"), ("three", "version"), ("router", "cache")]
    assert api.unschedulable == {"ceil-one": False, "ceil-two": False}
    assert all(store.read(f"nodes/{n}.k3s-version").decode().strip() == NEW for n in ("one", "two", "three"))


def test_a_failed_node_stops_the_roll_and_is_given_back_its_pods(tmp_path):
    cluster = parse_cluster(CLUSTER % NEW)
    store = SecretStore(tmp_path / "secrets")
    remote, api = FakeRemote({"one": OLD, "two": OLD, "three": OLD}, swap_rc={"two": 4}), FakeApi()
    with pytest.raises(CeilError, match=r"two: the upgrade to .* failed \(exit 4\), the nodes after it are untouched"):
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert ("three", "swap") not in remote.calls
    assert api.unschedulable == {"ceil-one": False, "ceil-two": False}
    assert not store.exists("nodes/two.k3s-version")


def test_a_downgrade_is_refused_before_anything_changes(tmp_path):
    cluster = parse_cluster(CLUSTER % OLD)
    remote, api = FakeRemote({"one": NEW, "two": NEW, "three": NEW}), FakeApi()
    rel = up.Release(OLD, release(tmp_path).binary, "0" * 64, {})
    with pytest.raises(CeilError, match="does not support downgrades"):
        up.upgrade(cluster, SecretStore(tmp_path / "secrets"), rel, remote, api, log=lambda m: None)
    assert {c[1] for c in remote.calls} == {"version"} and api.unschedulable == {}


def test_a_skipped_minor_version_is_refused_for_every_node_before_anything_changes(tmp_path):
    """1.34 to 1.36 in one step is not an upgrade Kubernetes supports: through a 1.35 first."""
    cluster = parse_cluster(CLUSTER % "v1.36.1+k3s1")
    remote, api = FakeRemote({"one": "v1.34.6+k3s1", "two": "v1.35.4+k3s1", "three": "v1.34.6+k3s1"}), FakeApi()
    rel = up.Release("v1.36.1+k3s1", release(tmp_path).binary, "0" * 64, {"k3s-arm64": release(tmp_path).binary})
    with pytest.raises(CeilError) as e:
        up.upgrade(cluster, SecretStore(tmp_path / "secrets"), rel, remote, api, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("nothing was changed") and "one minor version at a time" in msg
    assert "one runs k3s v1.34.6+k3s1" in msg and "three runs k3s v1.34.6+k3s1" in msg and "two runs" not in msg
    assert "set kubernetes.k3s_version to a v1.35 release first" in msg
    assert {c[1] for c in remote.calls} == {"version"} and api.unschedulable == {}


def test_an_agent_not_ready_with_the_new_kubelet_gets_its_previous_k3s_back(tmp_path, monkeypatch):
    """The new k3s starts, but the node never reports Ready with it: the previous binary goes back
    (kept by the swap as k3s.prev), the node is uncordoned, and the roll stops there."""
    monkeypatch.setattr(up, "RESTART_WAIT_S", 0.05)
    monkeypatch.setattr(up, "READY_POLL_S", 0.01)

    cluster = parse_cluster(CLUSTER % NEW)
    store = SecretStore(tmp_path / "secrets")
    # The server (one) is already at NEW: the agent two is the one that never becomes Ready.
    remote = FakeRemote({"one": NEW, "two": OLD, "three": OLD})
    api = NotReadyOnceSwapped(remote)
    with pytest.raises(CeilError) as e:
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert f"two: the upgrade to {NEW} failed (Node ceil-two is not Ready" in str(e.value)
    assert f"{OLD} is back in place" in str(e.value) and "the nodes after it are untouched" in str(e.value)
    assert [c for c in remote.calls if c[1] in ("swap", "rollback")] == [("two", "swap"), ("two", "rollback")]
    assert remote.versions["two"] == OLD and api.unschedulable == {"ceil-two": False}
    assert not store.exists("nodes/two.k3s-version")


def test_a_server_not_ready_with_the_new_kubelet_is_left_cordoned_not_rolled_back(tmp_path, monkeypatch):
    """The new k3s may have migrated the server's datastore, which the older one would refuse."""
    monkeypatch.setattr(up, "RESTART_WAIT_S", 0.05)
    monkeypatch.setattr(up, "READY_POLL_S", 0.01)

    remote = FakeRemote({"one": OLD, "two": OLD, "three": OLD})
    api = NotReadyOnceSwapped(remote)
    with pytest.raises(CeilError, match="one: Node ceil-one is not Ready .* A server is not rolled back"):
        up.upgrade(parse_cluster(CLUSTER % NEW), SecretStore(tmp_path / "secrets"), release(tmp_path), remote, api,
                   log=lambda m: None)
    assert [c for c in remote.calls if c[1] in ("swap", "rollback")] == [("one", "swap")]
    assert api.unschedulable == {"ceil-one": True}


def test_the_rollback_puts_the_kept_binary_back_and_restarts(node):
    bin_path, log, tmp = node
    Path(f"{bin_path}.prev").write_bytes(k3s_script(OLD))
    Path(f"{bin_path}.prev").chmod(0o755)
    bin_path.write_bytes(k3s_script(NEW))
    env = {"PATH": f"{tmp / 'stubs'}:/usr/bin:/bin", "STUB_SYSTEMCTL_RC": "0"}
    done = subprocess.run(["sh", "-c", up.rollback_script("k3s", str(bin_path))], capture_output=True, text=True,
                          env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert up.parse_version(done.stdout) == OLD and bin_path.read_bytes() == k3s_script(OLD)
    assert "systemctl restart k3s" in log.read_text() and not Path(f"{bin_path}.prev").exists()


def test_without_the_release_files_it_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CEIL_K3S_CACHE", str(tmp_path / "k3s"))
    pinned = parse_cluster(CLUSTER.replace('"%s"}', f'"%s", k3s_sha256: {"a" * 64}}}') % NEW)
    with pytest.raises(CeilError, match=r"put the release's k3s-arm64 and sha256sum-arm64.txt in .*v1.35.4\+k3s1"):
        up.release_for(pinned)


def test_an_upgrade_to_a_release_ceil_has_no_digest_for_is_refused_first(tmp_path, monkeypatch):
    """The digest travels with the command to each node: without one there is nothing to vouch
    for the bytes, whatever the workstation's folder holds."""
    monkeypatch.setenv("CEIL_K3S_CACHE", str(tmp_path / "k3s"))
    with pytest.raises(ConfigError, match=r"kubernetes.k3s_version: 'v1.35.4\+k3s1' has no arm64 digest"):
        up.release_for(parse_cluster(CLUSTER % NEW))


def test_the_ready_wait_outlasts_a_restarting_api():
    """The only server's restart takes the API with it: errors mean "not yet", not failure."""
    calls = []

    class Flaky(FakeApi):
        def get(self, *a, **kw):
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionRefusedError("connection refused")
            return super().get(*a, **kw)

    up.wait_ready(Flaky(), "ceil-one", NEW, timeout=5, poll=0.01)
    assert len(calls) == 3
    with pytest.raises(CeilError, match=r"not Ready with kubelet v9.9.9\+k3s1 .*kubelet v1.35.4\+k3s1, Ready"):
        up.wait_ready(FakeApi(), "ceil-one", "v9.9.9+k3s1", timeout=0.05, poll=0.01)


class RestartingApi(FakeApi):
    """A server's API that restarts with the swap: the requests after it fail `failures` times,
    as its connections were cut."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.after_swap = failures, False

    def merge_patch(self, version, kind, name, patch):
        if self.after_swap and self.failures:
            self.failures -= 1
            raise self.error
        super().merge_patch(version, kind, name, patch)

    # What KubeApi raises for a reset connection: an ApiError it marks as passing.
    error = ApiError("PATCH /api/v1/nodes/ceil-one: Connection reset by peer", transient=True)


class SwapRestartsApi(FakeRemote):
    def __init__(self, api: RestartingApi, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.api = api

    def run(self, name, command, stdin=None, timeout=120):
        if "sha256sum" in command:
            self.api.after_swap = True
        return super().run(name, command, stdin, timeout)


def test_a_rolled_back_server_is_uncordoned_once_its_restarted_api_answers(tmp_path, monkeypatch):
    """Run ci-art83 (Pi OS twin): the broken k3s rolled back on the server, whose API came back
    only after its restart; the uncordon right after is retried, and the upgrade's own failure
    (exit 4) is what is reported."""
    slept = []
    monkeypatch.setattr(up.time, "sleep", slept.append)
    cluster = parse_cluster(CLUSTER % NEW)
    store = SecretStore(tmp_path / "secrets")
    api = RestartingApi(failures=3)
    remote = SwapRestartsApi(api, {"one": OLD, "two": OLD, "three": OLD}, swap_rc={"one": 4})
    with pytest.raises(CeilError) as e:
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert "one: the upgrade to" in str(e.value) and "failed (exit 4)" in str(e.value) and "cordoned" not in str(e.value)
    assert api.unschedulable == {"ceil-one": False} and api.failures == 0 and slept == [up.READY_POLL_S] * 3
    # An answer that is final (forbidden) is not waited out: said at once, beside the upgrade's failure.
    api = RestartingApi(failures=1)
    api.error = ApiError("PATCH /api/v1/nodes/ceil-one: HTTP 403: nodes is forbidden", 403)
    remote = SwapRestartsApi(api, {"one": OLD, "two": OLD, "three": OLD}, swap_rc={"one": 4})
    slept.clear()
    with pytest.raises(CeilError) as e:
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert "failed (exit 4)" in str(e.value) and "forbidden" in str(e.value) and not slept
    # An API that never answers: the upgrade's failure is still what is said, with how to finish.
    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(up.time, "monotonic", lambda: next(clock))
    api = RestartingApi(failures=10**9)
    remote = SwapRestartsApi(api, {"one": OLD, "two": OLD, "three": OLD}, swap_rc={"one": 4})
    with pytest.raises(CeilError) as e:
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert "failed (exit 4)" in str(e.value) and "kubectl uncordon ceil-one" in str(e.value)


def test_a_node_upgraded_but_left_cordoned_keeps_its_new_version_on_record(tmp_path, monkeypatch):
    """Its k3s is the new one: a re-flash must not go below it, even though the roll stopped there."""
    monkeypatch.setattr(up.time, "sleep", lambda s: None)
    cluster = parse_cluster(CLUSTER % NEW)
    store = SecretStore(tmp_path / "secrets")
    api = RestartingApi(failures=1)
    api.error = ApiError("PATCH /api/v1/nodes/ceil-one: HTTP 403: nodes is forbidden", 403)
    remote = SwapRestartsApi(api, {"one": OLD, "two": OLD, "three": OLD})
    with pytest.raises(up.UpgradedButCordoned, match="one: upgraded to .* and Ready, but ceil-one stays cordoned"):
        up.upgrade(cluster, store, release(tmp_path), remote, api, log=lambda m: None)
    assert store.read("nodes/one.k3s-version").decode().strip() == NEW
    assert ("two", "swap") not in remote.calls


def test_a_node_not_ready_or_missing_is_refused_before_anything_changes(tmp_path, monkeypatch):
    """Its own upgrade could not be judged, and draining the others leaves their pods one node
    fewer: every such node is named, with the way to look, before the router's cache or any node
    changes."""
    monkeypatch.setattr(up, "RESTART_WAIT_S", 0.05)  # without the check: a short wait, then a roll-back
    monkeypatch.setattr(up, "READY_POLL_S", 0.01)

    class TwoDownThreeGone(FakeApi):
        def get(self, version, kind, name, namespace=None):
            if name == "ceil-three":
                return None
            return node_answer(OLD, ready=name != "ceil-two", reason="NodeStatusUnknown")

    remote, api = FakeRemote({"one": OLD, "two": OLD, "three": OLD}), TwoDownThreeGone()
    with pytest.raises(CeilError) as e:
        up.upgrade(parse_cluster(CLUSTER % NEW), SecretStore(tmp_path / "secrets"), release(tmp_path), remote, api,
                   log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("nothing was changed: every node must be Ready"), msg
    assert "two: Node ceil-two is not Ready (Ready=False, NodeStatusUnknown)" in msg
    assert "`bake.py ssh two`, then `journalctl -u k3s-agent`" in msg
    assert "three: the cluster has no Node ceil-three" in msg and "one:" not in msg
    assert "then remove it from cluster.yaml" in msg
    # Asked first: a node switched off is named by the API, not by an SSH timeout.
    assert remote.calls == [] and api.unschedulable == {}


def test_without_the_api_the_ready_check_is_not_asked(tmp_path):
    """--no-drain (a one-node cluster, or no way to the API): nothing to ask, the swap goes on."""
    remote = FakeRemote({"one": OLD, "two": OLD, "three": OLD})
    lines = up.upgrade(parse_cluster(CLUSTER % NEW), SecretStore(tmp_path / "secrets"), release(tmp_path), remote,
                       None, log=lambda m: None)
    assert lines == [f"{n}: {OLD} -> {NEW}" for n in ("one", "two", "three")]
