"""`bake.py k3s upgrade`: bring every node's running k3s to kubernetes.k3s_version, one node at a
time, without re-flashing (issue 19, day two).

The new version is the one cluster.yaml names, so a card re-flashed later is baked with it (and
`secrets/nodes/<name>.k3s-version` refuses an older one). Its binary comes from the
workstation's release files (~/.cache/ceil/k3s/<version>/, as for a bake) and is checked there
against the digest ceil ships for that release (or kubernetes.k3s_sha256); that digest travels with the command over SSH
and the node checks the bytes it received against it, so nothing on the LAN (the router's plain
HTTP cache included) can slip in another binary.

Servers go first, then agents (k3s's own upgrade order), each: drained (unless --no-drain),
binary swapped with the previous one kept, service restarted; if the service does not come back
the node puts the previous binary back itself. Then Ready with the new kubelet, and uncordoned;
an agent not Ready in time gets its previous binary back too (a server does not: its datastore
may already be migrated). Before any of it, every node's
running version is read: a downgrade or a skipped minor version is refused, nothing changed.
The router's cache gets the release too, so a re-flashed node finds it on the LAN.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from ..catalog import load_flavor
from ..compat import minor, node_baked, version_key
from ..config import Cluster
from ..errors import CeilError
from .cache import CACHE_ROOT_ON_ROUTER, workstation_cache
from .digests import PIN_HINT, expected_digest
from .release import ASSETS, verified_release_files

BIN = "/usr/local/bin/k3s"
SERVICE = {"server": "k3s", "agent": "k3s-agent"}
# How long a node's k3s may take to report ready after the restart (a Pi 3's server: minutes).
RESTART_WAIT_S = 600
READY_POLL_S = 5


@dataclass(frozen=True)
class Release:
    version: str
    binary: Path
    digest: str
    files: dict[str, Path]  # every verified release file, for the router's cache


def release_for(cluster: Cluster) -> Release:
    arch = load_flavor(cluster.flavor).arch
    version = cluster.kubernetes.k3s_version
    digest = expected_digest(cluster, arch)  # a release ceil cannot vouch for is refused first
    source = workstation_cache(version)
    files = verified_release_files(cluster, arch, source)
    name = ASSETS[arch]["binary"]
    if name not in files:
        raise CeilError(
            f"no k3s {version} for {arch} on this workstation: put the release's {name} and"
            f" {ASSETS[arch]['sums']} in {source} (from https://github.com/k3s-io/k3s/releases/tag/"
            f"{version.replace('+', '%2B')}), then run this again")
    return Release(version, files[name], digest, files)


def service_of(node) -> str:
    return SERVICE["server" if node.role == "server" else "agent"]


def upgrade_order(cluster: Cluster) -> list[str]:
    """Servers first, then agents, each in cluster.yaml's order."""
    return ([n.name for n in cluster.nodes if n.role == "server"]
            + [n.name for n in cluster.nodes if n.role != "server"])


def swap_script(service: str, digest: str, wait_s: int = RESTART_WAIT_S, bin_path: str = BIN) -> str:
    """Run as root on the node with the new binary on stdin. Exit 0: running the new binary
    (prints its version); 3: the bytes were not the vouched-for binary, nothing changed; 4: the
    service did not come back, the previous binary is back in place."""
    return f"""set -eu
bin={bin_path}; svc={service}
cat > "$bin.new"
if ! echo "{digest}  $bin.new" | sha256sum -c --status -; then
  rm -f "$bin.new"
  echo "the binary received is not the one with sha256 {digest}: nothing changed" >&2
  exit 3
fi
chmod 0755 "$bin.new"
cp -p "$bin" "$bin.prev"
mv -f "$bin.new" "$bin"
if timeout {wait_s} systemctl restart "$svc" && systemctl is-active --quiet "$svc"; then
  "$bin" --version | head -n 1
  exit 0
fi
echo "$svc did not come back with the new binary; the previous one is back in place. Its log:" >&2
journalctl -u "$svc" -n 20 --no-pager >&2 || true
mv -f "$bin.prev" "$bin"
systemctl restart "$svc" || true
exit 4
"""


def rollback_script(service: str, bin_path: str = BIN) -> str:
    """Run as root on the node whose new k3s runs but never became Ready: the previous binary
    (kept by swap_script) back in place and the service restarted with it."""
    return (f"set -eu; test -x {bin_path}.prev; mv -f {bin_path}.prev {bin_path};"
            f" systemctl restart {service}; {bin_path} --version | head -n 1")


def cache_script(version: str, name: str) -> str:
    """Run as root on the router with a release file on stdin: it joins the router's k3s cache."""
    d = f"{CACHE_ROOT_ON_ROUTER}/k3s/{version}"
    return (f"set -eu; install -d -m 0755 {shlex.quote(d)}; cat > {shlex.quote(d + '/' + name + '.new')};"
            f" chmod 0644 {shlex.quote(d + '/' + name + '.new')}; mv -f {shlex.quote(d + '/' + name + '.new')}"
            f" {shlex.quote(d + '/' + name)}")


def as_root(script: str) -> str:
    return f"sudo sh -c {shlex.quote(script)}"


def parse_version(output: str) -> str | None:
    """`k3s --version`'s first line: "k3s version v1.35.3+k3s1 (abc123)"."""
    m = re.search(r"k3s version (v\S+)", output)
    return m.group(1) if m else None


class Remote:
    """SSH to the cluster's machines as `bake.py ssh` does (pinned host keys, --via jumps)."""

    def __init__(self, cluster: Cluster, via: str | None):
        self.cluster, self.via = cluster, via

    def run(self, name: str, command: str, stdin: Path | None = None, timeout: float = 120) -> tuple[int, str, str]:
        from ..workstation import ssh_argv

        argv = ssh_argv(self.cluster, name, self.via, (command,), ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15"))
        try:
            if stdin is None:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            else:
                with stdin.open("rb") as f:
                    done = subprocess.run(argv, stdin=f, capture_output=True, timeout=timeout)
                done = subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(errors="replace"),
                                                   done.stderr.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            return 124, "", f"no answer from {name} within {timeout:.0f} s"
        return done.returncode, done.stdout, done.stderr


def node_state(node: dict) -> tuple[str, bool]:
    """A Node object's kubelet version (k3s reports its own there) and whether it is Ready."""
    status = node.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    return status.get("nodeInfo", {}).get("kubeletVersion", ""), ready


def not_ready_reason(node: dict) -> str:
    """What the Node's Ready condition says, for a message."""
    ready = next((c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), None)
    if ready is None:
        return "no Ready condition yet"
    said = ": ".join(x for x in (ready.get("reason"), ready.get("message")) if x)
    return f"Ready={ready.get('status', '?')}{f', {said}' if said else ''}"


def check_every_node_ready(cluster: Cluster, api) -> None:
    """Refused before anything changes while a node is not Ready: its own upgrade could not be
    judged (it would never turn Ready with the new kubelet, so an agent is rolled back and a
    server left cordoned), and draining the others would leave their pods one node fewer to go
    to. Every such node is named at once, with the ways out."""
    problems = []
    for name in upgrade_order(cluster):
        node_name = cluster.hostname(name)
        node = api.get("v1", "Node", node_name)
        if node is None:
            problems.append(f"{name}: the cluster has no Node {node_name} (it never joined, or was removed);"
                            f" `bake.py status` shows its first boot")
        elif not node_state(node)[1]:
            problems.append(f"{name}: Node {node_name} is not Ready ({not_ready_reason(node)}); see why with"
                            f" `bake.py ssh {name}`, then `journalctl -u {service_of(cluster.node(name))}`")
    if problems:
        raise CeilError("nothing was changed: every node must be Ready before its k3s is swapped; bring these"
                        " back (or take one out for good: `bake.py node remove NAME`, then remove it from"
                        " cluster.yaml), then run the upgrade again:\n  " + "\n  ".join(problems))


def wait_ready(api, node_name: str, version: str, timeout: float = RESTART_WAIT_S, poll: float = 5) -> None:
    """Until the Node is Ready with the new kubelet (k3s reports its own version there)."""
    deadline = time.monotonic() + timeout
    seen = "not found"
    while time.monotonic() < deadline:
        try:
            node = api.get("v1", "Node", node_name)
        except Exception as e:  # a restarting (only) server: its API is away for a while
            node, seen = None, f"API: {e}"
        if node:
            kubelet, ready = node_state(node)
            seen = f"kubelet {kubelet or '?'}, {'Ready' if ready else 'not Ready'}"
            if ready and kubelet == version:
                return
        time.sleep(poll)
    raise CeilError(f"Node {node_name} is not Ready with kubelet {version} after {timeout:.0f} s ({seen})")


def uncordon(api, node_name: str, timeout: float | None = None, poll: float | None = None) -> str | None:
    """Give the node its pods back; None once done, else what stood in the way. A server's k3s has
    just restarted (the new one, or the previous put back): the cluster's API may answer only
    later, so an error the API calls passing (no answer, a reset connection) is retried; any other
    answer is final. Either way a failed uncordon must not hide what happened to the node (run
    ci-art83: the roll-back's restart)."""
    from ..addons.job.kube import ApiError

    timeout = RESTART_WAIT_S if timeout is None else timeout
    poll = READY_POLL_S if poll is None else poll
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.merge_patch("v1", "Node", node_name, {"spec": {"unschedulable": False}})
            return None
        except (ApiError, OSError) as e:
            if isinstance(e, ApiError) and not e.transient:
                return f"{node_name} stays cordoned ({e}): `kubectl uncordon {node_name}`"
            if time.monotonic() >= deadline:
                return (f"{node_name} stays cordoned, the cluster's API did not answer within {timeout:.0f} s"
                        f" ({e}): `kubectl uncordon {node_name}` once it does")
        time.sleep(poll)


def running_version(remote: Remote, name: str) -> str:
    code, out, err = remote.run(name, f"{BIN} --version")
    current = parse_version(out)
    if code != 0 or current is None:
        raise CeilError(f"{name}: cannot read its k3s version ({(err or out).strip() or f'exit {code}'})")
    return current


def step_problem(name: str, current: str, target: str) -> str | None:
    """Why `current` cannot go to `target` in one step, or None. Kubernetes supports no
    downgrade, and upgrades of one minor version at a time (the control plane's skew policy; k3s
    says the same): 1.34 to 1.36 goes through a 1.35 release."""
    if version_key(target) < version_key(current):
        return (f"{name} runs k3s {current}, newer than kubernetes.k3s_version {target}: Kubernetes does"
                f" not support downgrades; set kubernetes.k3s_version to {current} or newer {PIN_HINT}")
    (cur_major, cur_minor), (new_major, new_minor) = minor(current), minor(target)
    if new_major != cur_major or new_minor > cur_minor + 1:
        return (f"{name} runs k3s {current} and kubernetes.k3s_version is {target}: Kubernetes upgrades"
                f" one minor version at a time; set kubernetes.k3s_version to a v{cur_major}.{cur_minor + 1}"
                f" release first {PIN_HINT}, run `bake.py k3s upgrade`, then go on")
    return None


def check_every_step(cluster: Cluster, release: Release, remote: Remote) -> dict[str, str]:
    """Every node's running version, once every node can go to `release` in one step: refused,
    naming every node that cannot, before anything on any machine changes."""
    running = {name: running_version(remote, name) for name in upgrade_order(cluster)}
    problems = [p for name, current in running.items() if (p := step_problem(name, current, release.version))]
    if problems:
        raise CeilError("nothing was changed:\n  " + "\n  ".join(problems))
    return running


def upgrade_node(cluster: Cluster, name: str, release: Release, current: str, remote: Remote, api, log) -> str:
    """One node, running `current` (read and checked by check_every_step), to `release`; returns
    what happened, one line. Raises with the cause otherwise."""
    from ..nodes import drain

    node = cluster.node(name)
    if current == release.version:
        return f"{name}: already at {current}"
    node_name = cluster.hostname(name)
    if api is not None:
        drain(api, node_name, log)
        log(f"{name}: drained")
    service = service_of(node)
    code, out, err = remote.run(name, as_root(swap_script(service, release.digest)), stdin=release.binary,
                                timeout=RESTART_WAIT_S + 180)
    if code != 0:
        # The old k3s runs again: let it take pods back.
        stuck = uncordon(api, node_name) if api is not None and code in (3, 4) else None
        raise CeilError(f"{name}: the upgrade to {release.version} failed (exit {code}), the nodes after it"
                        f" are untouched{f'; {stuck}' if stuck else ''}:\n{(err or out).strip()}")
    now = parse_version(out)
    if now != release.version:
        raise CeilError(f"{name}: after the swap k3s reports {now or out.strip()!r}, not {release.version}")
    if api is not None:
        try:
            wait_ready(api, node_name, release.version, timeout=RESTART_WAIT_S, poll=READY_POLL_S)
        except CeilError as not_ready:
            if node.role == "server":
                # Not rolled back: the new k3s may already have migrated the datastore, which an
                # older k3s refuses to start on (ceil/compat.py). A slow server is left as it is.
                raise CeilError(
                    f"{name}: {not_ready}. A server is not rolled back (the new k3s may have migrated its"
                    f" datastore, which the older one would refuse); it stays cordoned and the nodes after"
                    f" it are untouched. On it: journalctl -u {service}; once it is Ready, `kubectl uncordon"
                    f" {node_name}` and run the upgrade again") from None
            # An agent's k3s runs but the node never became Ready with it: the previous k3s goes
            # back, and the node gets its pods back, as when the service does not start at all.
            code, out, err = remote.run(name, as_root(rollback_script(service)), timeout=RESTART_WAIT_S)
            back = (f"{current} is back in place" if code == 0 and parse_version(out) == current
                    else f"putting {current} back failed too ({(err or out).strip() or f'exit {code}'}):"
                         f" on {name}, run: {as_root(rollback_script(service))}")
            stuck = uncordon(api, node_name)
            raise CeilError(f"{name}: the upgrade to {release.version} failed ({not_ready}); {back};"
                            f" the nodes after it are untouched{f'; {stuck}' if stuck else ''}") from None
        if stuck := uncordon(api, node_name):
            raise UpgradedButCordoned(f"{name}: upgraded to {now} and Ready, but {stuck}; the nodes after it are"
                                      " untouched")
    return f"{name}: {current} -> {now}"


class UpgradedButCordoned(CeilError):
    """The node runs the new k3s (so a re-flash must not go below it), but its pods did not come back."""


def fill_router_cache(release: Release, remote: Remote) -> None:
    for asset, path in release.files.items():
        code, out, err = remote.run("router", as_root(cache_script(release.version, asset)), stdin=path, timeout=600)
        if code != 0:
            raise CeilError(f"router: could not add {asset} to its k3s cache: {(err or out).strip()}")


def upgrade(cluster: Cluster, store, release: Release, remote: Remote, api, log) -> list[str]:
    """Every node in upgrade_order; stops at the first failure (the ones before it stay upgraded,
    which k3s's version skew allows: servers first). A node that cannot take the release in one
    step (a downgrade, a skipped minor version), or (with the API) one that is not Ready, is found
    before anything changes."""
    if api is not None:  # first: a node switched off is named as such, not by its SSH timeout
        check_every_node_ready(cluster, api)
    running = check_every_step(cluster, release, remote)
    fill_router_cache(release, remote)
    log(f"router: k3s {release.version} in its cache for re-flashed nodes")
    done = []
    for name in upgrade_order(cluster):
        try:
            line = upgrade_node(cluster, name, release, running[name], remote, api, log)
        except UpgradedButCordoned:
            node_baked(store, name, release.version)
            raise
        node_baked(store, name, release.version)  # a re-flash must not go below it
        log(line)
        done.append(line)
    return done
