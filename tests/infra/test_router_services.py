"""Issue 4 proof, router services: VPN, dynamic DNS, registries. Plain functions of testinfra hosts.

Fixtures (tests/infra/conftest.py): `router` (testinfra host), `nodes` (name -> host), `cluster`
(ceil.config.Cluster as baked), `fakes` (the local fake internet). From `fakes` these checks use:
  fakes.cloudflare         tests.fakes.cloudflare.FakeCloudflare (ddns.api_url/ip_url point at it)
  fakes.upstream_registry  tests.fakes.registry.FakeUpstreamRegistry (registry.upstream points at it)
  fakes.vpn_client         ceil_e2e.vpn_client.NetnsVpnClient for a client baked into the
                           router (bake.py vpn-client), or None where the harness cannot make one
A check whose fake is missing skips (on a real cluster, `make verify`), saying what it needs.
"""

from __future__ import annotations

import pytest

from ceil.hooks.registry import DRIVE_LABEL, REGISTRY_ROOT, drive_root
from ceil.registry_access import PUSH_USER
from ceil.wireguard import server_address

# Needs a booted cluster; the default unit-test run (-m 'not e2e') leaves these alone.
from ceil_infra.helpers import fake, or_none, wait_for
from ceil_infra.registry import node_pull_account, oci

pytestmark = pytest.mark.e2e



# ---- WireGuard ---------------------------------------------------------------------------


def test_the_status_boards_memory_bound_holds(router):
    """Any LAN host can send the status board requests; MemoryMax= keeps a flood from pushing the
    router into the OOM killer. systemd ignores it where the kernel has no memory cgroup, which is
    a Raspberry Pi kernel's default (the QEMU twins play it): the bake turns it on for the router."""
    wait_for("the status board to run", lambda: router.service("ceil-status-board").is_running, timeout=120)
    limit = router.file("/sys/fs/cgroup/system.slice/ceil-status-board.service/memory.max")
    assert limit.exists, "the status board's cgroup has no memory.max: the router's kernel has no memory cgroup"
    assert limit.content_string.strip() == str(128 * 1024 * 1024)


def test_wireguard_server_is_up_on_the_vpn_port(router, cluster):
    if not cluster.vpn.enabled:
        pytest.skip("vpn.enabled is false")
    assert router.service("wg-quick@wg0").is_enabled
    assert router.service("wg-quick@wg0").is_running
    with router.sudo():
        port = router.check_output("wg show wg0 listen-port")
    assert int(port) == cluster.vpn.port
    assert str(server_address(cluster)) in router.interface("wg0").addresses
    with router.sudo():  # /etc/wireguard is 0700
        assert router.file("/etc/wireguard/wg0.conf").mode == 0o600


def test_vpn_client_handshakes_and_reaches_a_node(router, cluster, fakes):
    client = fake(fakes, "vpn_client")
    client.up()
    try:
        server = cluster.server
        banner = wait_for("an SSH banner from the server node through the tunnel",
                          lambda: or_none(lambda: client.tcp_banner(str(server.ip), 22)), timeout=60)
        assert banner.startswith("SSH-2.0")
        assert client.handshake_seconds() > 0
    finally:
        client.close()


# ---- Dynamic DNS -------------------------------------------------------------------------


def test_ddns_writes_the_record_exactly_once(router, cluster, fakes):
    if not cluster.ddns.enabled:
        pytest.skip("ddns.enabled is false")
    cf = fake(fakes, "cloudflare")
    wait_for("the first DNS update", lambda: cf.writes)
    (write,) = cf.writes
    assert write["body"]["content"] == cf.public_ip and write["body"]["name"] == cluster.ddns.record
    with router.sudo():
        router.check_output("systemctl start ceil-ddns-update.service")
    assert len(cf.writes) == 1, "an unchanged address was written again"


def test_ddns_retries_a_5xx_and_never_logs_the_token(router, cluster, fakes):
    if not cluster.ddns.enabled:
        pytest.skip("ddns.enabled is false")
    cf = fake(fakes, "cloudflare")
    wait_for("the first DNS update", lambda: cf.writes)
    before = len(cf.requests)
    cf.fail_next = 2
    with router.sudo():
        # Forget the cached state so the run has to ask the API (and meet the two 503s).
        router.check_output("rm -f /var/lib/ceil/ddns/state.json")
        router.check_output("systemctl start ceil-ddns-update.service")
        token = router.check_output("cat /etc/ceil/secrets/ddns-token").strip()
        journal = router.check_output("journalctl -u ceil-ddns-update.service -u ceil-ddns.service --no-pager")
    assert sum(r["status"] == 503 for r in cf.requests[before:]) == 2
    assert len(cf.writes) == 1 and "retrying" in journal
    assert token and token not in journal


# ---- Registries --------------------------------------------------------------------------


def push_account(targets) -> tuple[str, str]:
    """The workstation's push account, from the secrets the cluster was baked with."""
    if targets.secrets_dir is None:
        pytest.skip("the workstation's secrets/ folder is not here (CEIL_SECRETS): no push account")
    path = targets.secrets_dir / f"registry/{PUSH_USER}-password"
    if not path.exists():
        pytest.skip(f"{path} is missing: the router was baked before registry accounts existed")
    return PUSH_USER, path.read_text().strip()


def test_registries_listen_on_the_lan_address_only(router, cluster):
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    ip = cluster.network.router_ip
    reg = cluster.registry
    for port in (reg.port, reg.mirror_port, reg.push_port):
        assert router.socket(f"tcp://{ip}:{port}").is_listening
        assert not router.socket(f"tcp://0.0.0.0:{port}").is_listening
    for unit in ("mirror", "private", "push"):
        assert router.service(f"ceil-registry-{unit}").is_running, unit
    assert not router.service("docker-registry").is_running


def test_the_registry_lives_on_the_routers_usb_drive(router, cluster):
    """router.usb_drive: the registry step formatted the drive once (ext4, ceil's label), gave it
    one fstab line by label, and mounted it where the registries and the datastore snapshots
    keep their files; the SD card holds none of them. On the QEMU test bed the drive is a QEMU
    usb-storage thumb drive on xHCI, /dev/sda as on a Pi."""
    mount = drive_root(cluster)
    if mount is None:
        pytest.skip("router.usb_drive is not set (or registry.enabled is false)")
    drive = cluster.router.usb_drive
    with router.sudo():
        assert router.run(f"test -b {drive}").rc == 0, f"{drive} is not a block device on the router"
        label = router.check_output(f"blkid -p -o value -s LABEL {drive}")
        kind = router.check_output(f"blkid -p -o value -s TYPE {drive}")
        assert (label, kind) == (DRIVE_LABEL, "ext4"), f"{drive}: label {label!r}, type {kind!r}"
        # Formatted whole: no partition table left, and no partition the kernel still lists.
        table = router.run(f"blkid -p -o value -s PTTYPE {drive}").stdout.strip()
        parts = router.check_output(f"lsblk -nro NAME {drive}").split()
        assert not table and len(parts) == 1, f"{drive}: partition table {table!r}, devices {parts}"
        source = router.check_output(f"findmnt -n -o SOURCE --mountpoint {mount}")
        assert router.check_output(f"readlink -f {source}") == router.check_output(f"readlink -f {drive}"), (
            f"{mount} is mounted from {source}, not from {drive}")
        lines = [ln for ln in router.file("/etc/fstab").content_string.splitlines()
                 if ln.startswith(f"LABEL={DRIVE_LABEL} ")]
        assert len(lines) == 1 and lines[0].split()[1] == mount, lines
        for kind in ("mirror", "private"):
            where = router.check_output(f"findmnt -n -o TARGET --target {mount}/{kind}")
            assert where == mount, f"{mount}/{kind} is on {where}, not on the drive"
        # udev's answer when the drive appears (also after systemd gave up on it at boot): start
        # the registries, whose RequiresMountsFor= mounts it. udevadm test only simulates the event.
        event = router.check_output(f"udevadm test --action=add $(udevadm info -q path -n {drive}) 2>&1")
        wants = [ln.strip() for ln in event.splitlines() if ln.strip().startswith("SYSTEMD_WANTS=")]
        assert wants and all(f"ceil-registry-{k}.service" in wants[-1] for k in ("mirror", "private", "push")), wants


def test_workstation_pushes_and_nodes_pull_with_their_own_account(nodes, cluster, targets):
    """Issue 18 #3: pushes need the workstation's account; every node pulls with the read-only
    account and CA its registries.yaml names (what containerd uses)."""
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    router_ip, reg = cluster.network.router_ip, cluster.registry
    pusher, puller = list(nodes.values())[0], list(nodes.values())[-1]
    pushed = oci(pusher, "push", f"https://{router_ip}:{reg.push_port}", "ceil/e2e-hello", "v1", push_account(targets))
    assert "digest" in pushed, pushed
    pulled = oci(puller, "pull", f"https://{router_ip}:{reg.port}", "ceil/e2e-hello", "v1", node_pull_account(puller))
    assert pulled.get("digest") == pushed["digest"], pulled


def test_an_app_image_and_its_chart_go_through_the_registry_by_digest(nodes, cluster, targets):
    """Issue 20 #1, what `bake.py app` pushes: a multi-arch FROM-scratch image (an OCI index) and
    a Helm chart as an OCI artifact, pushed with the workstation's account, read back by digest
    from the read-only port with a node's own account (the names containerd and the
    helm-controller's job use), every blob checked against its digest."""
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    router_ip, reg = cluster.network.router_ip, cluster.registry
    pusher, puller = list(nodes.values())[0], list(nodes.values())[-1]
    push_url, pull_url = f"https://{router_ip}:{reg.push_port}", f"https://{router_ip}:{reg.port}"
    for name, sample, blobs in (("apps/e2e-app", "index", 4), ("charts/ceil-hello", "chart", 2)):
        pushed = oci(pusher, "push", push_url, name, "0.1.0", push_account(targets), sample=sample)
        assert "digest" in pushed, (sample, pushed)
        pulled = oci(puller, "pull", pull_url, name, pushed["digest"], node_pull_account(puller))
        assert pulled.get("digest") == pushed["digest"] and pulled.get("blobs") == blobs, (sample, pulled)


def test_a_lan_host_cannot_push_or_pose_as_the_registry(nodes, cluster, targets):
    """From the LAN: no push without the push account (not even with the account every node
    holds), no anonymous pull, and a client that checks certificates against the system's CAs
    (not the registry CA) refuses the router's registry."""
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    router_ip, reg = cluster.network.router_ip, cluster.registry
    node = list(nodes.values())[0]
    real = oci(node, "push", f"https://{router_ip}:{reg.push_port}", "ceil/e2e-app", "v1", push_account(targets))
    assert "digest" in real, real
    pull_account = node_pull_account(node)
    push_url, pull_url = f"https://{router_ip}:{reg.push_port}", f"https://{router_ip}:{reg.port}"
    for url, auth, refusal in ((push_url, None, "HTTP 401"), (push_url, pull_account, "HTTP 401"),
                               (pull_url, pull_account, "HTTP 405"), (pull_url, None, "HTTP 401")):
        forged = oci(node, "push", url, "ceil/e2e-app", "v1", auth)
        assert refusal in forged.get("error", ""), (url, auth and auth[0], forged)
    assert "HTTP 401" in oci(node, "pull", pull_url, "ceil/e2e-app", "v1").get("error", "")
    untrusted = oci(node, "pull", pull_url, "ceil/e2e-app", "v1", pull_account, ca=None)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.get("error", ""), untrusted
    still = oci(node, "pull", pull_url, "ceil/e2e-app", "v1", pull_account)
    assert still.get("digest") == real["digest"], still


def test_second_pull_is_served_from_the_cache(router, nodes, cluster, fakes):
    if not cluster.registry.enabled:
        pytest.skip("registry.enabled is false")
    upstream = fake(fakes, "upstream_registry")
    node = list(nodes.values())[0]
    base = f"https://{cluster.network.router_ip}:{cluster.registry.mirror_port}"
    # without the nodes' account, nothing: anyone on the LAN could fill the router's disk
    assert "HTTP 401" in oci(node, "pull", base, "library/hello", "latest").get("error", "")
    first = oci(node, "pull", base, "library/hello", "latest", node_pull_account(node))
    assert "digest" in first, first
    upstream.wait_idle(quiet_seconds=3)  # the cache stores new blobs in the background
    blob_fetches = upstream.blob_gets
    last = list(nodes.values())[-1]
    second = oci(last, "pull", base, "library/hello", "latest", node_pull_account(last))
    assert second["digest"] == first["digest"]
    assert upstream.blob_gets == blob_fetches, "the second pull went to the upstream for blobs"
    with router.sudo():
        assert router.file(f"{REGISTRY_ROOT}/mirror/docker/registry/v2/blobs").is_directory
