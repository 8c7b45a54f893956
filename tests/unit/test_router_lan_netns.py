"""The rendered router LAN configs doing their job in network namespaces: DHCP reservations and
leases, DNS names, wildcard and upstream, NAT, what the uplink can reach, NTP, status reports.

Needs root (ip netns) and dnsmasq, dhclient, nft, chronyd; skipped otherwise. About 15 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest

from router_lan_lab import FAKE_ANSWER, INET_IP, ROUTER_UPLINK_IP, RouterLanLab
from router_lan_render import REPO, cluster_from, render

from ceil.hooks import status_board
from ceil.secrets import SecretStore

TOOLS = ("ip", "dnsmasq", "dhclient", "nft", "chronyd", "ss")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
    reason=f"needs root and {', '.join(TOOLS)} (scripts/setup-host.sh --test)",
)
NODE_TWO_MAC = "02:00:00:00:00:12"


def lab_cluster():
    return cluster_from({
        "router": {"lan_interface": "br0", "uplink": {"type": "ethernet"}},  # flavor's enx*
        "network": {"upstream_dns": [INET_IP]},
        "nodes": [{"name": "one", "role": "server", "ip": "10.42.0.11"},
                  {"name": "two", "ip": "10.42.0.12", "mac": NODE_TWO_MAC}],
    })


def start_dnsmasq(lab: RouterLanLab, conf) -> None:
    lab.start("rtr", "dnsmasq", "-k", "-C", str(conf), "-u", "root", "-g", "root", "--log-facility=-",
              "--log-dhcp", "--log-queries", log="dnsmasq.log")
    lab.wait_port("rtr", "10.42.0.1", 53, "udp")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("router-lan-lab")
    out = render(lab_cluster(), "router", work)
    lab = RouterLanLab(work)
    try:
        lab.run("rtr", "nft", "-f", str(out / "etc/nftables/ceil.nft"))
        lab.run("rtr", "sysctl", "-q", "-p", str(out / "etc/sysctl/60-ceil-router.conf"))
        # The router's real config; only the lease file moves out of this machine's /var/lib/misc.
        lab.leases = work / "dnsmasq.leases"
        lab.dnsmasq_conf = work / "dnsmasq.conf"
        # ... and the directories of nodes baked after the router (ceil-lan-hosts writes them).
        lab.lan_hosts = work / "lan-hosts"
        for kind in ("dhcp", "dns"):
            (lab.lan_hosts / kind).mkdir(parents=True)
        conf = (out / "etc/dnsmasq/ceil.conf").read_text()
        conf = re.sub(r"(?m)^(dhcp-hostsdir|hostsdir)=/var/lib/ceil/lan-hosts/", rf"\1={lab.lan_hosts}/", conf)
        lab.dnsmasq_conf.write_text(re.sub(r"(?m)^dhcp-leasefile=.*$", f"dhcp-leasefile={lab.leases}", conf))
        start_dnsmasq(lab, lab.dnsmasq_conf)
        chrony_conf = work / "chrony.conf"
        chrony_conf.write_text((out / "etc/chrony/ceil.conf").read_text()
                               + f"pidfile {work}/chronyd.pid\ncmdport 0\nbindcmdaddress {work}/chronyd.sock\n")
        lab.chronyc = f"chronyc -h {work}/chronyd.sock"
        lab.chrony_local = out / "lib/ceil-chrony-local"
        lab.start("rtr", "chronyd", "-x", "-d", "-u", "root", "-f", str(chrony_conf), log="chronyd.log")
        board = json.loads((out / "etc/status-board/config.json").read_text())
        board["state_dir"] = str(work / "board")
        (work / "board.json").write_text(json.dumps(board))
        # The router's reporting key as systemd hands it over (LoadCredential), from the same secrets.
        (work / "creds").mkdir()
        (work / "creds/report-key").write_text(
            status_board.secret_files(lab_cluster(), "router", SecretStore(work / "secrets"))["status-board/key"])
        lab.start("rtr", "env", f"CREDENTIALS_DIRECTORY={work / 'creds'}", sys.executable,
                  str(REPO / "firstboot/status-board/lib/status-board"), str(work / "board.json"), log="board.log")
        lab.listen_tcp("rtr", 22)      # stands in for sshd
        lab.listen_tcp("rtr", 5000)    # stands in for the registry (bound to every address)
        lab.listen_tcp("node", 8000)   # a service on a node
        lab.fake_internet()
        lab.wait_port("rtr", "10.42.0.1", 8081)
        lab.wait_port("rtr", "0.0.0.0", 123, "udp")
        yield lab
    finally:
        lab.close()


def dhcp(lab: RouterLanLab, mac: str, hostname: str) -> str:
    """Ask for a lease from the dhcp namespace with this MAC and host name; the address offered."""
    lab.run("dhcp", "ip", "link", "set", "eth0", "down")
    lab.run("dhcp", "ip", "link", "set", "eth0", "address", mac)
    lab.run("dhcp", "ip", "link", "set", "eth0", "up")
    conf, lease, pid = (lab.dir / f"dhclient-{hostname}.{x}" for x in ("conf", "leases", "pid"))
    conf.write_text(f'send host-name "{hostname}";\nrequest subnet-mask, routers, domain-name-servers, ntp-servers;\n')
    lease.unlink(missing_ok=True)
    lab.run("dhcp", "dhclient", "-4", "-1", "-cf", str(conf), "-lf", str(lease), "-pf", str(pid),
            "-sf", "/bin/true", "eth0", timeout=90)
    lab.run("dhcp", "dhclient", "-x", "-pf", str(pid), check=False)
    text = lease.read_text()
    for option in ("routers", "domain-name-servers", "ntp-servers"):
        assert f"option {option} 10.42.0.1;" in text
    return re.findall(r"fixed-address ([\d.]+);", text)[-1]


def lease_lines(lab: RouterLanLab) -> list[str]:
    return lab.leases.read_text().splitlines() if lab.leases.exists() else []


# ---- DHCP ------------------------------------------------------------------------------------


def test_dhcp_reserves_by_hostname_mac_and_pools_the_rest(lab):
    assert dhcp(lab, "02:00:00:00:aa:01", "ceil-one") == "10.42.0.11"
    assert dhcp(lab, NODE_TWO_MAC, "some-other-name") == "10.42.0.12"
    visitor = dhcp(lab, "02:00:00:00:aa:03", "visitor")
    assert 100 <= int(visitor.rsplit(".", 1)[1]) <= 199
    leases = lease_lines(lab)
    assert any(" 02:00:00:00:aa:01 10.42.0.11 ceil-one " in ln for ln in leases), leases
    assert any(f" {NODE_TWO_MAC} 10.42.0.12 " in ln for ln in leases), leases


def test_leases_survive_a_dnsmasq_restart(lab):
    dhcp(lab, "02:00:00:00:aa:01", "ceil-one")
    before = lease_lines(lab)
    proc = next(p for p in lab.procs if "dnsmasq" in p.args and p.poll() is None)
    proc.terminate()
    proc.wait(timeout=10)
    start_dnsmasq(lab, lab.dnsmasq_conf)
    assert [ln.split(" ", 1)[1] for ln in lease_lines(lab)] == [ln.split(" ", 1)[1] for ln in before]
    assert dhcp(lab, "02:00:00:00:aa:01", "ceil-one") == "10.42.0.11"
    assert sum(" 10.42.0.11 " in ln for ln in lease_lines(lab)) == 1  # no duplicate lease


def test_a_reservation_with_a_mac_cannot_be_taken_by_name(lab):
    """Issue 18 #9: node two's address is reserved for its MAC: a device that announces the name
    ceil-two from another MAC gets a pool address, not the node's."""
    impostor = dhcp(lab, "02:00:00:00:bb:02", "ceil-two")
    assert impostor != "10.42.0.12" and 100 <= int(impostor.rsplit(".", 1)[1]) <= 199
    assert lab.dns("node", "10.42.0.1", "ceil-two.ceil.internal") == "['10.42.0.12']"


def test_a_reservation_without_a_mac_goes_to_whoever_claims_the_name(lab):
    """Issue 18 #9, shown as it is: node one has no `mac` in cluster.yaml, so its reservation is by
    host name, and while it is down any device announcing ceil-one takes its address (the bake
    warns about each such node; docs/router-lan.md says what it means and how to close it).
    dnsmasq does not hand out an address another client still leases: the real node's lease is
    dropped first, as when it runs out (12 h) while the node is off."""
    assert dhcp(lab, "02:00:00:00:aa:01", "ceil-one") == "10.42.0.11"
    proc = next(p for p in lab.procs if "dnsmasq" in p.args and p.poll() is None)
    proc.terminate()
    proc.wait(timeout=10)
    lab.leases.write_text("".join(ln + "\n" for ln in lease_lines(lab) if " 10.42.0.11 " not in ln))
    start_dnsmasq(lab, lab.dnsmasq_conf)
    assert dhcp(lab, "02:00:00:00:bb:01", "ceil-one") == "10.42.0.11"


def test_a_visitor_cannot_name_itself_into_the_cluster_domain(lab):
    """A pool device's announced name is not put into DNS (dhcp-ignore-names for hosts without a
    reservation): no LAN device can make kubernetes.ceil.internal or registry.ceil.internal point at
    itself, and the cluster's own names keep their addresses."""
    visitor = dhcp(lab, "02:00:00:00:bb:09", "registry")
    assert 100 <= int(visitor.rsplit(".", 1)[1]) <= 199
    assert "10.42.0." not in lab.dns("node", "10.42.0.1", "registry.ceil.internal")
    dhcp(lab, "02:00:00:00:bb:0a", "router")
    assert lab.dns("node", "10.42.0.1", "router.ceil.internal") == "['10.42.0.1']"


# ---- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, answer", [
    ("one.ceil.internal", "10.42.0.11"),
    ("ceil-one.ceil.internal", "10.42.0.11"),
    ("two.ceil.internal", "10.42.0.12"),
    ("router.ceil.internal", "10.42.0.1"),
    ("ceil-router.ceil.internal", "10.42.0.1"),
    ("grafana.apps.ceil.internal", "10.42.0.240"),
    ("a.b.apps.ceil.internal", "10.42.0.240"),
])
def test_cluster_names_resolve_from_a_node(lab, name, answer):
    assert lab.dns("node", "10.42.0.1", name) == str([answer])


def test_reverse_lookup_of_a_node(lab):
    assert lab.dns("node", "10.42.0.1", "11.0.42.10.in-addr.arpa", "PTR") == "['ceil-one.ceil.internal']"


def test_internet_names_go_to_the_upstream_and_private_ones_do_not(lab):
    assert lab.dns("node", "10.42.0.1", "www.example.org") == str([FAKE_ANSWER])
    lab.dns("node", "10.42.0.1", "plainname")
    lab.dns("node", "10.42.0.1", "1.1.168.192.in-addr.arpa", "PTR")
    lab.dns("node", "10.42.0.1", "nosuchnode.ceil.internal")
    asked = (lab.dir / "upstream-queries.log").read_text().split()
    assert "www.example.org" in asked
    assert not {"plainname", "1.1.168.192.in-addr.arpa", "nosuchnode.ceil.internal"} & set(asked)


def test_an_upstream_answer_into_private_space_is_dropped(lab):
    """DNS rebinding (issue 18 #7): an attacker's name answered with the router's LAN address."""
    answer = lab.dns("node", "10.42.0.1", "rebind.attacker.example")
    assert "10.42.0.1" not in answer, answer
    assert "rebind.attacker.example" in (lab.dir / "upstream-queries.log").read_text().split()
    assert lab.dns("node", "10.42.0.1", "ceil-one.ceil.internal") == "['10.42.0.11']"  # own names unaffected


# ---- NAT and firewall ------------------------------------------------------------------------


def test_a_node_fetches_from_the_internet_through_nat(lab):
    body = lab.run("node", sys.executable, "-c", "import urllib.request,sys;"
                   "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                   f"http://{INET_IP}:8000/hello.txt").stdout
    assert body == "hello from the internet\n"
    time.sleep(0.3)
    log = (lab.dir / "fake-http.log").read_text()
    assert f"{ROUTER_UPLINK_IP} - - " in log and "10.42.0.11" not in log  # masqueraded


def test_uplink_reaches_only_ssh(lab):
    assert lab.open_ports("inet", ROUTER_UPLINK_IP, [22, 53, 5000, 8081]) == {22}
    assert lab.open_ports("inet", "10.42.0.1", [22, 5000]) == {22}  # the LAN address via the uplink
    assert not lab.dns_answers("inet", ROUTER_UPLINK_IP, "one.ceil.internal")
    assert not lab.open_ports("inet", "10.42.0.11", [8000]), "the uplink reached into the LAN"


def test_lan_reaches_the_router_services(lab):
    assert lab.open_ports("node", "10.42.0.1", [22, 53, 5000, 8081]) == {22, 53, 5000, 8081}


# ---- NTP and status --------------------------------------------------------------------------


def chrony_query(lab: RouterLanLab, ns: str, server: str, wait: int) -> bool:
    done = lab.run(ns, "chronyd", "-Q", "-t", str(wait), "-u", "root", f"server {server} iburst",
                   f"pidfile {lab.dir}/chronyd-{ns}.pid", check=False, timeout=30)
    return done.returncode == 0 and "System clock wrong by" in done.stdout + done.stderr


def test_ntp_answers_the_lan_but_not_the_uplink_once_no_upstream_answered(lab):
    # No upstream in the lab: until ceil-chrony-local gives up on one, the router serves nothing
    # a client takes (a rebooted router's clock is minutes behind until its upstream answers).
    assert not chrony_query(lab, "node", "10.42.0.1", wait=3)
    done = lab.run("rtr", "env", "CEIL_CHRONY_LOCAL_AFTER=2", f"CEIL_CHRONYC={lab.chronyc}", "sh",
                   str(lab.chrony_local), timeout=30)
    assert "no upstream time after 2s: serving the router's own clock" in done.stdout
    assert chrony_query(lab, "node", "10.42.0.1", wait=10)
    assert not chrony_query(lab, "inet", ROUTER_UPLINK_IP, wait=3)


def test_a_node_reports_its_status_over_the_lan(lab, tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"host": "ceil-one", "steps": {"chrony": {"state": "done"}}}))
    (tmp_path / "token").write_text(
        status_board.secret_files(lab_cluster(), "one", SecretStore(lab.dir / "secrets"))["status-report/token"])
    done = lab.run("node", "env", f"CEIL_STATE_DIR={tmp_path}", f"CEIL_REPORT_TOKEN={tmp_path / 'token'}", sys.executable,
                   str(REPO / "firstboot/status-report/lib/status-report"), "http://10.42.0.1:8081/api/status/one")
    assert "reported" in done.stdout, done.stderr
    stored = json.loads((lab.dir / "board/one.json").read_text())
    assert stored["from"] == "10.42.0.11" and stored["report"]["host"] == "ceil-one"


# ---- a node baked after the router (issue 19) ------------------------------------------------

FIVE_MAC = "02:00:00:00:aa:05"


def test_a_node_baked_after_the_router_registers_and_gets_its_address_and_name(lab, tmp_path):
    """The router's card knows one and two only. Node five, baked later from the same secrets,
    registers at the board with its token (from the LAN); ceil-lan-hosts writes the reservation;
    the real dnsmasq then gives five's MAC its address and serves its names. No router re-bake."""
    store = SecretStore(lab.dir / "secrets")
    key = status_board.secret_files(lab_cluster(), "router", store)["status-board/key"].strip()
    from ceil.status import report_token

    before = dhcp(lab, FIVE_MAC, "ceil-five")
    assert before.startswith("10.42.0.1") and int(before.split(".")[-1]) >= 100  # a pool address
    assert "10.42.0." not in lab.dns("node", "10.42.0.1", "five.ceil.internal")
    code = ("import json,sys;sys.path.insert(0,sys.argv[4]);import ceil_board;print(ceil_board.post(sys.argv[1],"
            "sys.argv[2],json.dumps({'ip':'10.42.0.15','mac':sys.argv[3]}).encode()))")
    answer = lab.run("node", sys.executable, "-c", code, "http://10.42.0.1:8081/api/register/five",
                     report_token(key, "five"), FIVE_MAC, str(REPO / "firstboot/status-report/lib")).stdout
    assert "five registered at 10.42.0.15" in answer
    env = [f"CEIL_REGISTERED_DIR={lab.dir / 'board/registered'}", f"CEIL_LAN_HOSTS_DIR={lab.lan_hosts}"]
    done = lab.run("rtr", "env", *env, sys.executable, str(REPO / "firstboot/dnsmasq/lib/ceil-lan-hosts"),
                   str(lab.dir / "board.json"))
    assert "dhcp entry for five" in done.stdout, done.stderr
    deadline = time.monotonic() + 10  # dnsmasq reads the new files on its own (inotify)
    while "10.42.0.15" not in lab.dns("node", "10.42.0.1", "five.ceil.internal") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.dns("node", "10.42.0.1", "five.ceil.internal") == "['10.42.0.15']"
    assert lab.dns("node", "10.42.0.1", "ceil-five.ceil.internal") == "['10.42.0.15']"
    assert dhcp(lab, FIVE_MAC, "ceil-five") == "10.42.0.15"
