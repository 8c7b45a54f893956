"""The command line: `python bake.py --role NAME | --all`, plus subcommands.

Every failure the user can act on is a CeilError, printed as one paragraph with exit status 1.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import click
from rich.markup import escape

from . import __version__
from .errors import CeilError, ConfigError
from .ui import console, notice

EPILOG = """\b
Examples:
  python bake.py --role router              out/ceil-router.img
  python bake.py --all                      router + every node in cluster.yaml
  python bake.py --role one --base-image ./ubuntu.img.xz --config other.yaml --out build
  python bake.py doctor                     which host tools are present, and why they are needed
"""


# Subcommands owned by other modules: {name: (module, attribute)}. Imported only when the command
# runs (or --help lists them): a command then loads its own modules and not the bake's, which are
# half of a bake's start (0.24 s for `bake.py status --help` when every module was imported).
SUBCOMMANDS = {
    "init": ("ceil.init", "init_command"),
    "flash": ("ceil.flash.cli", "flash_command"),
    "vpn-client": ("ceil.vpn_cli", "vpn_client_command"),
    "kubeconfig": ("ceil.k3s.kubeconfig", "kubeconfig_command"),
    "registry": ("ceil.registry_access", "registry_command"),
    "app": ("ceil.apps", "app_group"),
    "route": ("ceil.workstation", "route_command"),
    "ssh": ("ceil.workstation", "ssh_command"),
    "run": ("ceil.workstation", "run_command"),
    "reboot": ("ceil.reboot", "reboot_command"),
    "k8s-proxy": ("ceil.workstation", "k8s_proxy_command"),
    "node": ("ceil.nodes", "node_group"),
    "datastore": ("ceil.datastore", "datastore_group"),
    "k3s": ("ceil.k3s_reset", "k3s_group"),
    "logs": ("ceil.logs", "logs_command"),
    "status": ("ceil.status", "status_command"),
    "addons": ("ceil.addons.cli", "addons_group"),
    "dashboard-token": ("ceil.addons.cli", "dashboard_token_command"),
}


class LazyGroup(click.Group):
    """A group whose SUBCOMMANDS are imported by name when asked for."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx, name):
        if name not in self.commands and name in SUBCOMMANDS:
            module, attr = SUBCOMMANDS[name]
            command = getattr(importlib.import_module(module), attr)
            assert command.name == name, f"{module}.{attr} is named {command.name!r}, not {name!r}"
            self.add_command(command)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:  # "Did you mean ...?" from every name, not the loaded ones
            raise click.exceptions.NoSuchCommand(e.command_name, possibilities=self.list_commands(ctx), ctx=ctx) from None


@click.group(cls=LazyGroup, invoke_without_command=True, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--role", "roles", multiple=True, metavar="NAME", help="Role to bake: router or a node name from cluster.yaml (repeatable).")
@click.option("--all", "all_roles", is_flag=True, help="Bake the router and every node.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("cluster.yaml"), show_default=True, help="The cluster description.")
@click.option("--base-image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Use this local image (.img, .img.xz, .zip) instead of downloading the flavor's; where the flavor pins a sha256, it must be that file.")
@click.option("--any-base-image", is_flag=True, help="Bake from --base-image even if it is not the file the flavor pins (e.g. an image you changed).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True, help="Where images and manifests are written.")
@click.option("--airgap", type=click.Path(path_type=Path, file_okay=False), help="Folder with k3s release files (k3s-arm64, sha256sum-arm64.txt, images tarball) to bake into node images.")
@click.option("--sha256", "whole_sha256", is_flag=True, help="Also record each image's whole-file sha256 in its manifest (for publishing images; the manifest always holds a sha256 per data range, which is what flash checks).")
@click.option("--secrets", "secrets_dir", type=click.Path(path_type=Path), help="Secrets folder [default: secrets/ next to the config].")
@click.option("--jobs", type=click.IntRange(min=1), metavar="N", help="Images written at once with several roles [default: 2 on a machine with two cores or more, else 1]; --jobs 1 writes one after another (gentler on a spinning disk).")
@click.version_option(__version__, prog_name="ceil")
@click.pass_context
def cli(ctx, roles, all_roles, config_path, base_image, any_base_image, out_dir, airgap, whole_sha256, secrets_dir, jobs):
    """Bake ready-to-flash SD-card images for a self-provisioning Raspberry Pi k3s cluster.

    Each image configures its machine on first boot: the router (uplink, DHCP/DNS, NAT, firewall,
    NTP, VPN, DDNS, registries, PiWatch) and the nodes (a k3s cluster with keys made here).
    """
    if ctx.invoked_subcommand:
        # Each command has its own --config (and --out, --secrets where it takes them): one given
        # before the command's name was ignored, and the command acted on ./cluster.yaml instead.
        given = [param.opts[0] for param in ctx.command.params
                 if ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} before `{ctx.invoked_subcommand}`: {'that is an option' if len(given) == 1 else 'those are options'}"
                f" of the bake, not of `{ctx.invoked_subcommand}`: put the command's own options after its"
                f" name (python bake.py {ctx.invoked_subcommand} --help lists them)")
        return
    if roles and all_roles:
        raise click.UsageError("--all bakes every role: drop --role, or drop --all")
    if any_base_image and not base_image:  # ignored, the bake went on to download the flavor's image
        raise click.UsageError("--any-base-image applies to --base-image FILE: give the image you changed"
                               " with --base-image, or drop --any-base-image")
    if not roles and not all_roles:
        click.echo(ctx.get_help())
        raise click.UsageError("say what to bake: --role NAME (router, one, ...) or --all")
    bake_roles(roles, all_roles, config_path, base_image, any_base_image, out_dir, airgap, whole_sha256, secrets_dir, jobs)


def bake_roles(roles, all_roles, config_path, base_image, any_base_image, out_dir, airgap, whole_sha256, secrets_dir,
               jobs=None):
    from .bakery import BakeContext, bake_jobs, bake_side_by_side, check_base_image, clean_stale
    from .locks import folder_held
    from .catalog import load_flavor
    from .compat import (check_no_k3s_downgrade, check_secrets_format, check_version_skew, first_server_rebake_warning,
                         new_cluster_warning, node_baked, router_baked, stale_router_warning)
    from .config import load_cluster
    from .datastore import check_staged_restore, restore_notice
    from .features import preflight, with_feature_problems
    from .k3s.install import airgap_files
    from .secrets import SecretStore
    from .tools import check_tools
    from .wireguard import CLIENTS_DIR, stale_clients
    from .host_keys import pinned_keys
    from .workstation import known_hosts_file, no_way_in_warning, pin_host_key
    from .ui import say

    try:
        cluster = load_cluster(config_path)
    except ConfigError as e:  # with the features' problems too: every problem in one report
        raise with_feature_problems(e) from None
    chosen = cluster.roles if all_roles else list(dict.fromkeys(roles))
    for r in chosen:
        if r != "router":
            cluster.node(r)
    check_tools("bake")
    # Every role's checks before the first byte is written.
    flavor = load_flavor(cluster.flavor)
    for warning in preflight(cluster, chosen, flavor):
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if airgap:  # the whole bundle, digests included, once: refused before any image is written
        airgap_files(cluster, flavor.arch, airgap)
    if out_dir.exists() and not out_dir.is_dir():
        raise CeilError(f"--out {out_dir} is a file, not a folder: give the folder the images go to (default: out)")
    store = SecretStore(secrets_dir or config_path.parent / "secrets")
    check_secrets_format(store)
    for r in chosen:
        if r != "router":
            check_no_k3s_downgrade(store, r, cluster.kubernetes.k3s_version)
    check_version_skew(cluster, store, chosen, cluster.kubernetes.k3s_version)
    check_staged_restore(cluster, store, chosen)
    for warning in (new_cluster_warning(store, chosen), stale_router_warning(store, chosen),
                    first_server_rebake_warning(cluster, store, chosen)):
        if warning:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if "router" in chosen and cluster.vpn.enabled and (stale := stale_clients(cluster, store)):
        console.print(f"[yellow]note:[/yellow] {escape(', '.join(stale))}: the VPN client config(s) in"
                      f" {escape(str(store.path(CLIENTS_DIR)))} no longer match the cluster's VPN settings"
                      " (endpoint, port or subnets changed): this bake rewrites them with the same keys;"
                      " import them again in WireGuard")
    if "router" in chosen and (way_in := no_way_in_warning(cluster, store)):
        console.print(f"[yellow]warning:[/yellow] {escape(way_in)}")
    check_base_image(flavor, base_image, any_base_image, cluster, chosen)  # last: it may download the image
    # Two bakes into one out/ (two clusters' configs, or other --secrets) hold different secrets/
    # locks: one's clean_stale removed the other's partial image, and both staged the same
    # .partial names, so an image could be published with the other cluster's boot files. (The
    # folder is made once secrets/ is held: a bake waiting on secrets/ writes nothing.)
    with store.held(), folder_held(out_dir, "one bake at a time writes into this folder"):
        clean_stale(out_dir)

        def announce(ctx: BakeContext) -> None:
            say(f"[bold]baking {ctx.role}[/bold] ({cluster.hostname(ctx.role)}, flavor {cluster.flavor})")
            if restoring := restore_notice(cluster, store, ctx.role):
                say(f"  {escape(restoring)}")

        contexts = [BakeContext(cluster, config_path, r, out_dir, store, base_image, airgap, any_base_image, whole_sha256)
                    for r in chosen]
        # Each image's bookkeeping as soon as it is published, in the roles' order (with several
        # written at once, an image published before another role failed is recorded too).
        # closing: a failure below stops the workers here, before secrets/ and out/ are let go.
        with contextlib.closing(bake_side_by_side(contexts, jobs or bake_jobs(), announce)) as baked:
            for ctx in baked:
                r = ctx.role
                if r == "router":
                    router_baked(store)
                else:
                    node_baked(store, r, cluster.kubernetes.k3s_version)
                check_secrets_format(store)  # a new cluster's secrets/ exists from its first bake on
                console.print(f"[green]wrote {escape(str(ctx.output))}[/green] in {ctx.took:.1f}s")
                # The card's host key, made at its first bake, is the one the workstation expects
                # from now on: a first contact is checked like any other.
                known_hosts = known_hosts_file(cluster)
                if pin_host_key(known_hosts, r, pinned_keys(store, [r])[r]) == "changed":
                    console.print(f"  {r}'s SSH host key in {escape(str(known_hosts))} is now the one this card carries"
                                  " (the one recorded there was another card's: one baked before ceil made host keys,"
                                  " or another cluster's of the same name, whose pins share this file)")


@cli.command()
@click.option("--config", "config_path", default="cluster.yaml", show_default=True, type=click.Path(path_type=Path),
              help="The cluster whose Kubernetes kubectl is checked against (ceil's default k3s without it).")
def doctor(config_path):
    """Which host tools are present, what each is for, and how to install the missing ones."""
    from rich.table import Column, Table

    from .tools import doctor_rows

    # The install hint is what a newcomer copies: folded onto more lines, never cut off.
    table = Table("tool", "found", "for", Column("why", overflow="fold"), Column("install", overflow="fold"))
    missing = 0
    for name, found, purpose, why, hint in doctor_rows():
        missing += not found and purpose == "bake"
        table.add_row(name, "[green]yes[/green]" if found else "[red]no[/red]", purpose, why, "" if found else hint)
    console.print(table)
    skew = _kubectl_skew(config_path)
    if skew:
        notice(f"kubectl: {skew}")
    if missing:
        raise CeilError(f"{missing} tool(s) needed for baking are missing: install them as shown above")


def _kubectl_skew(config_path: Path) -> str | None:
    """kubectl on PATH against the Kubernetes of `config_path` (else ceil's default k3s)."""
    import shutil
    import subprocess

    from .config import load_cluster
    from .config.schema import Kubernetes
    from .tools import kubectl_skew

    if shutil.which("kubectl") is None:
        return None
    try:
        version = load_cluster(config_path, env_optional=True).kubernetes.k3s_version
    except (CeilError, OSError):
        version = Kubernetes().k3s_version
    try:
        done = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`kubectl version --client` did not run: {e}"
    return kubectl_skew(int(version.split(".")[1]), done.stdout)


@cli.command()
@click.option("--check", is_flag=True, help="Ask each publisher whether the image is still there, still has its"
              " digest, and whether a newer one is listed (needs the internet).")
@click.option("--all", "show_all", is_flag=True, help="Also the QEMU test-bed twins (test_only).")
def flavors(check, show_all):
    """List the base-image flavors (images/*.yaml), or check them against their publishers."""
    from .catalog import available, load_flavor

    chosen = [f for f in map(load_flavor, available()) if show_all or not f.test_only]
    if not check:
        for f in chosen:
            click.echo(f"{f.name:<22} {f.arch:<6} {f.description}")
        return
    from .flavor_check import check_all

    findings = check_all(chosen)
    for f in findings:
        mark = "[green]ok[/green]  " if f.ok else "[yellow]??[/yellow]  " if f.unchecked else "[red]FAIL[/red]"
        console.print(f"{mark} {f.flavor:<22} {escape(f.message)}")
    if any(not f.ok and not f.unchecked for f in findings):
        raise CeilError("a flavor's image cannot be baked as it stands: see FAIL above")
    if unchecked := sorted({f.flavor for f in findings if f.unchecked}):
        raise CeilError(f"{', '.join(unchecked)}: not checked, the publisher did not answer (no internet"
                        " here?): nothing was compared for them; run it again where the publisher is reachable")


def _where_the_option_goes(error: click.ClickException) -> str | None:
    """For an option a subcommand lacks but its group takes (`addons list --config X`): where it
    goes. The groups whose subcommands share their options (addons, app) take them first."""
    ctx = getattr(error, "ctx", None)
    # Not the root: its options are the bake's, which no subcommand takes (cli() says so itself).
    if not isinstance(error, click.NoSuchOption) or ctx is None or ctx.parent is None or ctx.parent.parent is None:
        return None
    param = next((p for p in ctx.parent.command.params if error.option_name in p.opts), None)
    if param is None:
        return None
    value = "" if getattr(param, "is_flag", False) else " VALUE"
    return (f"{error.option_name} belongs to `{ctx.parent.command_path}`, before `{ctx.info_name}`:"
            f" {ctx.parent.command_path} {error.option_name}{value} {ctx.info_name} ...")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="bake.py", standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        if hint := _where_the_option_goes(e):
            click.echo(hint, err=True)
        sys.exit(e.exit_code)
    except CeilError as e:
        # The message quotes cluster.yaml's values (an SSID "[/]x" is not markup, it is the SSID).
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    except Exception as e:
        from .addons.job.kube import ApiError
        from .oci import OciError

        if isinstance(e, OciError):  # oci.py is standard library only (it runs on nodes too): not a CeilError
            console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
            sys.exit(1)
        if not isinstance(e, ApiError):
            raise
        console.print(f"[red]error:[/red] {escape(str(e))}. The workstation needs a way to the cluster LAN"
                      " (README, \"Your way in\": the VPN, a trusted network and `bake.py route`, or `bake.py ssh`)",
                      soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted: nothing half-written was kept")
        sys.exit(130)
