"""The workstation's ways into the cluster: `bake.py route` and `bake.py ssh NAME`.

Three paths reach the cluster LAN from the workstation (README, "Your way in"):
- on the cluster LAN itself, or through the VPN (`bake.py vpn-client`): every address answers;
- from a network named in `router.trusted_networks` (the home LAN), with a route to
  `network.lan_cidr` through the router's uplink address: `bake.py route [--add]`, as the
  seed's `workstation-route-add` did;
- from anywhere else on the uplink side only the router's SSH answers: `bake.py ssh NAME --via
  ROUTER_ADDRESS` jumps through it.

Whichever path, SSH checks the machines' host keys against the cluster's own known_hosts file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .config import Cluster, load_cluster
from .errors import CeilError
from .fetch import cache_root
from .snapshot import SSH_FAILED  # ssh's own exit status: it could not connect or log in
from .tools import require
from .ui import console

config_option = click.option("--config", "config_path", default="cluster.yaml", show_default=True,
                             type=click.Path(path_type=Path), help="The cluster description.")
secrets_option = click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
                              help="The secrets folder the machines' host keys are read from"
                                   " [default: secrets/ next to the config].")


def _pin_keys(cluster: Cluster, config_path: Path, secrets_path: Path | None) -> None:
    pin_from_secrets(cluster, secrets_path or config_path.resolve().parent / "secrets")


def machines_named(config_path: Path, secrets_path: Path | None, only: tuple[str, ...],
                   nodes_only: bool = False) -> tuple[Cluster, list[str]]:
    """The cluster and the machines `--on` names (every one by default, every node with
    `nodes_only`), each checked against cluster.yaml, with their host keys pinned from secrets/:
    what `run` and `reboot` start with."""
    cluster = load_cluster(config_path, env_optional=True)
    if nodes_only and only:
        raise CeilError("--nodes and --on both choose machines: give one of them")
    names = list(only) or ([n.name for n in cluster.nodes] if nodes_only else cluster.roles)
    for name in names:
        if name != "router":
            cluster.node(name)
    _pin_keys(cluster, config_path, secrets_path)
    return cluster, names


# ---- route -------------------------------------------------------------------------------


def route_command_for(platform: str, lan: str, via: str) -> list[str]:
    """The command that routes the cluster LAN through the router on this platform."""
    if platform.startswith("linux"):
        return ["ip", "route", "replace", lan, "via", via]
    if platform == "darwin":
        # `add` fails when a route exists; `change` then updates it (see add_route).
        return ["route", "-n", "add", "-net", lan, via]
    raise CeilError(f"no route command for this system ({platform}): route {lan} via {via} by hand")


def router_address(cluster: Cluster, via: str | None, resolve: Callable[[str], str] = socket.gethostbyname) -> str:
    """--via (an address, or a name this machine resolves), else the router's name by mDNS
    (`ceil-router.local`) or the home network's DNS."""
    if via:
        try:
            try:
                address = ipaddress.IPv4Address(via)
            except ValueError:
                if re.fullmatch(r"[0-9.]+", via):  # 192.168.1.023: the resolver reads 023 as octal (.19)
                    raise
                address = ipaddress.IPv4Address(resolve(via))
        except (OSError, UnicodeError, ValueError):
            raise CeilError(f"--via {via}: not an IPv4 address, nor a name this machine resolves: give the"
                            " router's address on your network (e.g. 192.168.1.23)") from None
        if address in cluster.network.lan_cidr:
            raise CeilError(f"--via {via}: {address} is inside the cluster LAN ({cluster.network.lan_cidr}), the"
                            " network the route leads to: give the router's address on your network, its uplink")
        return str(address)
    name = cluster.hostname("router")
    for candidate in (f"{name}.local", name):
        try:
            return resolve(candidate)
        except OSError:
            continue
    raise CeilError(
        f"cannot find the router's address on this network ({name}.local and {name} do not resolve):"
        f" give it with --via ADDRESS (your home router's list of DHCP clients shows {name})"
    )


def _as_root(cmd: list[str], run: Callable[..., subprocess.CompletedProcess] | None,
             input: str | None = None) -> subprocess.CompletedProcess:
    # subprocess.run looked up at each call: a test's stand-in for it is what runs, never the real
    # command on the test machine.
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    try:
        return (run or subprocess.run)([*sudo, *cmd], capture_output=True, text=True, input=input)
    except FileNotFoundError as e:  # no `ip` in a minimal container, no sudo: a traceback said only that
        raise CeilError(f"{e.filename} not found on this workstation: cannot run {shlex.join([*sudo, *cmd])}:"
                        f" install {e.filename}, or run that as root by hand") from None


def add_route(cmd: list[str], run: Callable[..., subprocess.CompletedProcess] | None = None) -> None:
    done = _as_root(cmd, run)
    if done.returncode != 0 and cmd[0] == "route":  # macOS: the route exists; change it
        done = _as_root(["route", "-n", "change", *cmd[3:]], run)
    if done.returncode != 0:
        raise CeilError(f"{shlex.join(cmd)} failed: {(done.stderr or done.stdout).strip()}")


# The workstation's hosts file; a module constant so tests can point it elsewhere.
HOSTS_FILE = Path("/etc/hosts")


def hosts_block(cluster: Cluster) -> str:
    """The cluster's fixed names for the workstation's hosts file: the router and every node, and
    the add-on UIs at the ingress address. Not the router's DNS: dnsmasq answers only queries
    that arrive on the LAN and the VPN (bind-dynamic checks the arriving interface), so a query
    from a trusted network on the uplink side, even to the LAN address through the route, gets no
    answer (run ci-art35); and on Linux, systemd-resolved's per-interface DNS setting would
    replace the network's own servers on that interface."""
    from .hooks.dnsmasq import lan_hosts, served_ingress_hosts

    lines = [f"{h.ip} {' '.join(h.names)}" for h in lan_hosts(cluster)]
    if ingress := served_ingress_hosts(cluster):
        lines.append(f"{cluster.network.ingress_ip} {' '.join(ingress)}")
    begin, end = hosts_markers(cluster)
    return "\n".join([begin, *lines, end]) + "\n"


def hosts_markers(cluster: Cluster) -> tuple[str, str]:
    return (f"# ceil cluster {cluster.name}: written by `bake.py route --dns` (begin)",
            f"# ceil cluster {cluster.name} (end)")


def with_hosts_block(current: str, cluster: Cluster) -> str:
    """`current` hosts text with this cluster's block in place of an earlier one (or appended)."""
    begin, end = hosts_markers(cluster)
    kept, inside = [], False
    for line in current.splitlines():
        if line == begin:
            inside = True
        elif line == end and inside:
            inside = False
        elif not inside:
            kept.append(line)
    text = "\n".join(kept).rstrip("\n")
    return (text + "\n" if text else "") + hosts_block(cluster)


def write_hosts(text: str, run: Callable[..., subprocess.CompletedProcess] | None = None) -> None:
    """Replace the hosts file in one rename (never half-written), as root."""
    tmp = f"{HOSTS_FILE}.ceil-tmp"
    script = f"cat > {shlex.quote(tmp)} && chmod 0644 {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(str(HOSTS_FILE))}"
    done = _as_root(["sh", "-c", script], run, input=text)
    if done.returncode != 0:
        raise CeilError(f"could not write {HOSTS_FILE}: {(done.stderr or done.stdout).strip()}")


@click.command("route")
@config_option
@click.option("--via", metavar="ADDRESS", help="The router's address on your network [default: its mDNS name,"
              " NAME-router.local, NAME being the cluster's name].")
@click.option("--add", "apply", is_flag=True, help="Add the route now (sudo), instead of printing it.")
@click.option("--dns", is_flag=True,
              help="Also the cluster's names (e.g. ceil-one.ceil.internal): written into /etc/hosts between"
                   " markers, replaced on the next run.")
def route_command(config_path: Path, via: str | None, apply: bool, dns: bool) -> None:
    """The workstation's route to the cluster LAN through the router's uplink address, for a
    workstation on a network named in router.trusted_networks (the seed's
    workstation-route-add). Linux and macOS. With --dns, the cluster's names resolve too."""
    cluster = load_cluster(config_path, env_optional=True)
    lan = str(cluster.network.lan_cidr)
    if not cluster.router.trusted_networks:
        console.print("[yellow]warning:[/yellow] router.trusted_networks is empty: the router lets nothing"
                      " from the uplink into the cluster LAN. Add your network (e.g. 192.168.1.0/24) and"
                      " re-bake the router, or use the VPN (python bake.py vpn-client NAME)")
    via = router_address(cluster, via)
    cmd = route_command_for(sys.platform, lan, via)
    if not apply:
        click.echo(shlex.join(["sudo", *cmd]))
        if dns:
            click.echo(f"# and these lines in {HOSTS_FILE} (or run this again with --add):")
            click.echo(hosts_block(cluster), nl=False)
        return
    add_route(cmd)
    click.echo(f"routed {lan} via {via}")
    if dns:
        write_hosts(with_hosts_block(HOSTS_FILE.read_text(), cluster))
        click.echo(f"{HOSTS_FILE}: the cluster's names (an app's NAME.apps.{cluster.domain} is not among them:"
                   f" add it for {cluster.network.ingress_ip} by hand)")


# ---- ssh ---------------------------------------------------------------------------------


def known_hosts_file(cluster: Cluster) -> Path:
    """The host keys of this cluster's machines, apart from the user's own ~/.ssh/known_hosts (an
    address like 10.42.0.1 may be another machine on another network). Each bake writes its
    machine's key here (ceil/host_keys.py), and `ssh`, `run` and `k8s-proxy` write every key
    secrets/ holds, so even a first contact is checked. `make verify` uses the same file."""
    return cache_root() / f"known_hosts-{cluster.name}"


def host_key_alias(name: str) -> str:
    """The name a machine's key is filed under, whichever address or jump reached it."""
    return f"ceil-{name}"


def host_key_options(cluster: Cluster, name: str) -> list[str]:
    """`name`'s key checked against this cluster's own known_hosts, a changed key refused. A key
    is recorded on first contact only for a machine secrets/ holds no key of (a card baked before
    ceil made host keys). The path is quoted: ssh reads an unquoted one as a list of files split
    at spaces."""
    return ["-o", f"HostKeyAlias={host_key_alias(name)}", "-o", f'UserKnownHostsFile="{known_hosts_file(cluster)}"',
            "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no"]


def pin_host_key(path: Path, name: str, public: str) -> str:
    """File `public` as `name`'s host key in the known_hosts file `path` (the cluster's,
    known_hosts_file), replacing whatever was recorded for it. Returns "new" (none was), "changed"
    (another key was: one recorded on first contact with a card baked before ceil made host keys)
    or "same"."""
    alias = host_key_alias(name)
    entry = f"{alias} {' '.join(public.split()[:2])}\n"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []

    def names(line: str) -> list[str]:
        return line.split(maxsplit=1)[0].split(",") if line.strip() and not line.startswith("#") else []

    kept = [line for line in lines
            if not any(n == alias or n.startswith(f"[{alias}]:") for n in names(line))]
    if len(lines) - len(kept) == 1 and entry in lines:
        return "same"
    if kept and not kept[-1].endswith("\n"):  # a hand-edited last line: the entry must not join it
        kept[-1] += "\n"
    # A temp file of its own, then renamed (0600: the user's own file, like ~/.ssh/known_hosts):
    # two commands pinning at once (`run` in one terminal, `ssh` in another) each leave a whole
    # file, never one's half or a missing temp.
    from .privatefile import write_private

    write_private(path, "".join(kept) + entry)
    return "new" if len(kept) == len(lines) else "changed"


def pin_from_secrets(cluster: Cluster, secrets_dir: Path) -> None:
    """Every host key secrets/ holds for this cluster's machines, into its known_hosts: the
    workstation's cache may be new or emptied, the keys the cards carry are in secrets/."""
    from .host_keys import pinned_keys
    from .secrets import SecretStore
    from .ui import notice

    if not secrets_dir.is_dir():
        return
    store = SecretStore(secrets_dir, make_new=False)
    for name in cluster.roles:
        # One damaged key file must not stop the commands for every other machine: said, and that
        # machine's key left as it is in known_hosts (pinned by its bake, or recorded on first contact).
        try:
            keys = pinned_keys(store, [name])
        except CeilError as e:
            notice(f"{name}'s host key not checked against secrets/: {e}")
            continue
        if name in keys:
            pin_host_key(known_hosts_file(cluster), name, keys[name])


def ssh_argv(cluster: Cluster, name: str, via: str | None, extra: tuple[str, ...] = (),
             options: tuple[str, ...] = ()) -> list[str]:
    """ssh to `name` (router or a node) as the baked admin, checking its host key against this
    cluster's known_hosts; through the router at `via` when the workstation reaches only the
    router's SSH (a ProxyCommand, so the hop checks the router's key the same way)."""
    require("ssh")
    known_hosts_file(cluster).parent.mkdir(parents=True, exist_ok=True)
    user = cluster.ssh.user
    target = str(cluster.network.router_ip) if name == "router" else str(cluster.node(name).ip)
    argv = ["ssh", *host_key_options(cluster, name), *options]
    if via and name == "router":
        target = via
    elif via:
        hop = ["ssh", *host_key_options(cluster, "router"), *options, "-W", "%h:%p", f"{user}@{via}"]
        argv += ["-o", f"ProxyCommand={shlex.join(hop)}"]
    return [*argv, f"{user}@{target}", *extra]


# What a workstation that reaches none of the cluster needs (README, "Your way in").
WAY_IN = ("this workstation needs a way to the cluster LAN: the VPN, or --via ADDRESS (the router's address"
          " where only its SSH answers; README, \"Your way in\")")
# A silent address (no VPN up, no route) fails in this long, not after the system's minutes.
CONNECT_OPTIONS = ("-o", "ConnectTimeout=10")


def _ending_with(parent: int):
    """For the child, on Linux: the kernel sends it SIGTERM when `parent` (this process) dies,
    even by SIGKILL. A parent that died between the fork and the prctl sends nothing: the child,
    then already another's, ends itself (a make test run once saw ssh's stand-in outlive a
    bake.py killed at that moment)."""
    def end_with_parent() -> None:
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    return end_with_parent


def run_ssh_attached(argv: list[str], what: str) -> int:
    """ssh on this terminal (an interactive login, a tunnel) until it ends; its exit status. When
    ssh itself could not connect (255), says what the workstation needs. Ctrl-C reaches ssh, which
    decides: this process only waits for it."""
    import signal

    proc = subprocess.Popen(argv, preexec_fn=_ending_with(os.getpid()) if sys.platform == "linux" else None)
    interrupted = False

    def pass_on(number: int, frame) -> None:
        nonlocal interrupted
        interrupted = True  # ssh then ends with 255 too: not a connection that failed
        proc.send_signal(number)

    # Stopped by a signal (kill, a closed terminal): ssh goes with this process, never left behind
    # holding a tunnel.
    passed_on = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        for sig, handler in passed_on.items():
            signal.signal(sig, handler)
    if code == SSH_FAILED and not interrupted:
        click.echo(f"ceil: {what}: ssh ended with exit {SSH_FAILED} (it could not connect or log in, or the"
                   f" connection dropped; its line above says which): if the machine is up, {WAY_IN}", err=True)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's way of saying so


def no_way_in_warning(cluster: Cluster, store) -> str | None:
    """What to say when the router about to be baked lets the workstation in by SSH alone (no
    VPN client baked in, no trusted network): `status`, `kubeconfig` and `make verify` then need
    --via or a re-bake, which a user finds out only after flashing."""
    from .wireguard import list_clients

    if cluster.router.trusted_networks or (cluster.vpn.enabled and list_clients(store)):
        return None
    vpn = ("the VPN has no client yet (python bake.py vpn-client laptop, with vpn.endpoint set)" if cluster.vpn.enabled
           else "the VPN is off (vpn.enabled)")
    return (f"this router lets the workstation in by SSH alone: {vpn} and router.trusted_networks is empty."
            " status, kubeconfig and make verify reach the cluster LAN (README, \"Your way in\"): make a VPN"
            " client or name your home network first, then bake the router; else use --via ROUTER_ADDRESS"
            " with ssh, run and k8s-proxy")


def not_reached(results: dict[str, tuple[int, str]]) -> str:
    """What to do about the machines ssh itself failed on ("" when it reached them all): a
    cluster this workstation has no way to (no VPN, no route) read as the command failing."""
    names = [name for name, (code, _) in results.items() if code == SSH_FAILED]
    if not names:
        return ""
    return (f"{', '.join(names)} not reached over SSH (exit {SSH_FAILED}, unless the command itself exited so; the lines"
            f" above say why): if they are up, {WAY_IN}")


def run_everywhere(cluster: Cluster, names: list[str], command: str, via: str | None,
                   run: Callable[..., subprocess.CompletedProcess] | None = None) -> dict[str, tuple[int, str]]:
    """`command` on each machine over SSH, side by side; {name: (exit code, output)}."""
    from concurrent.futures import ThreadPoolExecutor

    run = run or subprocess.run

    def one(name: str) -> tuple[int, str]:
        argv = ssh_argv(cluster, name, via, (command,), ("-o", "BatchMode=yes", *CONNECT_OPTIONS))
        try:
            done = run(argv, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return 124, "no answer within 120 s"
        return done.returncode, (done.stdout + done.stderr).rstrip()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(names, pool.map(one, names)))


@click.command("run", context_settings={"ignore_unknown_options": True})
@config_option
@secrets_option
@click.option("--via", metavar="ADDRESS", help="Jump through the router at this address (see `ssh`).")
@click.option("--on", "only", multiple=True, metavar="NAME", help="Only these machines (repeatable) [default: all].")
@click.option("--nodes", "nodes_only", is_flag=True, help="Every node of cluster.yaml, not the router.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(config_path: Path, secrets_path: Path | None, via: str | None, only: tuple[str, ...],
                nodes_only: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND on every machine (router first) over SSH, each answer labelled with its
    machine, e.g. `bake.py run uptime`, `bake.py run -- df -h /`, `bake.py run sudo reboot`.
    Exit status 1 if it failed anywhere."""
    cluster, names = machines_named(config_path, secrets_path, only, nodes_only)
    results = run_everywhere(cluster, names, shlex.join(command), via)
    failed = []
    for name, (code, output) in results.items():
        # The labels are part of the answer: stdout with it, so `run uptime > file` keeps them.
        click.echo(click.style(name, bold=True) + f" ({cluster.hostname(name)})"
                   + ("" if code == 0 else " " + click.style(f"exit {code}", fg="red")))
        for line in output.splitlines() or ["(no output)"]:
            click.echo(f"  {line}")
        if code != 0:
            failed.append(name)
    if failed:
        unreached = not_reached(results)
        raise CeilError(f"the command failed on {', '.join(failed)}: see above"
                        + (f"; {unreached}" if unreached else ""))


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@config_option
@secrets_option
@click.option("--via", metavar="ADDRESS", help="Jump through the router at this address (its uplink"
              " address, when only its SSH is reachable from where you are).")
@click.argument("name")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def ssh_command(config_path: Path, secrets_path: Path | None, via: str | None, name: str,
                extra: tuple[str, ...]) -> None:
    """SSH into NAME (router, or a node from cluster.yaml) as the baked admin user. Anything after
    NAME goes to ssh, e.g. `bake.py ssh one -- uptime`. Host keys are checked against the
    cluster's own ~/.cache/ceil/known_hosts-<cluster>, which gets the keys made at bake time
    from secrets/: another key is refused, from the first contact on."""
    cluster = load_cluster(config_path, env_optional=True)
    _pin_keys(cluster, config_path, secrets_path)
    argv = ssh_argv(cluster, name, via, extra, CONNECT_OPTIONS)
    sys.exit(run_ssh_attached(argv, f"ssh {name}"))


# ---- k8s-proxy ---------------------------------------------------------------------------


def tunnel_argv(cluster: Cluster, via: str | None, local_port: int) -> list[str]:
    """ssh forwarding 127.0.0.1:`local_port` on the workstation to the server's API through the
    router (at `via`, else its LAN address). k3s's serving certificate names 127.0.0.1, so the
    baked CA still verifies the API at the tunnel's end (`bake.py kubeconfig --tunnel-port`)."""
    from .k3s.kubeconfig import API_PORT

    require("ssh")
    known_hosts_file(cluster).parent.mkdir(parents=True, exist_ok=True)
    router = via or str(cluster.network.router_ip)
    return ["ssh", *host_key_options(cluster, "router"), *CONNECT_OPTIONS, "-N", "-o", "ExitOnForwardFailure=yes",
            # A tunnel whose far end went away (the router rebooted) ends instead of hanging.
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
            "-L", f"127.0.0.1:{local_port}:{cluster.server.ip}:{API_PORT}", f"{cluster.ssh.user}@{router}"]


@click.command("k8s-proxy")
@config_option
@secrets_option
@click.option("--via", metavar="ADDRESS", help="The router's address where only its SSH answers (see `ssh`).")
@click.option("--port", "local_port", type=click.IntRange(1, 65535), default=6443, show_default=True,
              help="The local port the API appears on.")
def k8s_proxy_command(config_path: Path, secrets_path: Path | None, via: str | None, local_port: int) -> None:
    """Bring the Kubernetes API to https://127.0.0.1:PORT through an SSH tunnel via the router,
    for a workstation that reaches only the router's SSH (the seed's k8s-proxy). Runs until
    Ctrl-C; use it with the kubeconfig from `bake.py kubeconfig --tunnel-port PORT`."""
    cluster = load_cluster(config_path, env_optional=True)
    _pin_keys(cluster, config_path, secrets_path)
    argv = tunnel_argv(cluster, via, local_port)
    click.echo(f"the Kubernetes API of {cluster.name} on https://127.0.0.1:{local_port} until Ctrl-C;"
               f" in another shell: python bake.py kubeconfig --tunnel-port {local_port}", err=True)
    sys.exit(run_ssh_attached(argv, "k8s-proxy"))
