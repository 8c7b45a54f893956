"""Issue 19, day two: a node added to cluster.yaml after the cluster booted joins it, and
`bake.py node remove` takes it out again, from the workstation through the VPN.

The user's steps: add `three` to cluster.yaml, `python bake.py --role three` (same secrets/, the
router's card untouched), flash, power on. Its first boot registers it with the router (its
reservation and names), fetches k3s from the router's cache and joins with the baked agent token:
here the nodes run the test bed's k3s stand-in (upstream Kubernetes from ceil's files,
docs/testing.md), so "joins" means its kubelet is a Ready Node of the running API server. Then the
card dies (the guest is stopped) and `bake.py node remove three` leaves no Node, no lease, no
status-board entry or registration, and no name served by the router; a replacement card (another
board, so another MAC) baked under the same name rejoins at the same address.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
from ceil_infra.helpers import or_none, resolves, wait_for

from ceil.config import load_cluster
from ceil.nodes import LEASES, STATUS_BOARD_DIR, router_cleanup_command
from ceil_e2e import session
from ceil_e2e.workstation import Agent

pytestmark = [pytest.mark.e2e, pytest.mark.full]

NAME, IP = "three", "10.42.0.13"


def test_a_node_added_later_joins_the_running_cluster_and_node_remove_takes_it_out(router, nodes, cluster, tmp_path):
    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    hostname = cluster.hostname(NAME)
    agent = Agent(tmp_path, c.key)
    added, config = False, None
    try:
        _, config = c.add_node(NAME, IP)
        added = True
        c.wait_ready(NAME)
        client.up()
        ws = client.link
        bake = agent.bake_py()
        secrets = str(c.workdir / "secrets")
        kubeconfig = tmp_path / "kubeconfig"
        ws.run(*bake, "kubeconfig", "--config", str(config), "--secrets", secrets, "--out", str(kubeconfig))

        def kubectl(*args: str) -> str:
            return ws.run("kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=30s", *args)

        def ready() -> str | None:
            out = kubectl("get", "node", hostname, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
                          " {.status.addresses[?(@.type=='InternalIP')].address}")
            return out if out.split()[:1] == ["True"] else None

        state = wait_for(f"{hostname} Ready", lambda: or_none(ready), timeout=900, every=10)
        assert state.split() == ["True", IP], state

        # The card dies; the user takes the node out of the cluster.
        c.machines[NAME].guest.stop()
        done = subprocess.run(["ip", "netns", "exec", ws.ns, *bake, "node", "remove", "--config", str(config),
                               "--secrets", secrets, "--yes", NAME], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Node {hostname}: deleted" in done.stdout, done.stdout
        nodes_left = kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        assert hostname not in nodes_left and len(nodes_left) == len(cluster.nodes), nodes_left
        with router.sudo():
            assert not router.file(f"{STATUS_BOARD_DIR}/{NAME}.json").exists
            assert not router.file(f"{STATUS_BOARD_DIR}/registered/{NAME}.json").exists
            leases = router.run(f"cat {shlex.quote(LEASES)}").stdout
        assert f" {IP} " not in leases and f" {hostname} " not in leases, leases  # its pool lease too
        # The router stops serving its name once the registration is gone (ceil-lan-hosts.path).
        fqdn = f"{NAME}.{c.config.get('domain', 'ceil.internal')}"
        wait_for(f"{fqdn} no longer served by the router", lambda: not resolves(nodes["two"], fqdn),
                 timeout=120, every=5)

        # A replacement card under the same name (baked again, another board: another MAC)
        # registers, takes the reservation over and joins as the same Node name.
        new = c.replace_card(NAME)
        c.wait_ready(NAME)
        state = wait_for(f"{hostname} Ready again", lambda: or_none(ready), timeout=900, every=10)
        assert state.split() == ["True", IP], state
        with router.sudo():
            reservation = router.file(f"/var/lib/ceil/lan-hosts/dhcp/{NAME}").content_string
        assert reservation == f"{new.guest.macs['lan']},{hostname},{IP},12h\n", reservation
    finally:
        client.close()
        agent.close()
        if added:
            c.forget_node(NAME)
            # Whatever happened above, the later checks must not find three on the board, in the
            # router's DHCP and names, or as a NotReady Node (run ci-art56: the status board's
            # check failed after this test had).
            router.run(router_cleanup_command(load_cluster(config), NAME))
            nodes[cluster.server.name].run(f"sudo k3s kubectl delete node {shlex.quote(hostname)}"
                                           " --ignore-not-found --request-timeout=60s")
