"""Issue 5 proof, node preparation and the k3s install. Plain functions of testinfra hosts, so
the same checks run against the QEMU test bed and against real Pis (`make verify`).

Fixtures (tests/infra/conftest.py): `router` (testinfra host), `nodes` (name -> host),
`cluster` (ceil.config.Cluster as baked). The install checks expect the router's k3s cache to
hold the release files the bake found (CEIL_K3S_CACHE / ~/.cache/ceil/k3s/<version>/); in the
test bed that is a stand-in "k3s" whose digest the test cluster.yaml pins.
"""

from __future__ import annotations

import hashlib
import shlex

import pytest

from ceil.k3s.cache import CACHE_ROOT_ON_ROUTER, K3S_CACHE_PORT, cache_url
from ceil.k3s.digests import KNOWN
from ceil.k3s.release import ASSETS
from ceil_infra.helpers import or_none, wait_for

pytestmark = pytest.mark.e2e

def each_node(nodes):
    assert nodes, "the cluster has no nodes"
    return nodes.items()


def test_swap_is_off_and_stays_off(nodes):
    for name, host in each_node(nodes):
        # /proc/swaps: a header line, then one line per active swap area (swapon is in /usr/sbin,
        # outside a normal user's PATH on Debian).
        swaps = host.file("/proc/swaps").content_string.strip().splitlines()[1:]
        assert swaps == [], f"{name}: swap is active: {swaps}"
        for unit in ("dphys-swapfile", "zramswap"):
            svc = host.service(unit)
            assert not svc.is_running, f"{name}: {unit} runs"
        fstab = host.file("/etc/fstab").content_string if host.file("/etc/fstab").exists else ""
        active = [line for line in fstab.splitlines() if line.split()[2:3] == ["swap"]]
        assert active == [], f"{name}: swap still in /etc/fstab: {active}"


def test_kernel_modules_loaded_and_kept(nodes):
    for name, host in each_node(nodes):
        assert host.file("/etc/modules-load.d/ceil-k3s.conf").contains("^br_netfilter")
        for module in ("br_netfilter", "overlay"):
            # /sys/module/<name> exists for loaded modules and for built-in ones alike.
            assert host.file(f"/sys/module/{module}").is_directory, f"{name}: {module} not loaded"


def test_forwarding_and_bridge_sysctls(nodes):
    for name, host in each_node(nodes):
        assert host.sysctl("net.ipv4.ip_forward") == 1, name
        assert host.sysctl("net.bridge.bridge-nf-call-iptables") == 1, name
        assert host.file("/etc/sysctl.d/90-ceil-k3s.conf").exists, name


def test_the_nodes_own_firewall_is_loaded_and_loads_again_at_boot(nodes, cluster):
    """A LAN device shares the nodes' switch, out of the router firewall's sight: each node drops
    what the DHCP pool sends its VXLAN, kubelet, etcd, node-exporter and MetalLB ports, and anything routed into the pod
    and service networks that kube-proxy did not translate (tests/unit/test_node_firewall_netns.py
    shows the attack and the drop)."""
    net, k8s = cluster.network, cluster.kubernetes
    for name, host in each_node(nodes):
        with host.sudo():
            table = host.check_output("nft list table inet ceil_node")
        # (nft lists the pod and service networks merged where they touch, and `! dnat` or
        # `& dnat == 0` by version: the parts are checked, not one spelling)
        pool = f"ip saddr {net.dhcp_start}-{net.dhcp_end}"
        assert f"{pool} udp dport {{ 7946, 8472, 51820-51821 }}" in table, (name, table)
        assert f"{pool} tcp dport {{ 2379-2380, 7472, 7946, 9100, 10250 }}" in table, (name, table)
        routed_in = [line for line in table.splitlines() if f"ip saddr != {k8s.cluster_cidr} ct status" in line]
        assert len(routed_in) == 1 and "dnat" in routed_in[0] and routed_in[0].endswith("drop"), (name, table)
        assert host.service("ceil-node-rules.service").is_enabled, name


def test_clock_synced_from_the_router(nodes, cluster):
    router_ip = str(cluster.network.router_ip)

    def synced(host) -> bool:
        tracking = host.check_output("chronyc -n tracking")
        by_router = f"({router_ip})" in tracking or router_ip in tracking.split("\n")[0]
        return by_router and "Leap status     : Normal" in tracking

    for name, host in each_node(nodes):
        # chrony polls every 64 s at first: a node whose source went away for a moment (the
        # router rebooted, the node's clock jumped) is in sync again within a few polls.
        wait_for(f"{name} to be in sync from the router ({router_ip}; see `chronyc tracking`)",
                 lambda h=host: synced(h), timeout=300, every=10)
        assert host.file("/var/lib/ceil/done/k3s-prep").exists, name


def test_registries_yaml_points_at_the_router(nodes, cluster):
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false: nodes pull directly")
    for name, host in each_node(nodes):
        with host.sudo():
            f = host.file("/etc/rancher/k3s/registries.yaml")
            assert f.exists and f.user == "root" and f.mode == 0o600, name
            assert str(cluster.network.router_ip) in f.content_string, name
            assert "https://" in f.content_string and "http://" not in f.content_string, name
        ca = host.file("/etc/rancher/k3s/registry-ca.crt")
        assert ca.exists and ca.user == "root" and ca.mode == 0o644, name
        assert "BEGIN CERTIFICATE" in ca.content_string, name


def _baked_pin(host) -> str:
    """The k3s digest the node was baked with, read as its k3s-install step reads it (the shell
    sources the file: its quoting is the bake's, which changed over releases)."""
    return host.check_output("sh -c '. /etc/ceil/k3s-install/install.env && printf %s \"$K3S_SHA256\"'")


def _expected_digest(host, cluster) -> str:
    """What the node must run: cluster.yaml's k3s_sha256, else the release's published digest
    (the table ceil ships). The node's own baked pin must be the same (issue 18: every node is
    baked with the digest it checks k3s against)."""
    arch = host.check_output("dpkg --print-architecture")
    expected = cluster.kubernetes.k3s_sha256 or KNOWN.get(cluster.kubernetes.k3s_version, {}).get(arch)
    assert expected, f"k3s {cluster.kubernetes.k3s_version} for {arch}: no k3s_sha256 and no published digest"
    pinned = _baked_pin(host)
    assert pinned == expected, f"baked with k3s digest {pinned!r}, not {expected}"
    return expected


def test_k3s_binary_installed_and_verified(router, nodes, cluster):
    for name, host in each_node(nodes):
        binary = host.file("/usr/local/bin/k3s")
        assert binary.exists and binary.mode == 0o755 and binary.user == "root", name
        assert binary.sha256sum == _expected_digest(host, cluster), name
        assert host.file("/var/lib/ceil/done/k3s-install").exists, name
        # The install step's own record (the journal may be volatile or rotated on a Pi).
        with host.sudo():
            record = host.file("/var/lib/ceil/k3s-install.verified")
            assert record.exists, f"{name}: k3s installed but no record of how it was verified"
            text = record.content_string
        assert binary.sha256sum in text and "verified against" in text, f"{name}: {text}"


def test_router_cache_serves_the_release_files(router, nodes, cluster):
    version_dir = f"{CACHE_ROOT_ON_ROUTER}/k3s/{cluster.kubernetes.k3s_version}"
    if not router.file(version_dir).is_directory:
        pytest.skip(f"the router's cache {version_dir} is empty (the workstation had no release files)")
    assert router.service("ceil-k3s-cache").is_running
    assert router.socket(f"tcp://{cluster.network.router_ip}:{K3S_CACHE_PORT}").is_listening
    name, host = next(iter(each_node(nodes)))
    asset = ASSETS[host.check_output("dpkg --print-architecture")]["binary"]
    served = host.check_output(f"curl -fsS {shlex.quote(cache_url(cluster) + '/' + asset)} | sha256sum")
    assert served.split()[0] == router.file(f"{version_dir}/{asset}").sha256sum


def test_wrong_digest_fails_loudly_and_never_runs_the_file(router, nodes, cluster):
    """Run the node's own install step against the router's cache with a wrong pinned digest,
    in a scratch root: it must exit 1 (transient: the unit retries), name both digests, and
    leave no file behind, executable or not."""
    name, host = next(iter(each_node(nodes)))
    scratch = "/tmp/ceil-k3s-wrong-digest"
    wrong = hashlib.sha256(b"not the k3s you are looking for").hexdigest()
    env = (f"K3S_VERSION='{cluster.kubernetes.k3s_version}'\\nK3S_SHA256='{wrong}'\\n"
           f"K3S_AIRGAP_DIR='{scratch}/none'\\nK3S_CACHE_URL='{cache_url(cluster)}'\\nK3S_UPSTREAM_URL=''\\n")
    with host.sudo():
        host.run(f"rm -rf {scratch} && mkdir -p {scratch}/usr/local/bin && printf \"{env}\" > {scratch}/install.env")
        result = host.run(f"CEIL_ROOT={scratch} CEIL_K3S_INSTALL_ENV={scratch}/install.env"
                          " /usr/local/lib/ceil/steps/k3s-install.sh")
        left = host.check_output(f"ls -A {scratch}/usr/local/bin")
        host.run(f"rm -rf {scratch}")
    if "unavailable" in result.stderr and "MISMATCH" not in result.stderr:
        pytest.skip("the router's cache holds no k3s binary to refuse")
    assert result.rc == 1, result.stderr
    assert "SHA256 MISMATCH" in result.stderr and wrong in result.stderr, result.stderr
    assert left == "", f"{name}: files left behind: {left}"
    show = host.check_output("systemctl show ceil-k3s-install.service -p Restart -p RestartPreventExitStatus")
    assert "Restart=on-failure" in show and "RestartPreventExitStatus=3" in show


def test_a_forged_binary_with_a_matching_sums_file_is_never_installed(nodes, cluster):
    """Issue 18 #1: a LAN host serving a binary and a sums file that matches it. The node's own
    install step, in a scratch root, with the digest the node was baked with: the forged bytes are
    refused, deleted and never run."""
    name, host = next(iter(each_node(nodes)))
    scratch, port = "/tmp/ceil-k3s-forged", 18088
    arch = host.check_output("dpkg --print-architecture")
    asset, sums = ASSETS[arch]["binary"], ASSETS[arch]["sums"]
    version = cluster.kubernetes.k3s_version
    serve = f"{scratch}/www/k3s/{version}"
    pinned = _baked_pin(host)
    assert pinned, f"{name}: baked without a k3s digest"
    env = (f"K3S_VERSION='{version}'\\nK3S_SHA256='{pinned}'\\nK3S_AIRGAP_DIR='{scratch}/none'\\n"
           f"K3S_CACHE_URL='http://127.0.0.1:{port}/k3s/{version}'\\nK3S_UPSTREAM_URL=''\\n")
    with host.sudo():
        host.run(f"rm -rf {scratch} && mkdir -p {shlex.quote(serve)} {scratch}/root/usr/local/bin"
                 f" && printf '#!/bin/sh\\ntouch {scratch}/ran\\n' > {shlex.quote(serve + '/' + asset)}"
                 f" && (cd {shlex.quote(serve)} && sha256sum {asset} > {sums})"
                 f" && printf \"{env}\" > {scratch}/install.env")
        # The LAN host's web server, on the node's loopback (detached: the SSH command returns).
        server = host.run(f"cd {scratch}/www && setsid -f sh -c 'echo $$ > {scratch}/pid;"
                          f" exec python3 -m http.server {port} --bind 127.0.0.1' </dev/null >/dev/null 2>&1;"
                          f" for i in $(seq 20); do curl -fsS -o /dev/null http://127.0.0.1:{port}/ && exit 0; sleep 1; done;"
                          " exit 1")
        assert server.rc == 0, server.stderr
        try:
            result = host.run(f"CEIL_ROOT={scratch}/root CEIL_K3S_INSTALL_ENV={scratch}/install.env"
                              " /usr/local/lib/ceil/steps/k3s-install.sh")
            left = host.check_output(f"ls -A {scratch}/root/usr/local/bin; ls {scratch}/ran 2>/dev/null || true")
        finally:
            host.run(f"kill $(cat {scratch}/pid); rm -rf {scratch}")
    assert result.rc == 1, result.stderr  # transient: the unit retries, the source may be fixed
    assert "SHA256 MISMATCH" in result.stderr and pinned in result.stderr, result.stderr
    assert left == "", f"{name}: {left}"


def test_k3s_configured_per_role(nodes, cluster):
    for name, host in each_node(nodes):
        node = cluster.node(name)
        unit = "k3s.service" if node.role == "server" else "k3s-agent.service"
        with host.sudo():
            config = host.file("/etc/rancher/k3s/config.yaml")
            assert config.mode == 0o600, name
            text = config.content_string
            assert f"node-ip: {node.ip}" in text and f"node-name: {cluster.hostname(name)}" in text
            assert "eviction-hard=memory.available<100Mi" in text, f"{name}: no memory eviction threshold"
            iface = text.split("flannel-iface: ", 1)[1].split()[0]
            assert str(node.ip) in host.interface(iface).addresses, f"{name}: flannel-iface {iface}"
            assert host.file("/etc/rancher/node/password").mode == 0o600, name
        assert host.service(unit).is_enabled, f"{name}: {unit} not enabled"
        show = host.check_output(f"systemctl show {unit} -p Restart -p StartLimitIntervalUSec")
        assert "Restart=always" in show and "StartLimitIntervalUSec=0" in show, f"{name}: {show}"


def test_agents_hold_no_ca_key_and_no_server_token(nodes, cluster):
    for name, host in each_node(nodes):
        if cluster.node(name).role != "agent":
            continue
        with host.sudo():
            keys = host.check_output("find / -xdev -name '*-ca.key' 2>/dev/null || true")
            assert keys == "", f"{name}: CA keys on an agent: {keys}"
            assert not host.file("/etc/ceil/secrets/k3s/token").exists, name
            assert host.file("/etc/ceil/secrets/k3s/agent-token").content_string.startswith("K10"), name


def test_agent_token_pins_the_servers_ca(nodes, cluster):
    server = nodes[cluster.server.name]
    with server.sudo():
        ca_sha = server.file("/var/lib/rancher/k3s/server/tls/server-ca.crt").sha256sum
    for name, host in each_node(nodes):
        if cluster.node(name).role != "agent":
            continue
        with host.sudo():
            token = host.file("/etc/ceil/secrets/k3s/agent-token").content_string.strip()
        assert token.startswith(f"K10{ca_sha}::node:"), f"{name}: token does not pin the server CA"


def test_a_staged_datastore_snapshot_became_the_servers_datastore(nodes, cluster, targets):
    """`bake.py datastore restore` staged a snapshot before the server's bake (the e2e harness does,
    as a user replacing a lost server would): the card carried it off its FAT partition, the
    k3s-server step installed it as k3s's state.db before k3s started, and no copy stayed among
    the server's secrets (the FAT's blocks are scanned by test_baseline.py)."""
    import sqlite3

    staged = targets.secrets_dir / "k3s/restore/state.db" if targets.secrets_dir else None
    if staged is None or not staged.is_file():
        pytest.skip("no datastore snapshot staged in secrets/ (python bake.py datastore restore)")
    db = sqlite3.connect(f"file:{staged}?immutable=1", uri=True)
    newest = db.execute("SELECT name FROM kine ORDER BY id DESC LIMIT 1").fetchone()[0]
    db.close()
    host = nodes[cluster.server.name]
    with host.sudo():
        assert not host.file("/etc/ceil/secrets/k3s/restore/state.db").exists, "the staged copy stayed"
        state = host.file("/var/lib/rancher/k3s/server/db/state.db")
        assert state.exists and state.mode == 0o600, "no state.db from the snapshot"
        found = host.run("python3 -c " + shlex.quote(
            "import sqlite3, sys; db = sqlite3.connect('file:/var/lib/rancher/k3s/server/db/state.db?mode=ro', uri=True);"
            " print(db.execute('SELECT count(*) FROM kine WHERE name = ?', (sys.argv[1],)).fetchone()[0])") + f" {shlex.quote(newest)}")
    assert found.rc == 0 and found.stdout.strip() not in ("", "0"), f"{newest} not in the server's datastore: {found.stderr}"
    # A ConfigMap in it (the e2e harness stages one) is served by the server's API server.
    if newest.startswith("/registry/configmaps/"):
        namespace, name = newest.split("/")[3:5]
        served = wait_for(f"ConfigMap {namespace}/{name} from the API", lambda: or_none(lambda: host.check_output(
            f"sudo k3s kubectl get configmap -n {shlex.quote(namespace)} {shlex.quote(name)} -o name")), 900, 10)
        assert served.strip() == f"configmap/{name}", served


def test_the_router_keeps_snapshots_of_the_servers_datastore(router, nodes, cluster):
    """kubernetes.datastore_backups: the router pulls a snapshot of the one server's datastore
    (ceil/snapshot.py) with a key the server accepts for its snapshot command only. On the QEMU
    test bed the datastore is the snapshot the harness staged; on a Pi, k3s's own."""
    from ceil.datastore import DB_ON_SERVER, PULL_KEY_SECRET, PULL_USER
    from ceil.hooks.datastore_backups import pull_config

    conf = pull_config(cluster)  # on the router's USB drive when there is one, else on its card

    if not cluster.datastore_backups_on:
        pytest.skip("kubernetes.datastore_backups is off, or the cluster runs etcd (three servers)")
    server = cluster.server
    with nodes[server.name].sudo():
        if not nodes[server.name].file(DB_ON_SERVER).exists:
            pytest.skip(f"{server.name} has no k3s datastore yet ({DB_ON_SERVER}): nothing to take")
    with router.sudo():
        # The timer's unit, as the timer runs it: a snapshot now, or none needed (one is recent).
        run = router.run("systemctl start ceil-datastore-snapshots.service")
        journal = router.run("journalctl -u ceil-datastore-snapshots.service --no-pager -o cat").stdout
        assert run.rc == 0, f"ceil-datastore-snapshots.service failed: {run.stderr}\n{journal}"
        assert "ceil-datastore-pull: kept " in journal, f"the unit never kept a snapshot:\n{journal}"
        folder = router.file(conf["dir"])
        assert folder.is_directory and folder.mode == 0o700 and folder.user == "root"
        kept = sorted(n for n in folder.listdir() if n.startswith(f"{server.name}-") and n.endswith(".db"))
        assert kept, f"no snapshot of {server.name} in {conf['dir']}"
        newest = router.file(f"{conf['dir']}/{kept[-1]}")
        assert newest.mode == 0o600 and newest.user == "root"
        if conf["mount"]:
            on = router.check_output(f"findmnt -n -o TARGET --target {newest.path}")
            assert on == conf["mount"], f"{newest.path} is on {on}, not on the router's drive"
        # Checked by the router's own copy of the check the workstation runs (ceil/snapshot.py).
        check = router.run("python3 -c " + shlex.quote(
            "import runpy, sys; print(runpy.run_path('/usr/local/lib/ceil/ceil-datastore-pull')['check'](sys.argv[1]))")
            + f" {shlex.quote(newest.path)}")
        assert check.rc == 0 and int(check.stdout.strip()) > 0, f"{newest.path}: {check.stderr}"
        # The pull key runs the snapshot command whatever it asks for: no shell on the server.
        key = f"/etc/ceil/secrets/{PULL_KEY_SECRET}"
        asked = router.run(f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no"
                           f" -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {PULL_USER}@{server.ip}"
                           " 'id; echo SHELL' | head -c 15")
    assert asked.stdout == "ceil-snapshot 1" and "uid=" not in asked.stdout, (
        f"the pull key reached more than the snapshot command: {asked.stdout!r} {asked.stderr}")
