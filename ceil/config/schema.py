"""The section models of cluster.yaml: one frozen pydantic model per section.

Each model checks its own fields and the rules that stay inside the section (the router's two
interfaces differ, the DHCP pool lies inside the LAN); rules that span sections live on
`Cluster` in cluster.py. Error messages name the key and the value found, and say what is
expected.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from ..sshkeys import check_public_key
from ..text import check_one_line

# \Z, not $: Python's $ also matches before a final newline, and "one\n" reached the configs.
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
IFACE_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,15}\Z")


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


# /dev/sda, or the drive's stable name under /dev/disk/by-id/ (usb-SanDisk_..._0123-0:0) or by-path/.
DRIVE_RE = re.compile(r"^/dev/[A-Za-z0-9/_.:+-]+\Z")


def _drive(value: str) -> str:
    """A whole drive that its first boot wipes (router.usb_drive, nodes[].storage_device)."""
    if not DRIVE_RE.match(value) or ".." in value.split("/"):
        raise ValueError(f"{value!r} is not a device path: name the drive as /dev/sda, or by its stable name"
                         " /dev/disk/by-id/usb-...")
    name = value.rsplit("/", 1)[-1]
    if value.startswith("/dev/mmcblk") or name.startswith("mmc-") or ("/by-path/" in value and "mmc" in name):
        raise ValueError(
            f"{value} is the SD card the Pi boots from, and this drive is wiped on first boot: name the"
            " USB drive instead (usually /dev/sda; on a Pi that boots from USB the boot disk itself is"
            " /dev/sda, so the second drive is /dev/sdb; with several USB drives, its"
            " /dev/disk/by-id/usb-... name, which does not depend on the order they are found in)")
    return value


def _iface_pattern(value: str) -> str:
    """An interface name, or a prefix ending in * (a USB adapter named by its MAC: enx*)."""
    if value.endswith("*") and IFACE_RE.match(value[:-1]) and len(value) <= 15:
        return value
    if not IFACE_RE.match(value):
        raise ValueError(f"{value!r} is not a network interface name (e.g. eth1, wlan0) or a"
                         " prefix ending in * (e.g. enx* for a USB adapter Ubuntu names by its MAC)")
    return value


# Accounts every Debian-family image already has (base-passwd, systemd, openssh): cloud-init would
# modify the system account instead of making the admin (root: locked out by PermitRootLogin no).
RESERVED_USERS = {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
                  "proxy", "www-data", "backup", "list", "irc", "gnats", "_apt", "nobody", "sshd",
                  "messagebus", "syslog", "polkitd", "dnsmasq", "_chrony"}


def _user(value: str) -> str:
    _label(value)
    if value in RESERVED_USERS or value.startswith("systemd-"):
        raise ValueError(f"{value!r} is a system account on every supported image: choose another"
                         " admin name (e.g. ceil)")
    return value


def check_endpoint(value: str) -> str:
    """`host` or `host:port`: a DNS name, an IPv4 address or an IPv6 literal (bracketed with a
    port). Nothing else may reach the client config, where a newline would add a section."""
    host, port = value, None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", value)
    if m:
        host, port = m.group(1), m.group(2)
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
        ok = True
    except ValueError:
        ok = len(host) <= 253 and all(HOSTNAME_RE.match(p) for p in host.lower().split("."))
    if not ok or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise ValueError(f"{value!r} is not a host name or address, with an optional :port"
                         " (e.g. vpn.example.com, 203.0.113.7:51820 or [2001:db8::7]:51820)")
    return value


def _url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """A URL with one of `schemes`, a host (name or address) and, if given, a numeric port;
    printable ASCII only, so it can sit in any config file as one word."""
    from urllib.parse import urlsplit

    fix = f"expected {'/'.join(schemes)}://HOST[:PORT][/PATH], e.g. https://registry-1.docker.io"
    # First, before any message could quote it: a user name or password in the authority.
    authority = re.split(r"[/?#]", value.split("://", 1)[-1], maxsplit=1)[0]
    if "@" in authority:
        # Shown without them: the error reaches terminals and CI logs.
        shown = value.replace(authority, "USER:…@" + authority.rsplit("@", 1)[1], 1)
        raise ValueError(
            f"{shown!r} carries a user name or password before '@': URLs are written into plain files on"
            " the card (some stay on its boot partition), so none may hold a credential. For a private Git"
            " repository give the token as gitops.token (e.g. ${GITOPS_TOKEN}); the other URLs take none")
    if not re.fullmatch(r"[!-~]+", value):
        raise ValueError(f"{value!r} holds a space, control or non-ASCII character: {fix}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a URL ({e}): {fix}") from None
    if parts.scheme not in schemes or (parts.scheme != "file" and not parts.hostname):
        raise ValueError(f"{value!r} is not a URL: {fix}")
    if port is None and parts.netloc.endswith(":"):
        raise ValueError(f"{value!r} has an empty port: {fix}")
    if any(c in value for c in "\"'`\\<>{}|^"):
        raise ValueError(f"{value!r} holds a quote, brace or backslash, which no URL needs: {fix}")
    return value


def _token_url(value: str) -> str:
    """An API URL a secret is sent to: https, or http only to a private or loopback address."""
    from urllib.parse import urlsplit

    _url(value)
    parts = urlsplit(value)
    if parts.scheme == "http":
        try:
            private = ipaddress.ip_address(parts.hostname).is_private
        except ValueError:
            private = parts.hostname == "localhost"
        if not private:
            raise ValueError(f"{value!r}: the API token would cross the network in clear over http; use https://"
                             " (plain http only to a private address, e.g. a local stand-in)")
    return value


HttpUrl = Annotated[str, AfterValidator(_url)]
Label = Annotated[str, AfterValidator(_label)]
Domain = Annotated[str, AfterValidator(_domain)]
Iface = Annotated[str, AfterValidator(_iface)]
IfacePattern = Annotated[str, AfterValidator(_iface_pattern)]
Drive = Annotated[str, AfterValidator(_drive)]
PublicKey = Annotated[str, AfterValidator(lambda k: check_public_key(k.strip()))]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SSH(Model):
    user: Annotated[str, AfterValidator(_user)] = "ceil"
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


# ISO 3166-1 alpha-2, the country codes the WiFi regulatory database and wpa_supplicant use
# (from Debian's iso-codes, /usr/share/iso-codes/json/iso_3166-1.json, 249 codes).
ISO_COUNTRIES = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split())


class WiFi(Model):
    ssid: str = Field(min_length=1)
    psk: SecretStr
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 country code, e.g. DE")

    @field_validator("country")
    @classmethod
    def _country(cls, v: str) -> str:
        if v not in ISO_COUNTRIES:
            raise ValueError(f"{v!r} is not an ISO 3166-1 country code: give the two letters of the country"
                             " the router runs in (e.g. DE, GB, US); WiFi channels and power depend on it")
        return v

    @field_validator("ssid")
    @classmethod
    def _ssid(cls, v: str) -> str:
        size = len(v.encode())
        if size > 32:
            raise ValueError(f"{v!r} is {size} bytes in UTF-8: an SSID holds at most 32 bytes (802.11):"
                             " write the network's name exactly as your devices list it")
        return check_one_line(v, "write the network's name as your devices show it, on one line")

    @field_validator("psk")
    @classmethod
    def _psk(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if not all(32 <= ord(c) <= 126 for c in s):
            # WPA2 passphrases are printable ASCII (IEEE 802.11i, annex H); the value is not shown.
            raise ValueError("the WiFi passphrase holds a character outside printable ASCII: WPA2"
                             " passphrases are 8-63 printable ASCII characters")
        if not (8 <= len(s) <= 63 or re.fullmatch(r"[0-9a-fA-F]{64}", s)):
            raise ValueError(
                f"the WiFi passphrase has {len(s)} {'character' if len(s) == 1 else 'characters'}: WPA2 needs 8-63 characters"
                " or exactly 64 hex digits"
            )
        return v


class Uplink(Model):
    type: Literal["wifi", "ethernet"] = "wifi"
    # Unset: wlan0 for WiFi; for Ethernet the name the flavor gives a USB adapter
    # (Cluster.uplink_interface).
    interface: IfacePattern | None = None
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
    def is_wifi(self) -> bool:
        return self.type == "wifi"


class Router(Model):
    lan_interface: Iface = "eth0"
    uplink: Uplink = Field(default_factory=lambda: Uplink(type="ethernet"))
    usb_drive: Drive | None = Field(
        default=None,
        description="device wiped and used for the registry's storage and the datastore snapshots, e.g. /dev/sda",
    )
    # Networks on the uplink side (e.g. the home LAN, 192.168.1.0/24) that may reach the cluster
    # LAN and the router's LAN services through the router, given a route on the workstation
    # (`python bake.py route`). Nothing else on the uplink reaches more than SSH and the VPN.
    trusted_networks: list[ipaddress.IPv4Network] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_ifaces(self) -> Router:
        if (self.uplink.interface or ("wlan0" if self.uplink.is_wifi else None)) == self.lan_interface:
            raise ValueError(
                f"uplink interface and lan_interface are both {self.lan_interface!r}:"
                " the router needs two interfaces"
            )
        return self


def _ntp_server(value: str) -> str:
    """A host name or an address, nothing else (it becomes one word of a chrony.conf line)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        # Python takes an IPv6 zone (`fe80::1%eth0`); chrony's line and systemd's units read `%`
        # as their own syntax, and the uplink's name is the bake's to choose, not the address's.
        if getattr(address, "scope_id", None):
            raise ValueError(f"{value!r} names an interface after '%': give the server's address without it, a"
                             " global or private address, or a host name (e.g. pool.ntp.org)")
        return value
    ok = ":" not in value and len(value) <= 253 and all(HOSTNAME_RE.match(p) for p in value.lower().split("."))
    if not ok:
        raise ValueError(f"{value!r} is not an NTP server: give a host name or an address, without a port"
                         " (e.g. pool.ntp.org or 192.168.1.1)")
    return value


class Network(Model):
    lan_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/24")
    router_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.1")
    dhcp_start: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.100")
    dhcp_end: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.199")
    upstream_dns: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address("1.1.1.1"), ipaddress.IPv4Address("9.9.9.9")],
        min_length=1,
    )
    # NTP servers the router takes its time from (host names or addresses); empty: the
    # distribution's own pools (chrony.conf). Nodes always take theirs from the router.
    ntp_servers: list[str] = Field(default_factory=list)
    # Load-balancer addresses handed out by MetalLB; the first one is the ingress (Traefik).
    lb_start: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.240")

    @field_validator("ntp_servers")
    @classmethod
    def _ntp(cls, values: list[str]) -> list[str]:
        return [_ntp_server(v) for v in values]
    lb_end: ipaddress.IPv4Address = ipaddress.IPv4Address("10.42.0.250")

    @model_validator(mode="after")
    def _inside_lan(self) -> Network:
        net = self.lan_cidr
        for key in ("router_ip", "dhcp_start", "dhcp_end", "lb_start", "lb_end"):
            ip = getattr(self, key)
            if ip not in net or ip in (net.network_address, net.broadcast_address):
                raise ValueError(f"network.{key}: {ip} is not a usable address of lan_cidr {net}: pick one from"
                                 f" {net.network_address + 1} to {net.broadcast_address - 1}")
        if self.dhcp_start > self.dhcp_end:
            raise ValueError(f"network.dhcp_start {self.dhcp_start} is after dhcp_end {self.dhcp_end}: the pool runs"
                             " from dhcp_start up to dhcp_end: swap them")
        if self.lb_start > self.lb_end:
            raise ValueError(f"network.lb_start {self.lb_start} is after lb_end {self.lb_end}: the range runs from"
                             " lb_start up to lb_end: swap them")
        if self.dhcp_start <= self.router_ip <= self.dhcp_end:
            raise ValueError(f"network.router_ip {self.router_ip} lies inside the DHCP pool {self.dhcp_start}-"
                             f"{self.dhcp_end}: pick a router address outside it, or move the pool")
        if self.in_lb_pool(self.router_ip) or (
            self.dhcp_start <= self.lb_end and self.lb_start <= self.dhcp_end
        ):
            raise ValueError(
                f"network: the load-balancer range {self.lb_start}-{self.lb_end} overlaps the"
                f" router address or the DHCP pool {self.dhcp_start}-{self.dhcp_end}: move lb_start and lb_end"
                " clear of both"
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
    storage_device: Drive | None = None
    # The Pi's memory in GiB (1: Pi 3B+; Pi 4: 1-8; Pi 5: 1-16). Optional: when every node has it,
    # the bake checks that the add-ons fit (ceil/addons/fit.py, docs/addons.md "Resource fit").
    ram_gib: Literal[1, 2, 4, 8, 16] | None = None

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


class DatastoreBackups(Model):
    """Snapshots of a one-server cluster's datastore, pulled by the router (docs/k3s.md)."""

    enabled: bool = True
    every_hours: int = Field(default=6, ge=1, le=168, description="hours between two snapshots")
    keep: int = Field(default=14, ge=1, le=365, description="snapshots the router keeps (the newest)")


class Kubernetes(Model):
    # The default is a release whose binaries' digests ceil ships (k3s/digests.py): every node is
    # baked with the digest it checks k3s against.
    k3s_version: str = Field(default="v1.36.4+k3s1", pattern=r"^v\d+\.\d+\.\d+\+k3s\d+$",
                             description="a k3s release, e.g. v1.36.4+k3s1")
    # k3s's defaults (10.42.0.0/16, 10.43.0.0/16) would swallow the default LAN, so ceil moves them.
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.52.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.53.0.0/16")
    k3s_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the k3s binary; default: the release's published digest, which ceil"
                    " ships for the releases it knows (python bake.py k3s digests)",
    )
    # Raspberry Pi OS boots a Pi 5 with a 16K-page kernel. arm64 container images are built and
    # tested on 4K pages, and those linked with jemalloc (built for 4K) abort at start there
    # ("<jemalloc>: Unsupported system page size"). 4k: the nodes' config.txt has a Pi 5 boot the
    # image's 4K-page kernel instead (the router runs no containers and keeps the default). Other
    # flavors run 4K pages on a Pi 5 already, and other Pis always do.
    pi5_page_size: Literal["4k", "16k"] = "4k"
    # How pod traffic crosses between nodes. flannel's VXLAN (k3s's default) is unauthenticated:
    # a device on the LAN that takes a node's address can put packets into the pod network.
    # wireguard-native encrypts it and accepts only the nodes' keys (exchanged through the API
    # server); it needs the kernel's WireGuard, which the router's VPN needs too, and costs CPU on
    # a Pi 3. Verified only on hardware (the QEMU nodes run no flannel).
    flannel_backend: Literal["vxlan", "wireguard-native"] = "vxlan"
    # With one server k3s keeps the cluster in SQLite on that one card; with three or more, etcd
    # survives a lost server, and these are not taken.
    datastore_backups: DatastoreBackups = Field(default_factory=DatastoreBackups)


class VPN(Model):
    enabled: bool = True
    port: int = Field(default=51820, ge=1, le=65535)
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.100.0/24")
    # Public name or address clients dial; default: the DDNS record when DDNS is on.
    endpoint: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)


class DDNS(Model):
    enabled: bool = False
    api_token: SecretStr | None = None
    zone: Domain | None = None
    record: Domain | None = None
    # Every request carries api_token: HTTPS, or plain HTTP only to a private address (a local
    # stand-in or proxy, as the test beds use), never across the internet in clear.
    api_url: Annotated[str, AfterValidator(_token_url)] = "https://api.cloudflare.com/client/v4"
    # Where the router learns its public address (an endpoint that answers with the bare IP).
    ip_url: HttpUrl = "https://api.ipify.org"
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
                raise ValueError(f"ddns.record {self.record!r} is not inside ddns.zone {self.zone!r}: the record is"
                                 f" the zone itself or a name under it, e.g. home.{self.zone}")
        return self


class Tunnel(Model):
    """A Cloudflare Tunnel (add-on `tunnel`, the seed's ngrok today): ingress hosts you route to it
    in Cloudflare's dashboard are reachable from the internet with no port open on the router."""

    enabled: bool = False
    # The remotely-managed tunnel's token (Zero Trust > Networks > Tunnels > your tunnel), e.g.
    # ${CLOUDFLARE_TUNNEL_TOKEN}: it becomes a Secret in the cluster, never a rendered manifest.
    token: SecretStr | None = None
    replicas: int = Field(default=2, ge=1, le=4)

    @model_validator(mode="after")
    def _complete(self) -> Tunnel:
        if not self.enabled:
            return self
        token = self.token.get_secret_value().strip() if self.token else ""
        if not token:
            raise ValueError("tunnel is enabled but tunnel.token is missing: the tunnel's token from Cloudflare's"
                             " dashboard (Networks > Tunnels > your tunnel > install), e.g. token: ${CLOUDFLARE_TUNNEL_TOKEN}")
        if not re.fullmatch(r"[A-Za-z0-9+/=_-]{20,4096}", token):
            raise ValueError("tunnel.token is not a Cloudflare tunnel token (one base64 word, no spaces or line"
                             " breaks): copy it again from the dashboard's install command (after --token)")
        return self


class GitOps(Model):
    """Flux (add-on `gitops`): the cluster keeps itself in sync with a Git repository you name.
    Its Kustomization applies what `path` holds on `branch` every `interval` and prunes what was
    removed there. HTTPS only: an SSH URL would need the server's host key pinned as well."""

    enabled: bool = False
    url: HttpUrl | None = None
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]{1,100}$")
    path: str = Field(default="./", pattern=r"^\./([A-Za-z0-9._-]+/?)*$")
    interval: str = Field(default="5m", pattern=r"^[0-9]+(s|m|h)$")
    # For a private repository: an access token (GitHub, Gitea, GitLab), e.g. ${GITOPS_TOKEN}; it
    # becomes a Secret in the cluster (user `username`), never a rendered manifest.
    token: SecretStr | None = None
    username: str = Field(default="git", pattern=r"^[A-Za-z0-9._-]{1,64}$")

    @model_validator(mode="after")
    def _complete(self) -> GitOps:
        if not self.enabled:
            return self
        if not self.url:
            raise ValueError("gitops is enabled but gitops.url is missing: the HTTPS address of the repository"
                             " Flux should apply, e.g. url: https://github.com/you/cluster-config.git")
        if not self.url.startswith("https://"):
            raise ValueError(f"gitops.url {self.url!r}: use the repository's https:// address (Flux needs the"
                             " server's pinned host key for SSH, which ceil does not manage)")
        if self.token is not None and not re.fullmatch(r"[!-~]{8,1024}", self.token.get_secret_value().strip()):
            raise ValueError("gitops.token is not an access token (one word of printable ASCII, 8 characters or"
                             " more): copy it again, e.g. token: ${GITOPS_TOKEN}")
        return self


class Registry(Model):
    enabled: bool = True
    port: int = Field(default=5000, ge=1, le=65535)
    mirror_port: int = Field(default=5001, ge=1, le=65535)
    # The private registry's writable side: pushes need the `push` account (bake.py registry);
    # `port` serves the same images read-only to the nodes' `pull` account.
    push_port: int = Field(default=5002, ge=1, le=65535)
    upstream: HttpUrl = "https://registry-1.docker.io"


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

    url: Annotated[str, AfterValidator(lambda v: _url(v, ("http", "https", "file")))]
    # One word each: a space or newline here would add words (or lines) to the sources line.
    suite: str = Field(pattern=r"^(\./|[A-Za-z0-9][A-Za-z0-9._/-]*)$",
                       description="e.g. noble, trixie; './' for a flat repository")
    components: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]] = Field(
        default_factory=lambda: ["main"])
    # Only for local test archives: skips signature checks.
    trusted: bool = False

    def sources_line(self) -> str:
        opts = " [trusted=yes]" if self.trusted else ""
        comps = "" if self.suite.endswith("/") else " " + " ".join(self.components)
        return f"deb{opts} {self.url} {self.suite}{comps}"
