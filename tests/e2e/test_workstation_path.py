"""Issue 19: the workstation beside the router's uplink, on a trusted network or through the VPN,
with the README's commands only.

The workstation is the harness's network namespace on the router's uplink segment
(ceil_e2e.vpn_client: 10.0.2.200, which tests/e2e/cluster.yaml names in router.trusted_networks,
as a user names their home LAN). From there: `ceil-router.local` by mDNS, `python bake.py route
--add --via <that address>`, then `python bake.py status` and a node's SSH through the route.
QEMU's forwarded probes come from 10.0.2.2 and stay untrusted (test_router_lan.py checks they
find only SSH).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import pytest
from ceil_infra.helpers import or_none, retry, wait_for

from ceil_e2e import session
from ceil_e2e.vm import UPLINK_GUEST_IP
from ceil_e2e.vpn_client import CLIENT_IP
from ceil_e2e.workstation import Agent
from testbed import helm as helm_build

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELM = helm_build.lookup()  # at import: each test runs with a CEIL_CACHE of its own (tests/conftest.py)
MDNSMINI = (REPO / "tests" / "unit" / "mdnsmini.py").read_text()
DNSMINI = (REPO / "tests" / "unit" / "dnsmini.py").read_text()


# Run e2e24: a TCP connection from the host beside the uplink straight to the router was reset.
# The uplink's NIC shared a QEMU hub with QEMU's user network, which took the router's answers to
# 10.0.2.200 for its own guest's connections and reset them towards the router (libslirp's
# tcp_input, "dropwithreset"); a real home LAN's switch never shows the gateway those frames. The
# harness's uplink guard (ceil_e2e/uplink_guard.py) now stands between the router's NIC and the
# hub, as that switch does; run e2e30 passed all three tests here through it, and the router's
# later reboots kept getting their DHCP lease (run e2e29's learning switch had lost it).


@contextmanager
def vpn_and_agent(c, tmp_path: Path):
    """The README's VPN path as the user has it: `bake.py vpn-client`'s config up with wg-quick in
    the client's namespace, and their ssh-agent holding the key (nothing in ~/.ssh)."""
    agent = Agent(tmp_path, c.key)
    try:
        c.vpn_client.up()
        yield c.vpn_client, agent
    finally:
        c.vpn_client.close()
        agent.close()


def node_names(run, kubeconfig: Path, cluster, path: str) -> set[str]:
    """kubectl's list of Nodes with `kubeconfig`, where `run` runs it, once every node of
    cluster.yaml is in it (a node's kubelet may still be registering)."""
    want = {cluster.hostname(n.name) for n in cluster.nodes}

    def names() -> set[str] | None:
        got = set(run("kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=20s", "get", "nodes",
                      "-o", "jsonpath={.items[*].metadata.name}").split())
        return got if got == want else None

    return wait_for(f"the nodes {sorted(want)} through {path}", lambda: or_none(names), timeout=600, every=5)


def every_machine_done(run, bake: list[str], config_path: Path, nodes) -> dict:
    """`bake.py status --json` run where `run` runs it, asserting every machine is done on the
    board. Retried by its callers: the router may be just back from the power-cut tests, and the
    board hears of a machine's last step a moment after its first boot ends (run ci-art51: two
    still "running" as a test began right after two's ceil-firstboot.target)."""
    board = json.loads(run(*bake, "status", "--config", str(config_path), "--json"))
    states = {h["name"]: h.get("state") for h in board["hosts"]}
    assert all(states.get(n) == "done" for n in ("router", *nodes)), states
    return states


def test_a_workstation_on_a_trusted_network_finds_the_router_routes_and_reads_the_board(nodes, cluster):
    c = session.get()
    side = c.vpn_client
    if side is None:
        pytest.skip("no host beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    if not any(ip_address(CLIENT_IP) in net for net in cluster.router.trusted_networks):
        pytest.skip(f"router.trusted_networks does not hold the uplink-side host {CLIENT_IP}")
    side.create_link()
    ws = side.link
    lan = str(cluster.network.lan_cidr)
    try:
        name = f"{cluster.hostname('router')}.local"
        # avahi may still be probing its name: ask for a while.
        router = ws.run(sys.executable, "-c", MDNSMINI, CLIENT_IP, name, "60").strip()
        assert router != "no answer", f"{name}: no mDNS answer on the uplink segment"
        bake = [sys.executable, str(REPO / "bake.py")]
        out = ws.run(*bake, "route", "--config", str(c.config_path), "--via", router, "--add")
        assert f"routed {lan} via {router}" in out, out
        retry("every machine done on the status board, through the route",
              lambda: every_machine_done(ws.run, bake, c.config_path, nodes), timeout=180)
        server = cluster.server
        # The router's DNS is the LAN's and the VPN's only: a query from the uplink side gets no
        # answer even through the route (dnsmasq's bind-dynamic checks the arriving interface;
        # run ci-art35 found it so), which is why `bake.py route --dns` writes the cluster's names
        # into the workstation's hosts file instead.
        ask = [sys.executable, "-c", DNSMINI, "query", str(cluster.network.router_ip), cluster.fqdn(server.name), "A", "3"]
        assert ws.run(*ask).strip() == "timeout"
        banner = wait_for(f"an SSH banner from {server.name} through the route",
                          lambda: or_none(lambda: ws.tcp_banner(str(server.ip), 22)), timeout=60)
        assert banner.startswith("SSH-2.0")
        # The Kubernetes API too, with `bake.py kubeconfig`'s file as written (the server at its
        # LAN address): the firewall forwards the API port to trusted networks (README, "Your way in").
        kubeconfig = c.workdir / "kubeconfig-route"
        ws.run(*bake, "kubeconfig", "--config", str(c.config_path), "--secrets", str(c.workdir / "secrets"),
               "--out", str(kubeconfig))
        assert node_names(ws.run, kubeconfig, cluster, "the trusted route")
    finally:
        ws.run("ip", "route", "flush", lan)
        side.close()


def test_through_the_vpn_status_and_run_reach_every_machine_with_pinned_host_keys(nodes, cluster, tmp_path):
    """The VPN path with the README's commands: the client config from `bake.py vpn-client` up
    with wg-quick, then `bake.py status` and `bake.py run` as the user's own ssh (key in an agent,
    nothing in ~/.ssh) reach every machine, and their host keys land in the cluster's own
    known_hosts, not the user's; kubectl with `bake.py kubeconfig`'s file lists the nodes."""
    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    with vpn_and_agent(c, tmp_path) as (client, agent):
        bake = agent.bake_py()
        retry("every machine done on the status board, through the tunnel",
              lambda: every_machine_done(client.link.run, bake, c.config_path, nodes), timeout=180)
        out = client.link.run(*bake, "run", "--config", str(c.config_path), "--", "cat", "/etc/hostname")
        for name in ("router", *nodes):
            assert f"{name} ({cluster.hostname(name)})\n  {cluster.hostname(name)}\n" in out, out
        known = (agent.cache / f"known_hosts-{cluster.name}").read_text()
        assert {line.split()[0] for line in known.splitlines()} == {f"ceil-{n}" for n in ("router", *nodes)}
        # The API with `bake.py kubeconfig`'s file as written, the server at its LAN address
        # through the VPN (the test bed's API is the k3s stand-in's upstream kube-apiserver).
        kubeconfig = tmp_path / "kubeconfig"
        client.link.run(*bake, "kubeconfig", "--config", str(c.config_path), "--secrets", str(c.workdir / "secrets"),
                        "--out", str(kubeconfig))
        assert node_names(client.link.run, kubeconfig, cluster, "the VPN")


def test_make_verify_runs_as_the_readme_gives_it_through_the_vpn(nodes, cluster, tmp_path):
    """`make verify` (pytest tests/infra --cluster-config cluster.yaml) from the workstation,
    through the VPN, with the user's agent: until now its checks had only run inside the harness,
    which sets up their SSH targets itself; the verify path's own (the ssh_config it writes, the
    host keys from secrets/, the jump through the router) never ran. The baseline checks, on
    every machine; the boot partition's block scan is left to the harness's run of them."""
    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    with vpn_and_agent(c, tmp_path) as (client, agent):
        verify = [*agent.bake_py()[:-1], "-m", "pytest", str(REPO / "tests" / "infra" / "test_baseline.py"),
                  "--cluster-config", str(c.config_path), "-p", "no:cacheprovider", "-v", "-k", "not blocks"]
        done = subprocess.run(["ip", "netns", "exec", client.link.ns, *verify], cwd=REPO, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        summary = done.stdout.strip().splitlines()[-1]
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|xfailed)\b", summary)}
        assert counts.get("passed") and not (counts.get("failed") or counts.get("error") or counts.get("errors")), summary
        # every machine was checked, by its name in the parametrised ids
        for name in ("router", *nodes):
            assert f"[{name}]" in done.stdout or f"-{name}]" in done.stdout, (name, done.stdout[-3000:])


def test_through_the_vpn_the_datastore_is_backed_up_from_the_server_and_from_the_router(nodes, cluster, tmp_path):
    """`bake.py datastore backup` as the README gives it, through the VPN: from the server while
    it runs, and with --from-router the newest snapshot the router pulled (what is left when the
    server's card is dead). Both land in secrets/backups/, 0600, holding the server's datastore
    (on the test bed, the snapshot the harness staged before the server's bake)."""
    import sqlite3

    from ceil.datastore import check_snapshot

    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    if not cluster.datastore_backups_on:
        pytest.skip("kubernetes.datastore_backups is off, or the cluster runs etcd")
    staged = c.workdir / "datastore-snapshot.db"
    if not staged.is_file():
        pytest.skip("the harness staged no datastore snapshot for the server")
    db = sqlite3.connect(f"file:{staged}?immutable=1", uri=True)
    newest = db.execute("SELECT name FROM kine ORDER BY id DESC LIMIT 1").fetchone()[0]
    db.close()
    # The router's timer may not have come round yet: its unit, as the timer runs it.
    c.ssh.run("router", "sudo systemctl start ceil-datastore-snapshots.service", timeout=300, check=True)
    with vpn_and_agent(c, tmp_path) as (client, agent):
        bake = [*agent.bake_py(), "datastore", "backup", "--config", str(c.config_path)]
        for source in ([], ["--from-router"]):
            out = retry("a datastore backup through the tunnel", lambda: client.link.run(*bake, *source), timeout=180)
            path = Path(out.split()[1])
            assert out.startswith("wrote ") and path.parent.name == "backups", out
            assert path.stat().st_mode & 0o777 == 0o600
            assert check_snapshot(path) > 0
            got = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            assert got.execute("SELECT count(*) FROM kine WHERE name = ?", (newest,)).fetchone()[0] == 1, source
            got.close()


def test_through_the_vpn_an_apps_image_and_chart_go_into_the_routers_registry(nodes, cluster, tmp_path):
    """Issue 20's app delivery from where a user runs it: `bake.py app push` (an OCI archive of
    two platforms, as a CI job builds one) and `bake.py app chart` (the demo chart, linted and
    packaged by the user's helm) from the workstation through the VPN into the router's real
    registry, over TLS with the registry CA and the push account from secrets/; each recorded in
    out/apps/, and pulled back by the recorded digest from a node with that node's own
    read-only account."""
    from ceil_infra.registry import node_pull_account, oci as oci_on_node
    from tests.registry_lab import ci_archive

    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    helm = HELM
    if helm is None:
        pytest.skip("no Helm build (make helm): `app chart` lints and packages the chart with helm")
    index, archive = ci_archive(tmp_path)
    router_ip, reg = cluster.network.router_ip, cluster.registry
    agent = Agent(tmp_path, c.key)
    env, *bake = agent.bake_py()
    app = [env, f"PATH={helm.parent}:/usr/sbin:/usr/bin:/sbin:/bin", *bake, "app", "--config", str(c.config_path),
           "--out", str(tmp_path / "out"), "--registry", f"https://{router_ip}:{reg.push_port}"]
    try:
        client.up()
        retry("a push through the tunnel", lambda: client.link.run(
            *app, "push", str(archive), "--name", "e2e-ws", "--tag", "v1", "--platform", "linux/arm64,linux/amd64"),
              timeout=180)
        client.link.run(*app, "chart", str(REPO / "apps/piphp/chart"), "--name", "e2e-ws")
    finally:
        client.close()
        agent.close()
    state = json.loads((tmp_path / "out/apps/e2e-ws.json").read_text())
    assert state["image_digest"] == index.digest, state
    node = list(nodes.values())[-1]
    pull_url = f"https://{router_ip}:{reg.port}"
    for name, digest, blobs in (("apps/e2e-ws", state["image_digest"], 4),
                                (f"charts/{state['chart_name']}", state["chart_digest"], 2)):
        pulled = oci_on_node(node, "pull", pull_url, name, digest, node_pull_account(node))
        assert pulled.get("digest") == digest and pulled.get("blobs") == blobs, (name, pulled)


def test_where_only_the_routers_ssh_answers_ssh_and_k8s_proxy_go_through_it(nodes, cluster, tmp_path):
    """The third path: no route, no VPN, only the router's SSH on its uplink address.
    `bake.py ssh NAME --via` jumps through it to a node, and `bake.py k8s-proxy --via` forwards
    a local port to the server's API port through it, where `bake.py kubeconfig --tunnel-port`'s
    kubeconfig (the baked CAs, the name 127.0.0.1 in the API's serving certificate) lists the
    nodes with the user's kubectl. The API is the test bed's k3s stand-in (upstream
    kube-apiserver from the baked CA set, docs/testing.md)."""
    c = session.get()
    side = c.vpn_client
    if side is None:
        pytest.skip("no host beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    side.create_link()
    ws = side.link
    agent = Agent(tmp_path, c.key)
    proxy = None
    try:
        bake = agent.bake_py()
        config = ["--config", str(c.config_path)]
        server = cluster.server
        out = ws.run(*bake, "ssh", *config, "--via", UPLINK_GUEST_IP, server.name, "--", "cat", "/etc/hostname")
        assert out.strip() == cluster.hostname(server.name)
        proxy = subprocess.Popen(["ip", "netns", "exec", ws.ns, *bake, "k8s-proxy", *config, "--via", UPLINK_GUEST_IP,
                                  "--port", "16443"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        kubeconfig = tmp_path / "kubeconfig-tunnel"
        ws.run(*bake, "kubeconfig", *config, "--secrets", str(c.workdir / "secrets"), "--tunnel-port", "16443",
               "--out", str(kubeconfig))
        assert node_names(ws.run, kubeconfig, cluster, "the tunnel")
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()  # bake.py passes it on to its ssh
            proxy.wait(timeout=30)
        side.close()
        agent.close()
