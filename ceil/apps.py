"""`bake.py app`: your own app through the router's private registry (the seed's PiPHP phase).

build   DIR/Containerfile (or Dockerfile) -> a multi-arch image, with the builder you have
        (buildah, podman or docker buildx) writing an OCI archive; ceil pushes it
chart   DIR/chart -> `helm lint` + `helm package`; ceil pushes the .tgz as an OCI artifact
deploy  a HelmChart (k3s's helm-controller) that installs the chart from the registry, with
        the image pinned by the digest the push returned, and a requests-per-second target for
        the autoscaler where the cluster serves that metric (add-on custom-metrics)
ship    all three

Why ceil pushes instead of `docker push`/`helm push`: one code path (ceil/oci.py) for every
builder, verified against the router's CA and logged in with the push account from secrets/,
without writing into the user's docker, podman or helm login state or trust store (docker wants
the CA in /etc/docker/certs.d, as root). What was pushed is recorded in out/apps/NAME.json
(digests), so `deploy` installs exactly what `build` and `chart` pushed, not whatever a tag
points at by then.

In the cluster the image is named after the push address (`ceil-router.<domain>:5002/apps/NAME`):
the nodes' registries.yaml sends that name to the read-only port with the pull account. The
chart is fetched by the helm-controller's job from the read-only port too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml
from rich.markup import escape

from . import registry_access as access
from .addons.catalog import Catalog, selected
from .config import Cluster, load_cluster
from .errors import CeilError
from .secrets import SecretStore
from .ui import byte_progress, console

if TYPE_CHECKING:  # imported where a push happens: ssl and tarfile stay out of every bake.py start
    from . import oci

IMAGE_PREFIX, CHART_PREFIX = "apps", "charts"
NAMESPACE = "apps"  # where the apps run; their HelmCharts live in kube-system with k3s's own
PULL_SECRET, CA_CONFIGMAP = "ceil-registry-pull", "ceil-registry-ca"
DEFAULT_PLATFORMS = ("linux/arm64",)
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
BUILDERS = ("buildah", "podman", "docker")
BUILDER_HINT = ("install one: buildah or podman (sudo apt install buildah; brew install podman), or Docker with"
                " buildx and a docker-container builder (docker buildx create --use); building for another"
                " architecture also needs QEMU binfmt (sudo apt install qemu-user-static)")


def check_name(name: str, what: str = "app name") -> str:
    if not NAME.match(name):
        raise CeilError(f"{what} {name!r}: use 1-40 lower-case letters, digits and '-', starting and ending with a"
                        " letter or digit (it becomes an image name and the host NAME.apps.<domain>)")
    return name


def check_tag(tag: str) -> str:
    if not TAG.match(tag):
        raise CeilError(f"--tag {tag!r}: an image tag is 1-128 of letters, digits, '_', '.', '-', not starting"
                        " with '.' or '-', e.g. v1 or 2026-11-30")
    return tag


def default_tag(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")


# ---- where things go -------------------------------------------------------------------------


@dataclass
class Target:
    """The registry as the workstation pushes to it, and the names the cluster uses."""

    cluster: Cluster
    store: SecretStore
    url: str  # the push endpoint, https://ceil-router.<domain>:5002 unless --registry says otherwise

    @classmethod
    def of(cls, cluster: Cluster, store: SecretStore, registry: str | None = None) -> Target:
        if not cluster.registry.enabled:
            raise CeilError("registry.enabled is false in cluster.yaml: the router runs no registry to push apps to")
        if not store.exists(access.CA_CRT) or not store.exists(f"{access.DIR}/{access.PUSH_USER}-password"):
            raise CeilError(f"no registry credentials in {store.root}: bake the router first"
                            " (python bake.py --role router); they are made then and baked into it")
        return cls(cluster, store, (registry or f"https://{access.push_address(cluster)}").rstrip("/"))

    def registry(self, progress=None) -> oci.Registry:
        from . import oci
        push = (access.PUSH_USER, access.password(self.store, access.PUSH_USER))
        return oci.Registry(self.url, push, str(self.store.path(access.CA_CRT)), progress)

    def image_repository(self, name: str) -> str:
        return f"{access.push_address(self.cluster)}/{IMAGE_PREFIX}/{name}"

    def chart_url(self, name: str) -> str:
        return f"oci://{self.cluster.fqdn('router')}:{self.cluster.registry.port}/{CHART_PREFIX}/{name}"

    def host(self, name: str) -> str:
        return f"{name}.apps.{self.cluster.domain}"


def state_path(out: Path, name: str) -> Path:
    return out / "apps" / f"{name}.json"


def read_state(out: Path, name: str) -> dict:
    path = state_path(out, name)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(out: Path, name: str, **changes) -> dict:
    """Merge `changes` into out/apps/NAME.json, replaced in one rename (never half-written)."""
    state = {**read_state(out, name), **changes}
    path = state_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return state


# ---- build -----------------------------------------------------------------------------------


def find_containerfile(context: Path) -> Path:
    for name in ("Containerfile", "Dockerfile"):
        if (context / name).is_file():
            return context / name
    raise CeilError(f"{context}: no Containerfile or Dockerfile; give the folder your app's image is built from")


def pick_builder(wanted: str | None = None) -> str:
    if wanted:
        if wanted not in BUILDERS:
            raise CeilError(f"--builder {wanted!r}: one of {', '.join(BUILDERS)}")
        if shutil.which(wanted) is None:
            raise CeilError(f"--builder {wanted}: not found on PATH; {BUILDER_HINT}")
        return wanted
    for name in BUILDERS:
        if shutil.which(name):
            return name
    raise CeilError(f"no image builder found (buildah, podman or docker); {BUILDER_HINT}")


def build_commands(builder: str, context: Path, containerfile: Path, platforms: tuple[str, ...],
                   archive: Path, scratch_name: str) -> list[list[str]]:
    """The builder's commands that leave a multi-arch OCI archive at `archive`."""
    platform = ",".join(platforms)
    if builder == "docker":
        # The docker-container driver exports multi-platform OCI archives; the default driver cannot.
        return [["docker", "buildx", "build", "--platform", platform, "-f", str(containerfile),
                 "--output", f"type=oci,dest={archive}", str(context)]]
    # podman caches layers by default and, for a step that does not depend on the base (FROM scratch,
    # COPY), reused the first platform's layer for the next: its manifest then listed one platform
    # (podman 4.3.1, Debian 12). Without the cache each platform is built. buildah does not cache.
    cache = ["--layers=false"] if builder == "podman" and len(platforms) > 1 else []
    return [[builder, "build", *cache, "--platform", platform, "--manifest", scratch_name, "-f", str(containerfile),
             str(context)],
            [builder, "manifest", "push", "--all", scratch_name, f"oci-archive:{archive}"]]


def _cleanup_commands(builder: str, scratch_name: str) -> list[list[str]]:
    return [] if builder == "docker" else [[builder, "manifest", "rm", scratch_name]]


def build_image(context: Path, name: str, builder: str, platforms: tuple[str, ...], workdir: Path) -> Path:
    containerfile = find_containerfile(context)
    archive = workdir / f"{name}.oci.tar"
    scratch = f"localhost/ceil-app-{name}-{dt.datetime.now().strftime('%H%M%S%f')}"
    try:
        for cmd in build_commands(builder, context, containerfile, platforms, archive, scratch):
            console.print(f"[dim]  $ {escape(' '.join(cmd))}[/dim]")
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise CeilError(f"{builder} failed ({done.returncode}) building {context} for {','.join(platforms)};"
                                " its output is above")
    finally:
        for cmd in _cleanup_commands(builder, scratch):
            subprocess.run(cmd, capture_output=True)
    return archive


def platforms_of(artifact: oci.Artifact) -> set[str]:
    """The os/architecture[/variant] of every image an artifact holds."""
    from . import oci
    if artifact.media_type in oci.INDEX_TYPES:
        return {"/".join(filter(None, (m["platform"].get("os"), m["platform"].get("architecture"),
                                       m["platform"].get("variant"))))
                for m in artifact.doc["manifests"] if "platform" in m}
    return set()  # a single image: its config says, checked by the caller when it matters


def push_archive(target: Target, archive: Path, name: str, tag: str, workdir: Path,
                 platforms: tuple[str, ...] = ()) -> oci.Artifact:
    from . import oci
    artifact = oci.open_layout(archive, workdir / "layout")
    built = platforms_of(artifact)
    if platforms and len(platforms) > 1 and built != set(platforms):
        raise CeilError(f"the builder made images for {', '.join(sorted(built)) or 'one platform'}, not for"
                        f" {', '.join(platforms)}: nothing was pushed; build again (a cached layer of another"
                        " platform is the usual cause)")
    sizes = sum(b.stat().st_size if isinstance(b, Path) else len(b) for b in artifact.all_blobs().values())
    with byte_progress(f"push {name}:{tag}", sizes) as advance:
        target.registry(lambda _d, size: advance(size)).push(f"{IMAGE_PREFIX}/{name}", tag, artifact)
    return artifact


# ---- chart -----------------------------------------------------------------------------------


def helm_binary() -> str:
    helm = shutil.which("helm")
    if helm is None:
        raise CeilError("helm not found: it lints and packages your chart (https://helm.sh/docs/intro/install/;"
                        " brew install helm; or the helm snap)")
    return helm


def package_chart(chart_dir: Path, workdir: Path) -> Path:
    if not (chart_dir / "Chart.yaml").is_file():
        raise CeilError(f"{chart_dir}: no Chart.yaml; give your app's Helm chart folder")
    helm = helm_binary()
    for cmd in ([helm, "lint", "--strict", str(chart_dir)], [helm, "package", str(chart_dir), "-d", str(workdir)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise CeilError(f"{' '.join(cmd[1:3])} failed:\n{(done.stdout + done.stderr).strip()}")
    found = sorted(workdir.glob("*.tgz"))
    if len(found) != 1:
        raise CeilError(f"helm package left {len(found)} archives in {workdir}, expected one")
    return found[0]


def chart_metadata(tgz: Path) -> dict:
    """Chart.yaml from inside a packaged chart (NAME/Chart.yaml)."""
    with tarfile.open(tgz) as tar:
        member = next((m for m in tar if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")), None)
        if member is None:
            raise CeilError(f"{tgz} holds no NAME/Chart.yaml: not a packaged Helm chart")
        return yaml.safe_load(tar.extractfile(member).read())


def push_chart(target: Target, tgz: Path) -> tuple[dict, oci.Artifact]:
    from . import oci
    meta = chart_metadata(tgz)
    artifact = oci.chart_artifact(tgz.read_bytes(), meta)
    target.registry().push(f"{CHART_PREFIX}/{meta['name']}", str(meta["version"]), artifact)
    return meta, artifact


# ---- deploy ----------------------------------------------------------------------------------

# The add-on whose prometheus-adapter serves traefik_requests_per_second (Traefik's request rate
# per Service), and the average per pod `deploy` asks for there: podinfo's (addons/demo).
CUSTOM_METRICS_ADDON = "custom-metrics"
REQUESTS_PER_SECOND = 10


# The add-on that runs Flagger: with it on, the app is released through a Canary (the chart's
# canary.enabled).
CANARY_ADDON = "canary"


def _addons_on(cluster: Cluster) -> set[str]:
    return {spec.name for spec in selected(cluster, Catalog())}


def autoscaling_values(cluster: Cluster) -> dict:
    """`autoscaling.requestsPerSecond` where cluster.yaml turns custom-metrics on, else nothing:
    elsewhere no one serves the metric, and an HPA metric it cannot read holds every scale-down,
    so the chart keeps CPU alone. Nothing either under Flagger (canary_values), where Traefik
    counts requests per weighted TraefikService, not per the release's Service. cluster.yaml
    decides, as it does for the demo's podinfo, so `deploy --print` (no cluster reached) writes
    the same values."""
    on = _addons_on(cluster)
    if CUSTOM_METRICS_ADDON not in on or CANARY_ADDON in on:
        return {}
    return {"autoscaling": {"requestsPerSecond": REQUESTS_PER_SECOND}}


def canary_values(cluster: Cluster) -> dict:
    """`canary.enabled` where cluster.yaml turns the add-on canary (Flagger) on: each deploy of a
    new image is then a canary release (apps/piphp/chart/templates/canary.yaml)."""
    return {"canary": {"enabled": True}} if CANARY_ADDON in _addons_on(cluster) else {}


def deploy_objects(target: Target, name: str, state: dict) -> list[dict]:
    """The pull Secret and CA ConfigMap the helm-controller's job needs, and the HelmChart."""
    if not state:
        raise CeilError(f"no app {name!r} was built here (out/apps/{name}.json does not exist): run"
                        f" `python bake.py app ship FOLDER` (or `app build` and `app chart`) for it first")
    for key, how in (("image_digest", "python bake.py app build"), ("chart_version", "python bake.py app chart")):
        if not state.get(key):
            raise CeilError(f"out/apps/{name}.json has no {key}: run `{how}` for {name} first")
    values = {"image": {"repository": target.image_repository(name), "digest": state["image_digest"]},
              "host": target.host(name), **autoscaling_values(target.cluster), **canary_values(target.cluster)}
    pull = access.password(target.store, access.PULL_USER)
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
         "metadata": {"name": PULL_SECRET, "namespace": "kube-system"},
         "stringData": {"username": access.PULL_USER, "password": pull}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CA_CONFIGMAP, "namespace": "kube-system"},
         "data": {"ca.crt": target.store.read(access.CA_CRT).decode()}},
        {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
         "metadata": {"name": f"app-{name}", "namespace": "kube-system",
                      "annotations": {"ceil/chart-digest": state.get("chart_digest", "")}},
         "spec": {"chart": target.chart_url(state.get("chart_name", name)), "version": state["chart_version"],
                  "targetNamespace": NAMESPACE, "createNamespace": True,
                  "authSecret": {"name": PULL_SECRET}, "repoCAConfigMap": {"name": CA_CONFIGMAP},
                  "valuesContent": yaml.safe_dump(values, sort_keys=True)}},
    ]


def for_git(objs: list[dict]) -> list[dict]:
    """What may go into a GitOps repository: everything but the pull account's Secret (a
    placeholder there would overwrite the real one; `deploy` without --print applies it)."""
    return [o for o in objs if o["kind"] != "Secret"]


# ---- the commands ----------------------------------------------------------------------------


class AppContext:
    def __init__(self, config: Path, secrets: Path | None, registry: str | None, out: Path | None,
                 kubeconfig: Path | None = None):
        self.config = config
        self.secrets = secrets or config.resolve().parent / "secrets"
        self.registry = registry
        self.out = out or config.resolve().parent / "out"
        self.kubeconfig = kubeconfig

    def target(self) -> Target:
        return Target.of(load_cluster(self.config, env_optional=True), SecretStore(self.secrets, make_new=False), self.registry)


@click.group("app", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default="cluster.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The cluster description.")
@click.option("--secrets", "secrets_path", default=None, type=click.Path(path_type=Path),
              help="Secrets directory (default: secrets/ next to the config).")
@click.option("--registry", default=None, metavar="URL",
              help="Push here instead of https://<router>:<registry.push_port> (e.g. through a tunnel).")
@click.option("--out", "out_path", default=None, type=click.Path(path_type=Path),
              help="Where out/apps/NAME.json records what was pushed (default: out/ next to the config).")
@click.option("--kubeconfig", "kubeconfig_path", default=None, type=click.Path(path_type=Path),
              help="Admin kubeconfig for deploy (default: out/kubeconfig next to the config, else made from secrets/).")
@click.pass_context
def app_group(ctx, config_path, secrets_path, registry, out_path, kubeconfig_path):
    """Your own app on the cluster, through the router's private registry.

    \b
      python bake.py app ship apps/piphp     build + chart + deploy (the demo app)
      python bake.py app build DIR           multi-arch image from DIR/Containerfile, pushed
      python bake.py app push app.tar --name N   an OCI archive built elsewhere (CI), pushed
      python bake.py app chart DIR/chart     helm lint + package, pushed as an OCI chart
      python bake.py app deploy NAME         install it: http://NAME.apps.<domain>/

    Needs a builder (buildah, podman or docker buildx) and helm on this machine, and the router's
    LAN address reachable (on the cluster LAN, through the VPN, or a trusted network's route).
    """
    ctx.obj = AppContext(config_path, secrets_path, registry, out_path, kubeconfig_path)


def _platforms(value: str) -> tuple[str, ...]:
    platforms = tuple(p.strip() for p in value.split(",") if p.strip())
    for p in platforms:
        if not re.match(r"^linux/(arm64|amd64|arm/v7|arm/v6)$", p):
            raise click.BadParameter(f"{p!r}: expected linux/arm64, linux/amd64 or linux/arm/v7 (comma-separated)")
    return platforms


def _record_image(obj: AppContext, target: Target, name: str, tag: str, artifact: oci.Artifact, how: str = "") -> None:
    """What `build` and `push` pushed, into out/apps/NAME.json for `deploy`, and said."""
    write_state(obj.out, name, image=f"{target.image_repository(name)}:{tag}", image_digest=artifact.digest)
    click.echo(f"pushed {target.image_repository(name)}:{tag}\n  digest {artifact.digest}{how}")


def _build(obj: AppContext, context: Path, name: str | None, tag: str | None, platform: str, builder: str | None) -> None:
    name = check_name(name or context.resolve().name)
    tag = check_tag(tag or default_tag())
    platforms = _platforms(platform)
    target = obj.target()
    chosen = pick_builder(builder)
    with tempfile.TemporaryDirectory(prefix="ceil-app-") as tmp:
        archive = build_image(context, name, chosen, platforms, Path(tmp))
        artifact = push_archive(target, archive, name, tag, Path(tmp), platforms)
    _record_image(obj, target, name, tag, artifact, f" ({chosen}, {platform})")


def _chart(obj: AppContext, chart_dir: Path, name: str | None) -> None:
    target = obj.target()
    with tempfile.TemporaryDirectory(prefix="ceil-chart-") as tmp:
        tgz = package_chart(chart_dir, Path(tmp))
        meta, artifact = push_chart(target, tgz)
    app = check_name(name or meta["name"])
    write_state(obj.out, app, chart_name=meta["name"], chart_version=str(meta["version"]), chart_digest=artifact.digest)
    click.echo(f"pushed chart {meta['name']} {meta['version']} as {target.chart_url(meta['name'])}\n"
               f"  digest {artifact.digest}")


def commit_to_gitops(repo: Path, cluster: Cluster, name: str, objs: list[dict], state: dict) -> str:
    """The app's objects (for_git) as APP.yaml under the folder Flux syncs (gitops.path)/apps/ in
    the user's checkout `repo`, committed there: Flux then rolls the new digest out. The user
    pushes (their remote, their credentials). Returns what happened, in words."""
    from .tools import require

    require("git")
    if not (repo / ".git").exists():
        raise CeilError(f"--git {repo} is not a Git checkout: give the working copy of the repository gitops.url"
                        " names (git clone it first)")
    folder = repo / cluster.gitops.path / "apps"
    if not folder.resolve().is_relative_to(repo.resolve()):
        raise CeilError(f"gitops.path {cluster.gitops.path!r} leads out of the repository: give a folder in it, e.g."
                        " ./clusters/home")
    path = folder / f"{name}.yaml"
    text = (f"# {name}: written by `python bake.py app deploy {name} --git`; the pull Secret is applied by"
            f" `python bake.py app deploy {name}` once.\n" + yaml.safe_dump_all(for_git(objs), sort_keys=False))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    rel = str(path.relative_to(repo))

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    if (added := git("add", "--", rel)).returncode != 0:
        raise CeilError(f"git add {rel} failed in {repo}: {added.stderr.strip()}")
    if git("diff", "--cached", "--quiet", "--", rel).returncode == 0:
        return f"{rel} already holds this image and chart: nothing to commit"
    message = f"app {name}: image {state['image_digest']}, chart {state['chart_version']}"
    done = git("commit", "-q", "-m", message, "--", rel)
    if done.returncode != 0:
        raise CeilError(f"git commit in {repo} failed: {(done.stderr or done.stdout).strip()} (the file is written"
                        f" and staged: {rel})")
    return f"committed {rel} in {repo} (\"{message}\"): push it, and Flux rolls it out within gitops.interval"


def _deploy(obj: AppContext, name: str, print_only: bool, git_repo: Path | None = None) -> None:
    check_name(name)
    target = obj.target()
    state = read_state(obj.out, name)
    objs = deploy_objects(target, name, state)
    if git_repo is not None:
        click.echo(commit_to_gitops(git_repo, target.cluster, name, objs, state))
        return
    if print_only:
        secret = next(o["metadata"] for o in objs if o["kind"] == "Secret")
        click.echo(f"# {name}, as `python bake.py app deploy {name}` applies it, for a GitOps repository. Not here:"
                   f" the Secret {secret['namespace']}/{secret['name']} with the registry's pull account, which"
                   f" `python bake.py app deploy {name}` applies (once is enough).")
        click.echo(yaml.safe_dump_all(for_git(objs), sort_keys=False), nl=False)
        return
    from .addons.cli import Context

    kube = Context(obj.config, obj.secrets, obj.kubeconfig)
    with kube.kubeconfig_path() as kubeconfig:
        api = kube.api(kubeconfig)
        for doc in objs:
            api.apply(doc)
    click.echo(f"applied HelmChart kube-system/app-{name}: k3s installs it into namespace {NAMESPACE};"
               f" then http://{target.host(name)}/")
    if autoscaling_values(target.cluster):
        click.echo(f"  with autoscaling.requestsPerSecond: {REQUESTS_PER_SECOND} (add-on {CUSTOM_METRICS_ADDON} is on)")
    if canary_values(target.cluster):
        click.echo(f"  released through Flagger (add-on {CANARY_ADDON} is on): a new image is a canary release;"
                   f" `kubectl -n {NAMESPACE} get canary app-{name}` follows it, and the header X-Canary: always"
                   " reaches it first")


@app_group.command("build")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Image name (default: the folder's name).")
@click.option("--tag", help="Image tag (default: the UTC time, e.g. 20261130-171500); deploy pins the digest.")
@click.option("--platform", default=",".join(DEFAULT_PLATFORMS), show_default=True,
              help="Comma-separated platforms, e.g. linux/arm64,linux/amd64.")
@click.option("--builder", type=click.Choice(BUILDERS), help="Which builder (default: the first found of these).")
@click.pass_obj
def build_command(obj, context, name, tag, platform, builder):
    """Build CONTEXT/Containerfile for the Pis and push it to the router's registry."""
    _build(obj, context, name, tag, platform, builder)


@app_group.command("push")
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Image name (apps/NAME in the registry).")
@click.option("--tag", help="Image tag (default: the UTC time).")
@click.option("--platform", default="", help="Comma-separated platforms the archive must hold (default: not checked).")
@click.pass_obj
def push_command(obj, archive, name, tag, platform):
    """Push an OCI archive or layout folder someone else built (e.g. a CI job's
    `docker buildx build --output type=oci,dest=app.tar`), as `build` does after building."""
    name, tag = check_name(name), check_tag(tag or default_tag())
    target = obj.target()
    with tempfile.TemporaryDirectory(prefix="ceil-app-") as tmp:
        artifact = push_archive(target, archive, name, tag, Path(tmp), _platforms(platform) if platform else ())
    _record_image(obj, target, name, tag, artifact)


@app_group.command("chart")
@click.argument("chart_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="The app the chart belongs to (default: the chart's name).")
@click.pass_obj
def chart_command(obj, chart_dir, name):
    """Lint and package CHART_DIR with helm and push it as an OCI chart (charts/NAME:VERSION)."""
    _chart(obj, chart_dir, name)


@app_group.command("deploy")
@click.argument("name")
@click.option("--print", "print_only", is_flag=True,
              help="Print the objects for a GitOps repository instead of applying them (all but the pull Secret).")
@click.option("--git", "git_repo", type=click.Path(file_okay=False, path_type=Path), metavar="CHECKOUT",
              help="Write them into this checkout of your GitOps repository (gitops.path/apps/NAME.yaml) and commit;"
                   " you push, Flux deploys (docs/apps.md, \"Through Git\").")
@click.pass_obj
def deploy_command(obj, name, print_only, git_repo):
    """Install NAME with k3s's helm-controller, from the chart and image digest last pushed."""
    if print_only and git_repo:
        raise click.UsageError("--print shows the objects, --git commits them: give one")
    _deploy(obj, name, print_only, git_repo)


@app_group.command("ship")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tag", help="Image tag (default: the UTC time).")
@click.option("--platform", default=",".join(DEFAULT_PLATFORMS), show_default=True,
              help="Comma-separated platforms.")
@click.option("--builder", type=click.Choice(BUILDERS), help="Which builder (default: the first found).")
@click.option("--no-deploy", is_flag=True, help="Push image and chart only.")
@click.option("--git", "git_repo", type=click.Path(file_okay=False, path_type=Path), metavar="CHECKOUT",
              help="Deploy through Git: commit the app's objects in this checkout of your GitOps repository.")
@click.pass_obj
def ship_command(obj, context, tag, platform, builder, no_deploy, git_repo):
    """Build CONTEXT, push CONTEXT/chart, deploy: the app's name is its folder's."""
    name = check_name(context.resolve().name)
    if not (context / "chart" / "Chart.yaml").is_file():
        raise CeilError(f"{context}/chart/Chart.yaml is missing: ship wants the chart next to the Containerfile")
    helm_binary()  # before a long build, not after it
    _build(obj, context, name, tag, platform, builder)
    _chart(obj, context / "chart", name)
    if not no_deploy:
        _deploy(obj, name, print_only=False, git_repo=git_repo)
