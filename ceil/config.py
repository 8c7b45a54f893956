"""cluster.yaml: the one typed schema, checked at load.

Everything a bake needs is read from here; every error names the dotted key, the value found,
and what is expected (`nodes[2].name: 'Two_' is not a valid hostname ...`). Secrets are
`SecretStr` and may be written as `${ENV_VAR}` so cluster.yaml can be shared without them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .sshkeys import check_public_key

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
IFACE_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,15}$")


def _label(value: str) -> str:
    if not HOSTNAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid hostname (RFC 1123): use 1-63 lowercase letters, digits"
            " and '-', not starting or ending with '-'"
        )
    return value


def _domain(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(HOSTNAME_RE.match(p) for p in labels):
        raise ValueError(
            f"{value!r} is not a valid DNS domain: dot-separated RFC 1123 labels, e.g. ceil.internal"
        )
    return value


def _iface(value: str) -> str:
    if not IFACE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid network interface name (e.g. eth0, wlan0)")
    return value


Label = Annotated[str, AfterValidator(_label)]
Domain = Annotated[str, AfterValidator(_domain)]
Iface = Annotated[str, AfterValidator(_iface)]
PublicKey = Annotated[str, AfterValidator(lambda k: check_public_key(k.strip()))]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SSH(Model):
    user: Label = "ceil"
    authorized_keys: list[PublicKey] = Field(default_factory=list)
    authorized_key_files: list[Path] = Field(default_factory=list)

    @field_validator("authorized_key_files")
    @classmethod
    def _files_exist(cls, files: list[Path]) -> list[Path]:
        for f in files:
            if not f.expanduser().is_file():
                raise ValueError(f"{str(f)!r} does not exist: give the path of a public key (.pub)")
        return files

    @model_validator(mode="after")
    def _at_least_one(self) -> SSH:
        if not self.all_keys():
            raise ValueError(
                "no SSH key given: ceil images have no passwords, so add your public key under"
                " ssh.authorized_keys (e.g. the contents of ~/.ssh/id_ed25519.pub)"
                " or ssh.authorized_key_files"
            )
        return self

    def all_keys(self) -> list[str]:
        keys = list(self.authorized_keys)
        for f in self.authorized_key_files:
            for line in f.expanduser().read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    keys.append(check_public_key(line.strip()))
        return keys


class WiFi(Model):
    ssid: str = Field(min_length=1, max_length=32)
    psk: SecretStr
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 country code, e.g. DE")

    @field_validator("psk")
    @classmethod
    def _psk(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if not (8 <= len(s) <= 63 or re.fullmatch(r"[0-9a-fA-F]{64}", s)):
            raise ValueError(
                f"the WiFi passphrase has {len(s)} characters: WPA2 needs 8-63 characters"
                " or exactly 64 hex digits"
            )
        return v


class Uplink(Model):
    type: Literal["wifi", "ethernet"] = "wifi"
    interface: Iface | None = None
    wifi: WiFi | None = None

    @model_validator(mode="after")
    def _wifi_needs_credentials(self) -> Uplink:
        if self.type == "wifi" and self.wifi is None:
            raise ValueError(
                "uplink type 'wifi' needs router.uplink.wifi with ssid, psk and country"
                " (or set router.uplink.type: ethernet)"
            )
        return self

    @property
    def iface(self) -> str:
        return self.interface or ("wlan0" if self.type == "wifi" else "eth1")


class Router(Model):
    lan_interface: Iface = "eth0"
    uplink: Uplink = Field(default_factory=lambda: Uplink(type="ethernet"))
    usb_drive: str | None = Field(
        default=None,
        pattern=r"^/dev/[A-Za-z0-9/_-]+$",
        description="device wiped and used for registry storage, e.g. /dev/sda",
    )

    @model_validator(mode="after")
    def _distinct_ifaces(self) -> Router:
        if self.uplink.iface == self.lan_interface:
            raise ValueError(
                f"uplink interface and lan_interface are both {self.lan_interface!r}:"
                " the router needs two interfaces"
            )
        return self


class Network(Model):
    lan_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/24")
    router_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.1")
    dhcp_start: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.100")
    dhcp_end: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.199")
    upstream_dns: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address("1.1.1.1"), ipaddress.IPv4Address("9.9.9.9")],
        min_length=1,
    )
    # Load-balancer addresses handed out by MetalLB; the first one is the ingress (Traefik).
    lb_start: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.240")
    lb_end: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.250")

    @model_validator(mode="after")
    def _inside_lan(self) -> Network:
        net = self.lan_cidr
        for key in ("router_ip", "dhcp_start", "dhcp_end", "lb_start", "lb_end"):
            ip = getattr(self, key)
            if ip not in net or ip in (net.network_address, net.broadcast_address):
                raise ValueError(f"network.{key}: {ip} is not a usable address of lan_cidr {net}")
        if self.dhcp_start > self.dhcp_end:
            raise ValueError(f"network.dhcp_start {self.dhcp_start} is after dhcp_end {self.dhcp_end}")
        if self.lb_start > self.lb_end:
            raise ValueError(f"network.lb_start {self.lb_start} is after lb_end {self.lb_end}")
        if self.dhcp_start <= self.router_ip <= self.dhcp_end:
            raise ValueError(f"network.router_ip {self.router_ip} lies inside the DHCP pool")
        if self.in_lb_pool(self.router_ip) or (
            self.dhcp_start <= self.lb_end and self.lb_start <= self.dhcp_end
        ):
            raise ValueError(
                f"network: the load-balancer range {self.lb_start}-{self.lb_end} overlaps the"
                f" router address or the DHCP pool {self.dhcp_start}-{self.dhcp_end}"
            )
        return self

    def in_dhcp_pool(self, ip: ipaddress.IPv4Address) -> bool:
        return self.dhcp_start <= ip <= self.dhcp_end

    def in_lb_pool(self, ip: ipaddress.IPv4Address) -> bool:
        return self.lb_start <= ip <= self.lb_end

    @property
    def ingress_ip(self) -> ipaddress.IPv4Address:
        return self.lb_start


class Node(Model):
    name: Label
    role: Literal["server", "agent"] = "agent"
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = Field(default=None, pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
    # Thumb drive given to Longhorn; wiped on first boot, so it must be named explicitly.
    storage_device: str | None = Field(default=None, pattern=r"^/dev/[A-Za-z0-9/_-]+$")

    @field_validator("name")
    @classmethod
    def _not_router(cls, v: str) -> str:
        if v == "router":
            raise ValueError("'router' is the router's role name: pick another node name")
        return v

    @field_validator("mac", mode="before")
    @classmethod
    def _lower_mac(cls, v: Any) -> Any:
        return v.lower().replace("-", ":") if isinstance(v, str) else v


class Kubernetes(Model):
    k3s_version: str = Field(default="v1.31.4+k3s1", pattern=r"^v\d+\.\d+\.\d+\+k3s\d+$")
    # k3s's defaults (10.42.0.0/16, 10.43.0.0/16) would swallow the default LAN, so ceil moves them.
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.52.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.53.0.0/16")
    k3s_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the k3s binary; default: the release's published sha256sum file",
    )


class VPN(Model):
    enabled: bool = True
    port: int = Field(default=51820, ge=1, le=65535)
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.100.0/24")
    # Public name or address clients dial; default: the DDNS record when DDNS is on.
    endpoint: str | None = None


class DDNS(Model):
    enabled: bool = False
    api_token: SecretStr | None = None
    zone: Domain | None = None
    record: Domain | None = None
    api_url: str = Field(default="https://api.cloudflare.com/client/v4", pattern=r"^https?://")
    # Where the router learns its public address (an endpoint that answers with the bare IP).
    ip_url: str = Field(default="https://api.ipify.org", pattern=r"^https?://")
    interval_minutes: int = Field(default=5, ge=1, le=1440)

    @model_validator(mode="after")
    def _complete(self) -> DDNS:
        if self.enabled:
            missing = [k for k in ("api_token", "zone", "record") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"ddns is enabled but {', '.join('ddns.' + m for m in missing)} is missing"
                    " (api_token: a Cloudflare token scoped to Zone.DNS edit, e.g. ${CLOUDFLARE_API_TOKEN})"
                )
            if not (self.record == self.zone or self.record.endswith("." + self.zone)):
                raise ValueError(f"ddns.record {self.record!r} is not inside ddns.zone {self.zone!r}")
        return self


class Registry(Model):
    enabled: bool = True
    port: int = Field(default=5000, ge=1, le=65535)
    mirror_port: int = Field(default=5001, ge=1, le=65535)
    upstream: str = Field(default="https://registry-1.docker.io", pattern=r"^https?://")


class PiWatch(Model):
    enabled: bool = True
    port: int = Field(default=8080, ge=1, le=65535)


class Addons(Model):
    enabled: bool = True
    # Add-on names to skip or to force on; see addons/<name>/addon.yaml for the list.
    disable: list[str] = Field(default_factory=list)
    enable: list[str] = Field(default_factory=list)


DEFAULT_NODES = (
    {"name": "one", "role": "server"},
    {"name": "two", "role": "agent"},
    {"name": "three", "role": "agent"},
    {"name": "four", "role": "agent"},
)


class AptMirror(Model):
    """A package archive used for first-boot installs instead of the flavor's own sources."""

    url: str = Field(pattern=r"^(https?|file)://\S+$")
    suite: str = Field(description="e.g. noble, trixie; './' for a flat repository")
    components: list[str] = Field(default_factory=lambda: ["main"])
    # Only for local test archives: skips signature checks.
    trusted: bool = False

    def sources_line(self) -> str:
        opts = " [trusted=yes]" if self.trusted else ""
        comps = "" if self.suite.endswith("/") else " " + " ".join(self.components)
        return f"deb{opts} {self.url} {self.suite}{comps}"


class Cluster(Model):
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
    addons: Addons = Field(default_factory=Addons)

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
        names, ips, macs = set(), {}, set()
        for i, n in enumerate(self.nodes):
            where = f"nodes[{i}]"
            if n.name in names:
                raise ValueError(f"{where}.name: {n.name!r} is used by two nodes: node names must be unique")
            names.add(n.name)
            ip = n.ip
            if ip is None:
                raise ValueError(f"{where}.ip: no free address left in {self.network.lan_cidr}")
            if ip not in self.network.lan_cidr or ip in (
                self.network.lan_cidr.network_address, self.network.lan_cidr.broadcast_address
            ):
                raise ValueError(f"{where}.ip: {ip} is outside the LAN {self.network.lan_cidr}")
            if ip == self.network.router_ip:
                raise ValueError(f"{where}.ip: {ip} is the router's address")
            if self.network.in_dhcp_pool(ip):
                raise ValueError(
                    f"{where}.ip: {ip} lies inside the DHCP pool {self.network.dhcp_start}-"
                    f"{self.network.dhcp_end}: pick a fixed address outside it"
                )
            if self.network.in_lb_pool(ip):
                raise ValueError(f"{where}.ip: {ip} lies inside the load-balancer range")
            if ip in ips:
                raise ValueError(f"{where}.ip: {ip} is also the address of node {ips[ip]!r}")
            ips[ip] = n.name
            if n.mac and n.mac in macs:
                raise ValueError(f"{where}.mac: {n.mac} is used by two nodes")
            macs.add(n.mac)
        if not any(n.role == "server" for n in self.nodes):
            raise ValueError("nodes: no node has role 'server': one node must run the k3s server")
        self._check_cidrs()
        return self

    def _check_cidrs(self) -> None:
        nets = {
            "network.lan_cidr": self.network.lan_cidr,
            "kubernetes.cluster_cidr": self.kubernetes.cluster_cidr,
            "kubernetes.service_cidr": self.kubernetes.service_cidr,
        }
        if self.vpn.enabled:
            nets["vpn.subnet"] = self.vpn.subnet
        keys = list(nets)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if nets[a].overlaps(nets[b]):
                    raise ValueError(f"{a} {nets[a]} overlaps {b} {nets[b]}: the ranges must be disjoint")

    # ---- derived facts used by renderers -------------------------------------------------

    @property
    def roles(self) -> list[str]:
        return ["router", *(n.name for n in self.nodes)]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(
            f"role {name!r} is not in the cluster: roles are {', '.join(self.roles)}"
            " (router, or a name under nodes: in cluster.yaml)"
        )

    def hostname(self, role: str) -> str:
        return f"{self.name}-{role}"

    def fqdn(self, role: str) -> str:
        return f"{self.hostname(role)}.{self.domain}"

    @property
    def server(self) -> Node:
        return next(n for n in self.nodes if n.role == "server")


# ---- loading ---------------------------------------------------------------------------


def _resolve_env(obj: Any, path: str = "") -> Any:
    """Replace `${VAR}` strings by the environment's value; a missing variable is an error."""
    if isinstance(obj, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_env(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str):
        m = ENV_REF_RE.match(obj.strip())
        if m:
            var = m.group(1)
            if var not in os.environ:
                raise ConfigError(
                    f"{path}: refers to ${{{var}}} but the environment variable {var} is not set:"
                    f" export {var}=... before baking, or write the value in cluster.yaml"
                )
            return os.environ[var]
    return obj


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue  # pydantic's internal step names, not keys
        else:
            out += f".{part}" if out else str(part)
    return out


def _yaml_line(doc: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node along `loc` (so errors point into the file)."""
    node, line = doc, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


PATH_IN_MSG_RE = re.compile(r"^((?:[a-z_]+(?:\[\d+\])?\.)*[a-z_]+(?:\[\d+\])?):? ")


def _path_parts(dotted: str) -> tuple:
    parts: list = []
    for m in re.finditer(r"([a-z_]+)|\[(\d+)\]", dotted):
        parts.append(m.group(1) if m.group(1) else int(m.group(2)))
    return tuple(parts)


def _describe(err: dict, doc: yaml.Node | None) -> str:
    loc = _format_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    raw_loc = tuple(p for p in err["loc"] if not str(p).startswith("function"))
    # Cross-field checks name their own (more precise) key path at the start of the message.
    m = PATH_IN_MSG_RE.match(msg)
    if err["type"] == "value_error" and m and ("." in m.group(1) or "[" in m.group(1)) and (
        m.group(1).split(".")[0].split("[")[0] in Cluster.model_fields
    ):
        line = _yaml_line(doc, _path_parts(m.group(1)))
        where = f" (line {line})" if line else ""
        return f"{m.group(1)}{where}: {msg[m.end():]}"
    if err["type"] == "extra_forbidden":
        msg = f"unknown key (typo?): {loc.rsplit('.', 1)[-1]!r} is not a setting here"
    elif err["type"] == "missing":
        msg = "is required but missing"
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        shown = "<secret>" if "psk" in loc or "token" in loc else repr(err["input"])
        msg = f"{shown}: {msg}"
    line = _yaml_line(doc, raw_loc)
    where = f" (line {line})" if line else ""
    return f"{loc or '(top level)'}{where}: {msg}"


def parse_cluster(text: str, source: str = "cluster.yaml") -> Cluster:
    try:
        doc = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top, found {type(data).__name__}")
    data = _resolve_env(data)
    try:
        return Cluster.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, doc) for err in e.errors(include_url=False)]
        raise ConfigError(f"{source} is not valid:\n  " + "\n  ".join(lines)) from None


def load_cluster(path: Path) -> Cluster:
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: copy cluster.example.yaml to {path} and edit it,"
            " or run `python bake.py init`"
        )
    return parse_cluster(path.read_text(), str(path))


def config_hash(path: Path) -> str:
    """sha256 of the config file as written (recorded in each image's manifest)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
