"""`bake.py addons list|render|apply|delete|grafana-password|ui-password|dashboard-token` and `bake.py dashboard-token`.

The workstation side of the add-ons: the same rendered plan and the same job code as the
server's ceil-addons.service, pointed at the cluster through the admin kubeconfig
(`bake.py kubeconfig` writes it to out/kubeconfig; without it one is made on the fly from
the baked PKI, so nothing has to be fetched from the server).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from ..config import Cluster, load_cluster
from ..errors import CeilError
from ..secrets import SecretStore
from ..ui import confirm
from .catalog import Catalog, selected
from .hooks import (GRAFANA_PASSWORD, KUBEWATCH_VALUES, UI_HTPASSWD, cluster_secret, grafana_password,
                    kubewatch_values, ui_htpasswd, ui_password)
from .job.kube import ApiError
from .render import build_plan, embed_pinned_charts, render_selected, write_rendered


class Context:
    def __init__(self, config: Path, secrets: Path | None, kubeconfig: Path | None):
        self.config = config
        self.secrets = secrets or config.resolve().parent / "secrets"
        self.kubeconfig = kubeconfig

    @property
    def cluster(self) -> Cluster:
        return load_cluster(self.config, env_optional=True)

    @property
    def store(self) -> SecretStore:
        return SecretStore(self.secrets, make_new=False)

    @contextlib.contextmanager
    def kubeconfig_path(self) -> Iterator[str]:
        if self.kubeconfig:
            if not self.kubeconfig.is_file():
                raise CeilError(f"--kubeconfig {self.kubeconfig} does not exist")
            yield str(self.kubeconfig)
            return
        baked = self.config.resolve().parent / "out" / "kubeconfig"
        if baked.is_file():
            yield str(baked)
            return
        from ..k3s.kubeconfig import admin_kubeconfig
        from ..privatefile import write_private

        with tempfile.TemporaryDirectory(prefix="ceil-kube-") as tmp:
            path = Path(tmp) / "kubeconfig"
            write_private(path, admin_kubeconfig(self.cluster, self.store))
            yield str(path)

    def api(self, kubeconfig: str):
        try:
            from .job.kube import KubeApi, KubeconfigTransport
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise CeilError(f"{e}: pip install -e '.[cluster]' for the kubernetes client") from None
        from .job.kube import Backoff

        try:
            # A person is waiting: an address that stays silent for 3 s is not reachable from
            # here (no VPN, no route), and asking again changes nothing.
            transport = KubeconfigTransport(kubeconfig, timeout=10.0, connect_timeout=3.0, retry_unanswered=False)
        except Exception as e:
            raise CeilError(f"cannot use kubeconfig {kubeconfig}: {e}") from None
        # A person is waiting: three tries in about 3 s, not the server job's patient minutes.
        return KubeApi(transport, backoff=Backoff(attempts=3), log=lambda m: click.echo(f"  {m}"))


def cluster_options(command):
    """--config, --secrets, --kubeconfig: shared by the addons group and dashboard-token."""
    for option in reversed([
        click.option("--config", "config_path", default="cluster.yaml", show_default=True,
                     type=click.Path(path_type=Path), help="The cluster description."),
        click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
                     help="Secrets directory (default: secrets/ next to the config)."),
        click.option("--kubeconfig", "kubeconfig_path", default=None, type=click.Path(path_type=Path),
                     help="Admin kubeconfig (default: out/kubeconfig next to the config, else made from secrets/)."),
    ]):
        command = option(command)
    return command


@click.group("addons", context_settings={"help_option_names": ["-h", "--help"]})
@cluster_options
@click.pass_context
def addons_group(ctx, config_path, secrets_path, kubeconfig_path):
    """Kubernetes add-ons (addons/<name>/): list, render, apply or delete them on the cluster.

    The k3s server applies the enabled ones by itself once every node has joined
    (ceil-addons.service); these commands add, re-apply or remove one from the workstation.
    """
    ctx.obj = Context(config_path, secrets_path, kubeconfig_path)


@addons_group.command("list")
@click.pass_obj
def list_command(obj: Context) -> None:
    """Every add-on, whether this cluster gets it on first boot, and what it needs."""
    catalog = Catalog()
    chosen = {s.name for s in selected(obj.cluster, catalog)}
    width = max(len(name) for name in catalog.specs)
    for spec in catalog.specs.values():
        mark = "on " if spec.name in chosen else "off"
        deps = f" (needs {', '.join(spec.depends_on)})" if spec.depends_on else ""
        click.echo(f"{mark} {spec.name:<{width}} {spec.summary}{deps}")


@addons_group.command("render")
@click.argument("names", nargs=-1)
@click.option("--out", "out_dir", default=Path("out/addons"), show_default=True,
              type=click.Path(path_type=Path), help="Folder for one YAML file per add-on.")
@click.option("--check", is_flag=True, help="Also validate every manifest offline (kubernetes-validate).")
@click.pass_obj
def render_command(obj: Context, names, out_dir, check) -> None:
    """Write the manifests of NAMES (default: the enabled add-ons), numbered in apply order. A
    chart pinned in addons/pins.yaml is downloaded, checked and written into its HelmChart
    (chartContent), so whoever applies the files (Flux) installs those bytes."""
    cluster = obj.cluster
    if names:
        check_settings_on(cluster, list(names))
    addons = render_selected(cluster, names=list(names) or None)
    embed_pinned_charts(addons)  # whoever applies these files (Flux) gets the checked archives
    for path in write_rendered(addons, out_dir):
        click.echo(str(path))
    if check:
        try:
            from .validate import kubernetes_version, validate_all
            import kubernetes_validate  # noqa: F401
        except ImportError:
            raise CeilError("--check needs kubernetes-validate: pip install -e '.[test]'") from None

        version = kubernetes_version(cluster.kubernetes.k3s_version)
        errors = validate_all([m for a in addons for m in a.manifests], version)
        if errors:
            raise CeilError("manifests do not validate:\n  " + "\n  ".join(errors))
        click.echo(f"all manifests valid for Kubernetes {version}")


def catalog_references(cluster: Cluster, pins=None) -> tuple[set[str], set[str]]:
    """Images and charts of every add-on in the catalog (enabled or not), as the cluster renders them."""
    from .pins import references

    catalog = Catalog()
    addons = render_selected(cluster, catalog, names=list(catalog.specs), pins=pins)
    return references([m for a in addons for m in a.manifests])


@addons_group.command("pins")
@click.option("--check", is_flag=True, help="Ask each registry and chart repository for today's digest and compare.")
@click.option("--write", is_flag=True, help="With --check: record the digests read in addons/pins.yaml (each change is printed).")
@click.pass_obj
def pins_command(obj: Context, check: bool, write: bool) -> None:
    """The digests the add-ons' images and charts are pinned to (addons/pins.yaml).

    Without --check: each image and chart the catalog references and its pin (or "unpinned").
    --check needs the internet (Docker Hub, ghcr.io, quay.io, the chart repositories); exit 1 when
    a pinned tag now points at other bytes, or a registry could not be asked."""
    from .pins import REGISTRY_SOURCE, Pins, check as check_pins

    if write and not check:
        raise CeilError("--write records what --check reads: use both")
    pins = Pins.load(unsourced="not recorded" if write else None)
    images, charts = catalog_references(obj.cluster, pins)
    if not check:
        for kind, refs in (("image", images), ("chart", charts)):
            for ref in sorted(refs):
                pinned = pins.table(kind).get(ref)
                click.echo(f"{kind} {ref}: {pinned} ({pins.source(kind, ref)})" if pinned else f"{kind} {ref}: unpinned")
        return
    findings = check_pins(images, charts, pins)
    for f in findings:
        line = f"{f.state:<11} {f.kind} {f.ref}"
        if f.error:
            line += f": {f.error}"
        elif f.state == "CHANGED":
            source = pins.source(f.kind, f.ref)
            why = ("the tag was re-pushed: check why" if source.startswith(REGISTRY_SOURCE) else
                   f"its source is not the registry ({source.split(':')[0]}): that was wrong, or the tag"
                   f" was re-pushed since")
            line += f": pinned {f.pinned}, the registry now says {f.current} ({why})"
        elif f.state == "unpinned":
            line += f": {f.current}"
        click.echo(line)
        if write and f.current and (f.current != f.pinned or not (pins.source(f.kind, f.ref) or "").startswith(REGISTRY_SOURCE)):
            # a pin taken from public records becomes the registry's once the registry agrees
            pins.record(f.kind, f.ref, f.current, f"{REGISTRY_SOURCE} on {datetime.date.today().isoformat()}")
    if write:
        pins.save()
        click.echo(f"wrote {pins.path}")
    if problems := check_problems(findings):
        raise CeilError(problems)


def check_problems(findings) -> str:
    """What exit 1 of `pins --check` means and what to do, as `flavors --check` says it (offline,
    a line per reference and exit 1 said neither)."""
    changed = sum(f.state == "CHANGED" for f in findings)
    unchecked = sum(f.state == "unreachable" for f in findings)
    said = []
    if changed:
        said.append(f"{changed} pinned tag(s) now point at other bytes: see CHANGED above")
    if unchecked:
        said.append(f"{unchecked} of {len(findings)} pins not checked: their registry or chart repository did not"
                    " answer (no internet here?), so nothing was compared for them; run it again where they are"
                    " reachable")
    return "; ".join(said)


def _names(obj: Context, names: tuple[str, ...], everything: bool) -> list[str]:
    if everything:
        return [s.name for s in selected(obj.cluster, Catalog())]
    if not names:
        raise click.UsageError("name the add-ons (see `addons list`), or give --all")
    return list(names)


def check_settings_on(cluster: Cluster, names: list[str]) -> None:
    """An add-on named by hand whose settings are off (gitops without gitops.enabled) rendered
    with them empty (`url: null`): refused, naming the setting."""
    catalog = Catalog()
    off = [spec for spec in map(catalog.get, names) if not spec.applies_to(cluster)]
    if off:
        raise CeilError("; ".join(f"{spec.name} needs {spec.when} in cluster.yaml, which is off: set it (with the"
                                  f" settings beside it, see cluster.example.yaml)" for spec in off)
                        + ", then run this again")


@addons_group.command("apply")
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every add-on enabled in cluster.yaml.")
@click.pass_obj
def apply_command(obj: Context, names, everything) -> None:
    """Apply NAMES (server-side apply, field manager `ceil`) and wait until they are ready."""
    from .job.apply import Applier

    cluster, store = obj.cluster, obj.store
    chosen = _names(obj, names, everything)
    check_settings_on(cluster, chosen)
    plan = build_plan(cluster, names=chosen)
    # Every secret the plan names is read before anything is applied: one missing from secrets/
    # is refused (never made up here), with no add-on half applied.
    for name in sorted({source["secret"] for addon in plan["addons"] for step in addon["steps"]
                        for spec in step.get("secrets", []) for source in spec["data"].values() if "secret" in source}):
        try:
            _secret(cluster, store, name)
        except OSError as e:
            raise CeilError(f"secret {name!r} cannot be read ({e}): run this in the folder you baked from"
                            " (or give --secrets DIR)") from None
    with obj.kubeconfig_path() as kubeconfig:
        applier = Applier(obj.api(kubeconfig), secret_reader=lambda n: _secret(cluster, store, n),
                          log=lambda m: click.echo(f"  {m}"))
        report = applier.run(plan, node_timeout=0)
    if report.missing_nodes:
        click.echo(f"nodes not Ready: {', '.join(report.missing_nodes)}")
    for name, state in report.states.items():
        click.echo(f"{name}: {state}" + (f" ({report.messages[name]})" if report.messages[name] else ""))
    if not report.ok:
        raise CeilError("some add-ons are not ready: see above; re-run when the cause is fixed")


def _secret(cluster: Cluster, store: SecretStore, name: str) -> bytes:
    if name == GRAFANA_PASSWORD:
        return grafana_password(store).encode()
    if name == UI_HTPASSWD:  # made from the stored password, as the bake does for the server
        return ui_htpasswd(store).encode()
    if name == KUBEWATCH_VALUES:
        return kubewatch_values(cluster, store).encode()
    if (value := cluster_secret(cluster, name)) is not None:  # the tunnel's and Git's tokens
        return value.encode()
    return store.read(name)


@addons_group.command("delete")
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every add-on of the catalog found in the cluster, also one"
              " disabled in cluster.yaml after it was applied (make teardown).")
@click.option("--yes", is_flag=True, help="Do not ask (volumes of deleted add-ons are lost).")
@click.pass_obj
def delete_command(obj: Context, names, everything, yes) -> None:
    """Delete what NAMES applied (their charts are uninstalled by k3s's helm-controller)."""
    from .job.apply import Applier

    # --all: the whole catalog, as this cluster would render it; what is not there is skipped.
    # The add-ons enabled now only left behind one applied before it was disabled.
    plan = build_plan(obj.cluster, names=list(Catalog().specs) if everything else _names(obj, names, everything))
    chosen = [a["name"] for a in plan["addons"]]
    enabled = {s.name for s in selected(obj.cluster, Catalog())}
    if not yes:
        what = "every add-on ceil applied" if everything else ", ".join(chosen)
        confirm(f"delete {what} from the cluster (their volumes too)?")
    with obj.kubeconfig_path() as kubeconfig:
        applier = Applier(obj.api(kubeconfig), log=lambda m: click.echo(f"  {m}"))
        for addon in reversed(plan["addons"]):  # dependants first
            # One not enabled now: only what ceil applied (its label), never a user's object of that name.
            gone = applier.delete_addon(addon, only_ours=everything and addon["name"] not in enabled)
            if gone or not everything:
                click.echo(f"{addon['name']}: deleted {len(gone)} object(s)")
            for what in gone:
                click.echo(f"  {what}")


@addons_group.command("grafana-password")
@click.pass_obj
def grafana_password_command(obj: Context) -> None:
    """Print Grafana's admin password (user: admin)."""
    click.echo(grafana_password(obj.store))


@addons_group.command("ui-password")
@click.pass_obj
def ui_password_command(obj: Context) -> None:
    """Print the login of the add-on UIs without their own (Longhorn, Prometheus, the Traefik
    dashboard): user admin."""
    click.echo(ui_password(obj.store))


DASHBOARD_ACCOUNT = ("kubernetes-dashboard", "admin-user")
duration_option = click.option(
    "--duration", default="1h", show_default=True, metavar="TIME",
    help="How long the token lasts: 10m, 1h, 8h (at least 10 minutes, the API server's minimum).")


def _seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smh])", text.strip())
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)] if m else 0
    if seconds < 600:
        raise click.BadParameter(f"{text!r}: give a duration of 10m or more, e.g. 30m or 2h", param_hint="--duration")
    return seconds


def print_dashboard_token(obj: Context, duration: str) -> None:
    seconds = _seconds(duration)
    with obj.kubeconfig_path() as kubeconfig:
        try:
            status = obj.api(kubeconfig).request_token(*DASHBOARD_ACCOUNT, seconds)
        except ApiError as e:
            if e.status != 404:
                raise
            raise CeilError(
                "no dashboard admin account yet (kubernetes-dashboard/admin-user): apply the add-on"
                " first (python bake.py addons apply dashboard)"
            ) from None
    click.echo(status["token"])
    click.echo(f"(cluster-admin until {status.get('expirationTimestamp', '?')}: keep it private)", err=True)


@addons_group.command("dashboard-token")
@duration_option
@click.pass_obj
def addons_dashboard_token(obj: Context, duration: str) -> None:
    """Print a Kubernetes Dashboard login token that expires (cluster-admin: keep it private)."""
    print_dashboard_token(obj, duration)


@click.command("dashboard-token")
@cluster_options
@duration_option
def dashboard_token_command(config_path, secrets_path, kubeconfig_path, duration) -> None:
    """Print a Kubernetes Dashboard login token that expires (cluster-admin: keep it private)."""
    print_dashboard_token(Context(config_path, secrets_path, kubeconfig_path), duration)
