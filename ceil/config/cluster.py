"""The whole cluster.yaml as one model: `Cluster`.

Owns the checks that span sections (node names, addresses and MACs unique; node addresses
outside the router, DHCP and load-balancer ranges; the LAN, pod, service and VPN ranges
disjoint), fills in node addresses left out, and the derived facts renderers use (roles,
hostnames, the k3s server).
"""

from __future__ import annotations

import functools
import zoneinfo
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from .schema import (
    DDNS,
    DEFAULT_NODES,
    SSH,
    VPN,
    Addons,
    AptMirror,
    Domain,
    Kubernetes,
    Label,
    Model,
    Network,
    Node,
    PiWatch,
    GitOps,
    Registry,
    Tunnel,
    Router,
)


# The layout of cluster.yaml this ceil reads. A file that names a newer one was written for a
# newer ceil (it may use keys or meanings this one does not know): refused, not half-understood.
# When a change needs users to edit their file, this goes up and the change is described here.
CLUSTER_FORMAT = 1


@functools.cache
def time_zones() -> frozenset[str]:
    # Read once per process: zoneinfo walks the whole database (about 17 ms), and every command,
    # test and Makefile variable loads cluster.yaml.
    return frozenset(zoneinfo.available_timezones())


class Cluster(Model):
    format: int = Field(default=1, ge=1, description="the layout of cluster.yaml, 1 for this ceil")
    name: Label = "ceil"
    domain: Domain = "ceil.internal"
    flavor: str = Field(default="ubuntu-24.04-raspi", pattern=r"^[a-z0-9][a-z0-9.-]*$")
    timezone: str = Field(default="Etc/UTC", pattern=r"^[A-Za-z0-9_+/-]+$")
    apt_mirror: AptMirror | None = None
    ssh: SSH
    router: Router = Field(default_factory=Router)
    network: Network = Field(default_factory=Network)
    nodes: list[Node] = Field(min_length=1)
    kubernetes: Kubernetes = Field(default_factory=Kubernetes)
    vpn: VPN = Field(default_factory=VPN)
    ddns: DDNS = Field(default_factory=DDNS)
    registry: Registry = Field(default_factory=Registry)
    piwatch: PiWatch = Field(default_factory=PiWatch)
    tunnel: Tunnel = Field(default_factory=Tunnel)
    gitops: GitOps = Field(default_factory=GitOps)
    addons: Addons = Field(default_factory=Addons)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if v > CLUSTER_FORMAT:
            raise ValueError(f"{v} is a cluster.yaml format of a newer ceil; this ceil reads format"
                             f" {CLUSTER_FORMAT}: update ceil (git pull, then make setup) before baking")
        return v

    @field_validator("flavor")
    @classmethod
    def _known_flavor(cls, v: str) -> str:
        # Here, not only when the bake loads the flavor: reported with every other mistake.
        from ..catalog import unknown_flavor  # the catalog imports this package

        if problem := unknown_flavor(v):
            raise ValueError(problem)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        # The workstation's time zone database (Python's zoneinfo: the system's and the tzdata
        # package, a dependency, so never empty) stands in for the card's: a name unknown to both
        # would leave the Pi on UTC.
        if v not in time_zones():
            raise ValueError(f"{v!r} is not a time zone name: use one from `timedatectl list-timezones`"
                             " (Region/City, e.g. Europe/Berlin), or Etc/UTC")
        return v

    @model_validator(mode="before")
    @classmethod
    def _assign_node_ips(cls, data: Any) -> Any:
        """Nodes without `ip` get the next free address after the router, outside both pools."""
        if not isinstance(data, dict):
            return data
        if "nodes" not in data:
            data = {**data, "nodes": [dict(n) for n in DEFAULT_NODES]}
        if not isinstance(data["nodes"], list):
            return data
        try:
            net = Network(**(data.get("network") or {}))
        except (ValidationError, TypeError):
            return data  # the Network model reports its own errors
        taken = {str(net.router_ip)}
        taken |= {str(n["ip"]) for n in data["nodes"] if isinstance(n, dict) and n.get("ip")}
        candidates = (h for h in net.lan_cidr.hosts() if h > net.router_ip)
        nodes = []
        for n in data["nodes"]:
            if isinstance(n, dict) and not n.get("ip"):
                ip = next(
                    (c for c in candidates
                     if str(c) not in taken and not net.in_dhcp_pool(c) and not net.in_lb_pool(c)),
                    None,
                )
                n = {**n, "ip": str(ip)} if ip else n
            nodes.append(n)
        return {**data, "nodes": nodes}

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        # Every problem at once, one per line, each starting with its key (loading.py splits
        # them): a user with three mistakes fixes them in one go, not in three bakes.
        problems = [*self._node_problems(), *self._cidr_problems(), *self._host_name_problems()]
        if not any(n.role == "server" for n in self.nodes):
            problems.append("nodes: no node has role 'server': one node must run the k3s server")
        if self.router.usb_drive and not self.registry.enabled:
            # The registry's first-boot step formats and mounts the drive; without it the drive
            # would be named, wiped by nobody, and used by nothing, silently.
            problems.append(
                f"router.usb_drive: {self.router.usb_drive} is named but registry.enabled is false: the"
                " router's registry step prepares the drive (it holds the registry's storage and the"
                " datastore snapshots): set registry.enabled: true, or remove router.usb_drive")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _host_name_problems(self) -> list[str]:
        """Each part may pass on its own while the host name they make does not fit (the machine
        would refuse it at first boot, long after the card was flashed)."""
        problems = []
        for key, role in [("name", "router"), *((f"nodes[{i}].name", n.name) for i, n in enumerate(self.nodes))]:
            host = self.hostname(role)
            if len(host) > 63:
                shorten = (f"the cluster's name to at most {63 - len('-router')} characters" if role == "router"
                           else "the node's name or the cluster's (together at most 62 characters)")
                problems.append(f"{key}: the host name {host!r} it makes is {len(host)} characters long; a host"
                                f" name holds at most 63 (RFC 1123): shorten {shorten}")
            elif len(self.fqdn(role)) > 253:
                problems.append(f"domain: {self.fqdn(role)!r} is {len(self.fqdn(role))} characters long; a full"
                                " name holds at most 253: shorten the domain")
        return problems

    def _node_problems(self) -> list[str]:
        problems, names, ips, macs = [], set(), {}, {}
        free = "or leave ip out for a free one"
        net = self.network
        for i, n in enumerate(self.nodes):
            where = f"nodes[{i}]"
            if n.name in names:
                problems.append(f"{where}.name: {n.name!r} is used by two nodes: node names must be unique")
            names.add(n.name)
            ip = n.ip
            if ip is None:
                problems.append(f"{where}.ip: no free address left in {net.lan_cidr}")
            elif ip not in net.lan_cidr or ip in (net.lan_cidr.network_address, net.lan_cidr.broadcast_address):
                problems.append(f"{where}.ip: {ip} is outside the LAN {net.lan_cidr}: pick an address inside it,"
                                f" {free}")
            elif ip == net.router_ip:
                problems.append(f"{where}.ip: {ip} is the router's address: pick another, {free}")
            elif net.in_dhcp_pool(ip):
                problems.append(f"{where}.ip: {ip} lies inside the DHCP pool {net.dhcp_start}-{net.dhcp_end}:"
                                " pick a fixed address outside it")
            elif net.in_lb_pool(ip):
                problems.append(f"{where}.ip: {ip} lies inside the load-balancer range {net.lb_start}-{net.lb_end}:"
                                " pick a fixed address outside it")
            elif ip in ips:
                problems.append(f"{where}.ip: {ip} is also the address of node {ips[ip]!r}: give each node its own,"
                                f" {free}")
            ips.setdefault(ip, n.name)
            if n.mac and n.mac in macs:
                problems.append(f"{where}.mac: {n.mac} is also the MAC of node {macs[n.mac]!r}: each Pi has its own"
                                " (`ip link show eth0` on it): correct one of them, or leave mac out")
            macs.setdefault(n.mac, n.name)
        return problems

    def _cidr_problems(self) -> list[str]:
        nets = {
            "network.lan_cidr": self.network.lan_cidr,
            "kubernetes.cluster_cidr": self.kubernetes.cluster_cidr,
            "kubernetes.service_cidr": self.kubernetes.service_cidr,
        }
        if self.vpn.enabled:
            nets["vpn.subnet"] = self.vpn.subnet
        keys = list(nets)
        return [f"{a} {nets[a]} overlaps {b} {nets[b]}: the ranges must be disjoint"
                for i, a in enumerate(keys) for b in keys[i + 1:] if nets[a].overlaps(nets[b])]

    # ---- derived facts used by renderers -------------------------------------------------

    @property
    def roles(self) -> list[str]:
        return ["router", *(n.name for n in self.nodes)]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        if name == "router":  # a role, but no k3s node: "not in the cluster" would contradict the list
            raise ConfigError("the router is the cluster's gateway, not a k3s node: this takes a node: "
                              + ", ".join(n.name for n in self.nodes))
        raise ConfigError(
            f"role {name!r} is not in the cluster: roles are {', '.join(self.roles)}"
            " (router, or a name under nodes: in cluster.yaml)"
        )

    def hostname(self, role: str) -> str:
        return f"{self.name}-{role}"

    def fqdn(self, role: str) -> str:
        return f"{self.hostname(role)}.{self.domain}"

    @property
    def uplink_interface(self) -> str:
        """The router's uplink: router.uplink.interface, else wlan0 for WiFi, else the name the
        flavor's OS gives a USB Ethernet adapter (eth1, or the pattern enx* on Ubuntu)."""
        uplink = self.router.uplink
        if uplink.interface:
            return uplink.interface
        if uplink.is_wifi:
            return "wlan0"
        from ..catalog import load_flavor  # the flavor knows its OS's naming; loaded only when asked

        name = load_flavor(self.flavor).usb_ethernet
        if name == self.router.lan_interface:
            raise ConfigError(f"router.lan_interface is {name!r}, the name flavor {self.flavor} gives the USB"
                              " Ethernet uplink: set router.uplink.interface to the uplink's name")
        return name

    @property
    def inside_sources(self) -> list[str]:
        """The networks the router's LAN services answer, as its firewall lets them in: the LAN,
        the VPN when enabled, router.trusted_networks. The services' own units allow these alone
        (systemd's IPAddressAllow=), so they stay LAN-only before the firewall is loaded, or
        should its first-boot step fail."""
        return ([str(self.network.lan_cidr)] + ([str(self.vpn.subnet)] if self.vpn.enabled else [])
                + [str(n) for n in self.router.trusted_networks])

    @property
    def datastore_backups_on(self) -> bool:
        """The router pulls snapshots of the datastore: one server (SQLite) and not turned off."""
        from ..datastore import runs_sqlite  # loaded only when asked (a feature's `when:`)

        return self.kubernetes.datastore_backups.enabled and runs_sqlite(self)

    @property
    def server(self) -> Node:
        return next(n for n in self.nodes if n.role == "server")
