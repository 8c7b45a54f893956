"""Issue 19, day two, last: `bake.py reboot`, `bake.py k3s reset` and `k3s reset --remove` (the
seed's k8s-reset and k8s-remove; `make reboot-all`, `make k8s-reset`, `make teardown`) on the
booted cluster, from the workstation through the VPN with the user's agent.

Runs after every other check (e2e_order 900): the reset empties the cluster they read, and the
removal leaves k3s off. The nodes run the test bed's k3s stand-in under ceil's own units
(docs/testing.md): what is proven is ceil's part (the order, the units, the state deleted, the
first-boot step run again with the baked CA and token, nothing brought back by a reboot), not
k3s's own cleanup of its containerd shims and flannel links.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ceil.k3s.upgrade import service_of
from ceil_e2e import session
from ceil_e2e.workstation import Agent
from ceil_infra.helpers import or_none, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.full, pytest.mark.e2e_order(900)]

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def test_reboot_then_reset_then_remove_k3s_through_the_vpn(nodes, cluster, tmp_path):
    c = session.get()
    client = c.vpn_client
    if client is None:
        pytest.skip("no VPN client beside the router's uplink (root and wg-quick make one: ceil_e2e.vpn_client)")
    agent = Agent(tmp_path, c.key)
    names = [n.name for n in cluster.nodes]
    an_agent = next(n.name for n in cluster.nodes if n.role != "server")

    def on(name: str, command: str) -> str:
        """`command`'s output on a node through the harness's own SSH (a reboot drops its master)."""
        return wait_for(f"{name} to answer over SSH", lambda: or_none(lambda: nodes[name].check_output(command)),
                        timeout=600, every=5)

    def unit(name: str) -> str:
        return service_of(cluster.node(name))

    try:
        client.up()
        ws = client.link
        bake = agent.bake_py()
        config = ["--config", str(c.config_path), "--secrets", str(c.workdir / "secrets")]
        kubeconfig = tmp_path / "kubeconfig"
        ws.run(*bake, "kubeconfig", *config, "--out", str(kubeconfig))
        kubectl = ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=30s"]

        def every_node_ready() -> bool:
            try:
                seen = ws.run(*kubectl, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}"
                              " {.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}")
            except (RuntimeError, subprocess.TimeoutExpired):  # the API is away while the server restarts
                return False
            ready = dict(line.split() for line in seen.splitlines() if line.strip())
            return all(ready.get(cluster.hostname(n)) == "True" for n in names)

        def bake_py_while_guests_reboot(*args: str) -> str:
            """`bake.py ARGS` through the VPN while the harness restarts any guest that reboots, as a
            Pi restarts by itself (QEMU stops at the guest's reboot; docs/testing.md)."""
            proc = subprocess.Popen(["ip", "netns", "exec", ws.ns, *bake, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 1200
            while proc.poll() is None:
                for m in c.machines.values():
                    m.guest.poll()
                if time.monotonic() > deadline:
                    proc.kill()
                time.sleep(1)
            out = proc.stdout.read()
            for name in names:
                c.ssh.drop_master(name)
            assert proc.returncode == 0, out
            return out

        wait_for("every Node Ready", every_node_ready, 900, every=10)

        # `make reboot-all`'s command for one node: confirmed by its new boot id, Ready again.
        booted = on(an_agent, BOOT_ID)
        out = bake_py_while_guests_reboot("reboot", *config, "--on", an_agent)
        assert on(an_agent, BOOT_ID) != booted, out
        wait_for("every Node Ready after the reboot", every_node_ready, 900, every=10)

        # `make k8s-reset`: a new, empty cluster from the same CA and token (the kubeconfig
        # written before still works), every node Ready again, the object made before gone.
        ws.run(*kubectl, "create", "configmap", "ceil-made-before-the-reset", "-n", "default")
        out = bake_py_while_guests_reboot("k3s", "reset", *config, "--yes")
        wait_for("every Node Ready after the reset", every_node_ready, 1200, every=10)
        left = ws.run(*kubectl, "get", "configmaps", "-n", "default", "-o", "name")
        assert "ceil-made-before-the-reset" not in left, (left, out)
        for name in names:
            assert on(name, f"systemctl is-enabled {unit(name)}").strip() == "enabled", name

        # `make k8s-remove` (the second half of `make teardown`): k3s off and its state gone on
        # every node, and a reboot (every first-boot step not done runs again) does not bring it back.
        out = bake_py_while_guests_reboot("k3s", "reset", *config, "--remove", "--yes")
        for name in names:
            assert nodes[name].run(f"systemctl is-active {unit(name)}").stdout.strip() != "active", (name, out)
            assert nodes[name].run("sudo test -e /var/lib/rancher/k3s").rc == 1, name  # as root: k3s keeps its state root-only
        booted = on(an_agent, BOOT_ID)
        bake_py_while_guests_reboot("reboot", *config, "--on", an_agent)
        assert on(an_agent, BOOT_ID) != booted
        # Once the boot is over (the first-boot target's steps included), k3s is still off.
        on(an_agent, "timeout 600 systemctl is-system-running --wait || true")
        assert nodes[an_agent].run(f"systemctl is-active {unit(an_agent)}").stdout.strip() != "active"
        assert nodes[an_agent].run(f"systemctl is-enabled {unit(an_agent)}").stdout.strip() != "enabled"
        assert nodes[an_agent].run("sudo test -e /var/lib/rancher/k3s").rc == 1
    finally:
        client.close()
        agent.close()
