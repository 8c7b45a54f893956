"""`bake.py init`: ask a few questions, write cluster.yaml (0600) and generate secrets/.

Every answer has a default or a flag, so scripts can run it with --yes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import click
import yaml
from rich.markup import escape

from .catalog import for_pis, load_flavor
from .compat import check_secrets_format, cluster_made, router_contract
from .config import Cluster, parse_cluster
from .config.cluster import CLUSTER_FORMAT
from .features import preflight, with_feature_problems
from .errors import CeilError, ConfigError
from .features import RoleContext, render_features
from .secrets import SecretStore
from .sshkeys import check_public_key
from .ui import console

NODE_NAMES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _default_key() -> Path | None:
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        p = Path.home() / ".ssh" / name
        if p.is_file():
            return p
    return None


def read_public_key(path: str) -> tuple[Path, str]:
    """(the file, its first line as a checked public key). A wrong path or a file that holds no
    public key raises click.BadParameter saying which: the prompt shows it and asks again."""
    key_file = Path(path).expanduser()
    if not key_file.is_file():
        raise click.BadParameter(f"{key_file} does not exist: give the path of your public key (.pub)")
    try:
        return key_file, check_public_key((key_file.read_text().strip().splitlines() or [""])[0])
    except (ValueError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{key_file}: {e}") from None


HEADER = "# Written by `bake.py init`; every key is explained in cluster.example.yaml.\n"


RAM_CHOICES = ["1", "2", "4", "8", "16"]  # nodes[].ram_gib: the Pis' memory sizes


def build_config(name: str, flavor: str, key: str, uplink: str, ssid: str | None, psk: str | None,
                 country: str | None, nodes: int, k3s_sha256: str | None = None, ram_gib: int | None = None) -> dict:
    cfg: dict = {
        "format": CLUSTER_FORMAT,
        "name": name,
        "flavor": flavor,
        "ssh": {"authorized_keys": [key]},
        "router": {"lan_interface": "eth0", "uplink": {"type": uplink}},
        "nodes": [{"name": n, "role": "server" if i == 0 else "agent", "ip": f"10.42.0.{11 + i}",
                   **({"ram_gib": ram_gib} if ram_gib else {})}
                  for i, n in enumerate(NODE_NAMES[:nodes])],
    }
    if uplink == "wifi":
        cfg["router"]["uplink"].update(interface="wlan0", wifi={"ssid": ssid, "psk": psk, "country": country})
    else:
        cfg["router"]["uplink"]["interface"] = "eth1"
    if not load_flavor(flavor).python_tag:  # PiWatch's wheels need it (hypriot-1.12.3 has none)
        cfg["piwatch"] = {"enabled": False}
    if k3s_sha256:
        cfg["kubernetes"] = {"k3s_sha256": k3s_sha256}
    return cfg


def generate_secrets(cluster: Cluster, store: SecretStore) -> None:
    """Render every role's payload once (and throw it away): that creates all shared secrets."""
    flavor = load_flavor(cluster.flavor)
    for role in cluster.roles:
        with tempfile.TemporaryDirectory() as d:
            ctx = RoleContext(cluster, role, flavor, store)
            render_features(ctx, Path(d))


# Where each key init writes came from: the option (or the question it answers).
ANSWERED_BY = {"name": "--name", "flavor": "--flavor", "router.uplink.wifi.ssid": "--ssid",
               "router.uplink.wifi.country": "--country", "router.uplink.wifi.psk": "the passphrase",
               "vpn.endpoint": "--vpn-endpoint", "ssh.authorized_keys": "--ssh-key-file",
               "kubernetes.k3s_sha256": "--k3s-sha256"}


# Settings a refusal proposes, as init's options set them.
SETTINGS_AS_OPTIONS = {"router.uplink.type: ethernet": "--uplink ethernet",
                       "flavor raspios-trixie": "--flavor raspios-trixie",
                       "set kubernetes.k3s_sha256 to": "pass --k3s-sha256 with"}


def answers_refused(message: str, answered_by: dict[str, str] = ANSWERED_BY) -> str:
    """The schema's report ("key (line N): ...") or the features' checks' ("key: ...") on what init
    was about to write, in terms of the user's answers: the file's line numbers point into a
    cluster.yaml that was never written, and the settings proposed are set by options here."""
    lines = message.splitlines()[1:]
    said = []
    for line in lines:
        m = re.match(r"^(\s*)([\w.\[\]]+)(?: \(line \d+\))?:", line)
        if m and (m.group(2) in answered_by or "(line " in m.group(0)):
            key = re.sub(r"\[\d+\]$", "", m.group(2))
            line = f"{m.group(1)}{m.group(2)} ({answered_by.get(key, 'answer')}):{line[m.end():]}"
        for setting, option in SETTINGS_AS_OPTIONS.items():
            line = line.replace(setting, option)
        said.append(line)
    return "these answers cannot make a valid cluster.yaml (nothing was written):\n" + "\n".join(said)


@click.command("init")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("cluster.yaml"), show_default=True,
              help="Where to write the cluster description (secrets/ goes beside it).")
@click.option("--name", default="ceil", show_default=True, help="Cluster name (host names become NAME-router, NAME-one, ...).")
@click.option("--flavor", type=click.Choice(for_pis()),
              default="ubuntu-24.04-raspi", show_default=True,
              help="The base OS image every card is baked from (`python bake.py flavors` describes each; README,"
                   " \"Bake\", says why the default).")
@click.option("--ssh-key-file", type=click.Path(path_type=Path, dir_okay=False), help="Your SSH public key [default: ~/.ssh/id_ed25519.pub].")
@click.option("--uplink", type=click.Choice(["wifi", "ethernet"]), help="How the router reaches the internet.")
@click.option("--ssid", help="WiFi network name (uplink wifi).")
@click.option("--country", help="WiFi country code, e.g. DE (uplink wifi).")
@click.option("--nodes", type=click.IntRange(1, len(NODE_NAMES)), help="How many k3s nodes (the first is the server).")
@click.option("--ram-gib", type=click.Choice(RAM_CHOICES), help="Each node's memory in GiB (1: Pi 3; 2, 4, 8, 16: Pi 4"
              " or 5), so the bake checks that the chosen add-ons fit [asked; with --yes: unknown, warned at bake].")
@click.option("--vpn-endpoint", metavar="HOST[:PORT]", help="Where VPN clients dial the router: its public"
              " name or address, or on the home network its name there [default: NAME-router].")
@click.option("--vpn-client", "vpn_client", default="laptop", show_default=True, metavar="NAME",
              help="The first VPN client, baked into the router (empty: none).")
@click.option("--k3s-sha256", metavar="HEX", help="The k3s binary's sha256, for an architecture ceil ships no"
              " digest for (hypriot-1.12.3, armhf: the k3s-armhf line of the release's sha256sum-arm.txt;"
              " `python bake.py k3s digests` lists what ceil has).")
@click.option("--yes", is_flag=True, help="Take defaults for everything not given; ask nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing cluster.yaml.")
def init_command(config_path, name, flavor, ssh_key_file, uplink, ssid, country, nodes, ram_gib, vpn_endpoint,
                 vpn_client, k3s_sha256, yes, force):
    """Write a cluster.yaml from a few questions and generate the cluster's secrets/."""
    if config_path.is_dir():
        raise CeilError(f"--config {config_path} is a folder: give the file to write, e.g. --config {config_path / 'cluster.yaml'}")
    if config_path.exists() and not force:
        raise CeilError(f"{config_path} exists: edit it, or run init with --force to start over")
    # A folder that does not exist yet is made (at the end, with the file); a file in its way is refused now.
    blocker = next(p for p in config_path.parents if p.exists())  # "." or "/" at the latest
    if not blocker.is_dir():
        raise CeilError(f"--config {config_path}: {blocker} is a file, not a folder: choose another path for cluster.yaml")
    if vpn_endpoint is not None and not vpn_endpoint.strip():  # a script's unset variable: not the default
        raise click.BadParameter("empty: give the name or address VPN clients dial (e.g. vpn.example.com),"
                                 " or leave the option out for NAME-router", param_hint="--vpn-endpoint")
    ask = (lambda text, **kw: kw.get("default")) if yes else click.prompt
    key_file = ssh_key_file or _default_key()
    if key_file is None and yes:
        raise CeilError("no SSH public key found in ~/.ssh: create one with ssh-keygen -t ed25519, or pass --ssh-key-file")
    key_default = str(key_file) if key_file else None
    if yes:
        try:
            key_file, key = read_public_key(key_default)
        except click.BadParameter as e:
            raise CeilError(e.message) from None
    else:  # a wrong path is asked again, as the typed questions below are
        key_file, key = click.prompt("SSH public key file", default=key_default, value_proc=read_public_key)
    uplink = uplink or ask("Router uplink", default="wifi", type=click.Choice(["wifi", "ethernet"]))
    psk = from_env = None
    if uplink == "wifi":
        ssid = ssid or ask("WiFi network name (SSID)", default=None)
        country = (country or ask("WiFi country code", default="DE")).upper()
        from_env = os.environ.get("CEIL_WIFI_PSK")
        psk = from_env or (None if yes else click.prompt("WiFi passphrase", hide_input=True))
        if not ssid or not psk:
            raise CeilError("uplink wifi needs an SSID (--ssid) and a passphrase (the prompt, or CEIL_WIFI_PSK"
                            " in the environment); or choose --uplink ethernet")
    nodes = nodes or int(ask("Number of k3s nodes", default=4, type=click.IntRange(1, len(NODE_NAMES))))
    # The add-ons' fit is checked against it (a Pi 3's 1 GiB does not hold the default set);
    # --yes leaves it unknown rather than guess (the bake then warns that it could not check). No
    # default: Enter on a guessed 4 GiB let a Pi 3 cluster pass the fit check it exists for.
    if ram_gib is None and not yes:
        ram_gib = click.prompt("Memory of each node in GiB (1: Pi 3; 2, 4, 8, 16: Pi 4 or 5; printed on the board"
                               " or `free -g` on a running Pi)", type=click.Choice(RAM_CHOICES))
    # The way in from the workstation (README, "Your way in"): a VPN client that works from the
    # home network at once (the router's name there), or from anywhere with a public name.
    endpoint_by_name = not vpn_endpoint  # its default, NAME-router, breaks with a bad --name
    vpn_endpoint = vpn_endpoint or ask("VPN endpoint (the router's public name, or its name on your network)",
                                       default=f"{name}-router")
    if vpn_client:
        from .wireguard import add_client, client_secret_name

        client_name = client_secret_name(vpn_client)  # a bad name is refused before anything is written
    cfg = build_config(name, flavor, key, uplink, ssid, psk, country, nodes, k3s_sha256, int(ram_gib) if ram_gib else None)
    cfg["vpn"] = {"endpoint": vpn_endpoint}
    # Everything is checked before anything is written: a refused value leaves no cluster.yaml and
    # no half of secrets/ behind.
    try:
        cluster = parse_cluster(HEADER + yaml.safe_dump(cfg, sort_keys=False), str(config_path))
    except ConfigError as e:
        by = {**ANSWERED_BY, "vpn.endpoint": "--vpn-endpoint, by default --name's NAME-router"} if endpoint_by_name else ANSWERED_BY
        raise ConfigError(answers_refused(str(with_feature_problems(e)), by)) from None
    try:
        preflight(cluster, cluster.roles, load_flavor(cluster.flavor))
    except ConfigError as e:
        raise ConfigError(answers_refused(str(e))) from None
    if uplink == "wifi" and from_env:
        # A secret from the environment stays there: the file names the variable, as a user would.
        cfg["router"]["uplink"]["wifi"]["psk"] = "${CEIL_WIFI_PSK}"
    text = HEADER + yaml.safe_dump(cfg, sort_keys=False)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the WiFi passphrase
    with os.fdopen(fd, "w") as f:
        f.write(text)
    store = SecretStore(config_path.parent / "secrets")
    client_path = None
    with store.held():
        new_cluster = router_contract(store) is None  # --force beside a baked cluster's secrets/ reuses them
        if vpn_client:  # made before the router's secrets: the router is baked knowing this peer
            add_client(cluster, store, vpn_client)
            client_path = store.path(client_name)
        generate_secrets(cluster, store)
        check_secrets_format(store)
        if new_cluster:
            cluster_made(store)
    # Only secrets/ ignores itself; cluster.yaml is ignored by the repository's .gitignore only at its root.
    holds = (" (0600; it holds the WiFi passphrase you typed: keep it out of git)" if uplink == "wifi" and not from_env
             else " (0600)")
    console.print(f"[green]wrote {escape(str(config_path))}[/green]{escape(holds)} and {escape(str(store.root))}/"
                  " (0600, git-ignored)")
    if client_path:
        console.print(escape(f"VPN client {vpn_client!r}: {client_path} (import it in WireGuard, or wg-quick up)"))
    if uplink == "wifi" and from_env:
        console.print(escape("cluster.yaml names ${CEIL_WIFI_PSK}: keep it exported in the shell that bakes"))
    console.print(escape("next: python bake.py --all" + ("" if config_path == Path("cluster.yaml") else f" --config {config_path}")))
