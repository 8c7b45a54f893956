"""Router LAN features (dnsmasq, nat-firewall, chrony): rendered configs, checked by the real tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ceil.errors import ConfigError
from ceil.hooks import dnsmasq as dns_hooks
from ceil.hooks import nat_firewall as fw_hooks
from router_lan_render import REPO, cluster_from, render

VARIANTS = {
    "example": {},
    "vpn-off-macs": {
        "vpn": {"enabled": False},
        "registry": {"enabled": False},
        "piwatch": {"enabled": False},
        "router": {"lan_interface": "end0", "uplink": {"type": "ethernet", "interface": "enx0011"}},
        "nodes": [
            {"name": "one", "role": "server", "mac": "DC:A6:32:01:02:03"},
            {"name": "two", "ip": "10.42.0.50"},
        ],
    },
    "other-lan": {
        "name": "lab",
        "domain": "lab.home.arpa",
        "network": {"lan_cidr": "192.168.77.0/24", "router_ip": "192.168.77.1", "dhcp_start": "192.168.77.100",
                    "dhcp_end": "192.168.77.150", "lb_start": "192.168.77.200", "lb_end": "192.168.77.210",
                    "upstream_dns": ["192.0.2.53"]},
        "nodes": [{"name": "alpha", "role": "server"}, {"name": "beta"}],
    },
}


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def needs(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed (scripts/setup-host.sh --test)")


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    """(cluster, rendered router payload); rendered once per variant (key generation is slow)."""
    cluster = cluster_from(VARIANTS[request.param])
    return cluster, render(cluster, "router", tmp_path_factory.mktemp(request.param))


# ---- dnsmasq ---------------------------------------------------------------------------------


def test_dnsmasq_config_passes_dnsmasq_test(variant):
    needs("dnsmasq")
    _, out = variant
    done = run("dnsmasq", "--test", "-C", str(out / "etc/dnsmasq/ceil.conf"))
    assert done.returncode == 0, done.stderr
    assert "syntax check OK" in done.stderr


def directives(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_dnsmasq_listens_on_lan_and_vpn_never_uplink(variant):
    cluster, out = variant
    lines = directives(out / "etc/dnsmasq/ceil.conf")
    want = [f"interface={cluster.router.lan_interface}"] + (["interface=wg0"] if cluster.vpn.enabled else [])
    assert [ln for ln in lines if ln.startswith("interface=")] == want
    assert f"except-interface={cluster.uplink_interface}" in lines
    assert "bind-dynamic" in lines and "bind-interfaces" not in lines
    assert ("no-dhcp-interface=wg0" in lines) == cluster.vpn.enabled


def test_dnsmasq_names_reservations_and_upstreams(variant):
    cluster, out = variant
    lines = directives(out / "etc/dnsmasq/ceil.conf")
    d = cluster.domain
    assert f"host-record=ceil-router.{d},router.{d},ceil-router,{cluster.network.router_ip}".replace(
        "ceil-", f"{cluster.name}-") in lines
    for n in cluster.nodes:
        host = cluster.hostname(n.name)
        assert f"host-record={host}.{d},{n.name}.{d},{host},{n.ip}" in lines
        mac = f"{n.mac}," if n.mac else ""
        assert f"dhcp-host={mac}{host},{n.ip},12h" in lines
    assert f"address=/apps.{d}/{cluster.network.ingress_ip}" in lines
    assert [ln for ln in lines if ln.startswith("server=")] == [f"server={ip}" for ip in cluster.network.upstream_dns]
    for flag in ("no-resolv", "domain-needed", "bogus-priv", "dhcp-authoritative", "no-hosts", f"local=/{d}/"):
        assert flag in lines
    assert f"dhcp-range=set:lan,{cluster.network.dhcp_start},{cluster.network.dhcp_end},255.255.255.0,12h" in lines
    assert "dhcp-leasefile=/var/lib/misc/dnsmasq.leases" in lines
    for opt in ("router", "dns-server", "ntp-server"):
        assert f"dhcp-option=tag:lan,option:{opt},{cluster.network.router_ip}" in lines


def test_upstream_dns_inside_the_lan_is_refused():
    cluster = cluster_from({"network": {"upstream_dns": ["10.42.0.1"]}})
    with pytest.raises(ConfigError, match=r"network.upstream_dns\[0\]: 10.42.0.1 .*loop"):
        dns_hooks.check(cluster, "router")


# ---- nftables --------------------------------------------------------------------------------


def nft_check(path: Path) -> subprocess.CompletedProcess:
    """`nft -c -f` as root, else inside a user+network namespace (no root needed there)."""
    needs("nft")
    done = run("nft", "-c", "-f", str(path))
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        done = run("unshare", "-rn", "nft", "-c", "-f", str(path))
    return done


def test_nftables_ruleset_passes_nft_check(variant):
    _, out = variant
    done = nft_check(out / "etc/nftables/ceil.nft")
    assert done.returncode == 0, done.stderr


def test_uplink_opens_only_ssh_and_the_vpn_port(variant):
    cluster, out = variant
    text = (out / "etc/nftables/ceil.nft").read_text()
    uplink_rules = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("iifname $UPLINK")]
    accepted = [r for r in uplink_rules if r.endswith("accept")]
    want = [
        "iifname $UPLINK udp sport 67 udp dport 68 accept",
        "iifname $UPLINK ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",
        "iifname $UPLINK tcp dport { 22 } accept",
    ] + ([f"iifname $UPLINK udp dport {{ {cluster.vpn.port} }} accept"] if cluster.vpn.enabled else [])
    assert accepted == want
    assert "policy drop;" in text.split("chain input", 1)[1].split("}", 1)[0]


def test_lan_ports_follow_enabled_features(variant):
    cluster, _ = variant
    tcp = fw_hooks.ports(fw_hooks.lan_services(cluster), "tcp")
    udp = fw_hooks.ports(fw_hooks.lan_services(cluster), "udp")
    assert udp == [53, 67, 123]
    expected = {22, 53, 8081, 8088}  # 8088: the k3s binary cache
    if cluster.registry.enabled:
        expected |= {cluster.registry.port, cluster.registry.mirror_port, cluster.registry.push_port}
    if cluster.piwatch.enabled:
        expected.add(cluster.piwatch.port)
    assert tcp == sorted(expected)


def test_forwarding_masquerades_lan_and_vpn_to_uplink(variant):
    cluster, out = variant
    text = (out / "etc/nftables/ceil.nft").read_text()
    sources = [str(cluster.network.lan_cidr)] + ([str(cluster.vpn.subnet)] if cluster.vpn.enabled else [])
    assert f"oifname $UPLINK ip saddr {{ {', '.join(sources)} }} masquerade" in text
    assert "iifname $INSIDE oifname $UPLINK accept" in text
    assert "flush ruleset" not in [ln.strip() for ln in text.splitlines()]
    assert (out / "etc/sysctl/60-ceil-router.conf").read_text().count("net.ipv4.ip_forward = 1") == 1


def test_port_clash_between_router_services_is_refused():
    cluster = cluster_from({"piwatch": {"port": 8081}})
    with pytest.raises(ConfigError, match="port 8081/tcp is used by both status-board and piwatch"):
        fw_hooks.check(cluster, "router")


def test_loading_the_ruleset_twice_gives_the_same_rules(variant, tmp_path):
    """Idempotence of the step: a second load (re-run after a power cut) duplicates nothing."""
    needs("nft")
    _, out = variant
    rules = out / "etc/nftables/ceil.nft"
    script = f"nft -f {rules} && nft list ruleset > {tmp_path}/a && nft -f {rules} && nft list ruleset > {tmp_path}/b"
    done = run("unshare", "-rn", "sh", "-c", script)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("no user namespaces here")
    assert done.returncode == 0, done.stderr
    first, second = (tmp_path / "a").read_text(), (tmp_path / "b").read_text()
    assert first == second and "masquerade" in first


# ---- chrony ----------------------------------------------------------------------------------


def chrony_parse(path: Path) -> str:
    needs("chronyd")
    done = run("chronyd", "-p", "-f", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_router_chrony_serves_lan_and_vpn_with_local_fallback(variant):
    cluster, out = variant
    parsed = chrony_parse(out / "etc/chrony/ceil.conf")
    assert f"allow {cluster.network.lan_cidr}" in parsed
    assert (f"allow {cluster.vpn.subnet}" in parsed) == cluster.vpn.enabled
    assert "server " not in parsed
    # The router's own clock is served from ceil-chrony-local.service, after the upstream had its
    # chance (test_router_lan_netns shows both halves with a real chronyd).
    assert "local" not in parsed
    unit = (out / "units/ceil-chrony-local.service").read_text()
    assert "ExecStart=/usr/local/lib/ceil/ceil-chrony-local" in unit and "PartOf=chrony.service" in unit


def test_router_chrony_takes_the_named_upstream_servers(tmp_path):
    cluster = cluster_from({"network": {"ntp_servers": ["192.0.2.53", "ntp.example.org"]}})
    parsed = chrony_parse(render(cluster, "router", tmp_path) / "etc/chrony/ceil.conf")
    assert "server 192.0.2.53 iburst" in parsed and "server ntp.example.org iburst" in parsed
    assert "local" not in parsed  # its own clock comes later, from ceil-chrony-local


def test_node_chrony_syncs_from_the_router(tmp_path):
    cluster = cluster_from()
    out = render(cluster, "two", tmp_path)
    parsed = chrony_parse(out / "etc/chrony/ceil.conf")
    assert f"server {cluster.network.router_ip} iburst prefer minpoll 4 maxpoll 6" in parsed  # quick to resync after a router reboot
    assert "allow" not in parsed and "local stratum" not in parsed
    assert not (out / "units/ceil-chrony-local.service").exists()  # a router-only unit


def test_debian_chrony_conf_includes_the_dropin_dir():
    conf = Path("/etc/chrony/chrony.conf")
    if not conf.is_file():
        pytest.skip("chrony not installed on this host")
    assert "confdir /etc/chrony/conf.d" in conf.read_text()


# ---- step scripts and units ------------------------------------------------------------------

STEP_SCRIPTS = [
    "firstboot/dnsmasq/lib/steps/dnsmasq.sh",
    "firstboot/dnsmasq/lib/steps/router-resolver.sh",
    "firstboot/nat-firewall/lib/steps/nat-firewall.sh",
    "firstboot/chrony/lib/steps/chrony.sh",
]


@pytest.mark.parametrize("script", STEP_SCRIPTS)
def test_step_scripts_are_posix_sh_with_set_eu(script):
    path = REPO / script
    assert path.read_text().startswith("#!/bin/sh\n")
    assert "set -eu" in path.read_text()
    assert run("sh", "-n", str(path)).returncode == 0
    if shutil.which("dash"):
        assert run("dash", "-n", str(path)).returncode == 0


def test_router_has_the_lan_units_and_packages(variant):
    _, out = variant
    units = {p.name for p in (out / "units").iterdir()}
    assert {"ceil-dnsmasq.service", "ceil-nat-firewall.service", "ceil-chrony.service",
            "ceil-status-board.service"} <= units
    dnsmasq_unit = (out / "units/ceil-dnsmasq.service").read_text()
    assert "After=ceil-packages.service ceil-nat-firewall.service" in dnsmasq_unit
    assert "ConditionPathExists=!/var/lib/ceil/done/dnsmasq" in dnsmasq_unit


def test_nodes_get_time_and_reporting_but_no_router_services(tmp_path):
    out = render(cluster_from(), "one", tmp_path)
    units = {p.name for p in (out / "units").iterdir()}
    assert {"ceil-chrony.service", "ceil-status-report.path", "ceil-status-report.timer"} <= units
    assert not units & {"ceil-dnsmasq.service", "ceil-nat-firewall.service", "ceil-status-board.service"}
    assert "ceil-nat-firewall" not in (out / "units/ceil-chrony.service").read_text()


def test_addon_ingress_hosts_resolve_to_the_ingress(tmp_path):
    """The add-ons publish grafana.<domain>, traefik.<domain>, ...: the router's DNS answers them."""
    from ceil.addons.render import ingress_hosts
    from ceil.config import parse_cluster

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    from ceil.hooks.dnsmasq import context

    hosts = context(cluster, "router", None)["lan_dns"]["ingress_hosts"]
    assert hosts == ingress_hosts(cluster) and f"grafana.{cluster.domain}" in hosts


def test_piwatch_brings_its_flavors_gpio_backend(tmp_path):
    """Issue 17: on Ubuntu no GPIO library imported, PiWatch ran on mock pins and the lights stayed
    dark. The router installs the flavor's backend; the QEMU twins have no GPIO and list none."""
    from ceil.catalog import load_flavor
    from ceil.features import RoleContext, render_features
    from ceil.secrets import SecretStore

    cluster = cluster_from({"piwatch": {"enabled": True}})
    # Every flavor that can run PiWatch (Hypriot cannot: no python_tag, refused at bake time);
    # lgpio drives a Pi 5's RP1 too (gpiozero documentation, "Installing").
    for flavor, expected in (("ubuntu-24.04-raspi", "python3-lgpio"), ("ubuntu-26.04-raspi", "python3-lgpio"),
                             ("raspios-trixie", "python3-lgpio")):
        payload = render_features(RoleContext(cluster, "router", load_flavor(flavor), SecretStore(tmp_path / "s")),
                                  tmp_path / flavor)
        assert expected in payload.packages, flavor
    assert load_flavor("testbed-ubuntu").gpio_packages == []


def test_piwatch_builds_its_venv_while_apt_is_busy_and_the_rest_after_the_packages(tmp_path):
    """Issue 21: the step waited for the packages step, which on Ubuntu waits minutes for
    unattended-upgrades to free apt's locks with the CPU idle (bench/firstboot.py). The venv needs
    only python3, so it comes first; the system user (useradd against a maintainer script's lock
    on /etc/passwd), the GPIO library and the daemon wait for the firewall, and so the packages."""
    out = render(cluster_from({"piwatch": {"enabled": True}}), "router", tmp_path)
    unit = (out / "units/ceil-piwatch-setup.service").read_text()
    ordering = [line for line in unit.splitlines() if line.startswith(("After=", "Requires="))]
    assert ordering == ["After=ceil-secrets.service", "Requires=ceil-secrets.service"]
    firewall = (out / "units/ceil-nat-firewall.service").read_text()
    assert "After=ceil-packages.service" in firewall and "Requires=ceil-packages.service" in firewall
    script = [line for line in (out / "lib/steps/piwatch.sh").read_text().splitlines()
              if line and not line.startswith("#")]
    order = [next(i for i, line in enumerate(script) if line.startswith(start)) for start in (
        'CEIL_PIWATCH_VENV_ONLY=1 "$DEST/install-piwatch.sh"', "systemctl start ceil-nat-firewall.service",
        '"$DEST/install-piwatch.sh" "$DEST"', "systemctl restart ceil-piwatch.service")]
    assert order == sorted(order), script


def test_nodes_reserved_by_name_only_are_warned_about_when_the_router_is_baked():
    """Issue 18 #9: without a MAC, a node's address goes to whoever announces its name (shown in
    test_router_lan_netns); the bake says so, naming the nodes and the fix."""
    from ceil.catalog import load_flavor
    from ceil.features import preflight

    # ram_gib given: the resource-fit check runs and has nothing to say (its own warning otherwise).
    cluster = cluster_from({"nodes": [{"name": "one", "role": "server", "ip": "10.42.0.11", "ram_gib": 4},
                                      {"name": "two", "ip": "10.42.0.12", "mac": "02:00:00:00:00:12", "ram_gib": 4}]})
    def warned(cluster, roles):  # (not the add-ons' digest warning: test_addon_pins.py)
        return [w for w in preflight(cluster, roles, load_flavor(cluster.flavor)) if not w.startswith("add-ons:")]

    (warning,) = warned(cluster, ["router", "one", "two"])
    assert "(one)" in warning and "ceil-one gets 10.42.0.11" in warning and "nodes[].mac" in warning
    assert warned(cluster, ["one", "two"]) == []
    all_macs = cluster_from({"nodes": [{"name": "one", "role": "server", "ip": "10.42.0.11",
                                        "mac": "02:00:00:00:00:11", "ram_gib": 4}]})
    assert warned(all_macs, ["router"]) == []


LAN_ONLY_UNITS = ("ceil-status-board.service", "ceil-k3s-cache.service", "ceil-registry-private.service",
                  "ceil-registry-push.service")


def test_the_routers_lan_services_answer_only_inside_networks_without_the_firewall(tmp_path):
    """Issue 18 review: the status board and the k3s cache start at boot, the registries after the
    packages, none after the firewall, and each binds the LAN address, which an uplink host can
    route to through the router: until the firewall's step ran (or for good, had it failed) they
    answered the uplink side. Each unit now lets the kernel drop what comes from anywhere but the
    LAN, the VPN and the trusted networks (the registry's pull-through cache is left to the
    firewall: it must reach its upstream on the internet)."""
    cluster = cluster_from({"router": {"uplink": {"type": "ethernet"}, "trusted_networks": ["192.168.1.0/24"]},
                            "vpn": {"enabled": True, "endpoint": "vpn.example.com"}})
    units = render(cluster, "router", tmp_path) / "units"
    for name in LAN_ONLY_UNITS:
        settings = [line for line in (units / name).read_text().splitlines() if line.startswith("IPAddress")]
        assert settings == ["IPAddressDeny=any", f"IPAddressAllow=localhost {cluster.network.lan_cidr}"
                            f" {cluster.vpn.subnet} 192.168.1.0/24"], (name, settings)
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(units / n) for n in LAN_ONLY_UNITS)],
                              capture_output=True, text=True,
                              env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()
                    and "is not executable" not in line and "No such file" not in line]
        assert not problems, "\n".join(problems)
