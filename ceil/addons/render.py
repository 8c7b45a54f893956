"""Render add-on templates from the Cluster model into manifests and into the job's plan.

The plan is plain JSON (manifests already rendered, secrets only referenced by name), so the
job on the server needs neither this package nor cluster.yaml: just python3 and the
`kubernetes` client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..config import Cluster
from .. import escaping, yamlfile
from ..features import template_bytecode_cache
from ..errors import CeilError
from .catalog import AddonSpec, Catalog, selected
from .pins import Pins, apply_chart_pins, apply_image_pins

PLAN_FORMAT = 1
LONGHORN_DATA_PATH = "/var/lib/longhorn"
# Label Longhorn's `createDefaultDiskLabeledNodes` setting looks for: only nodes with a
# drive named in cluster.yaml get a Longhorn disk, so no replica lands on an SD card.
LONGHORN_DISK_LABEL = "node.longhorn.io/create-default-disk"


@dataclass
class RenderedStep:
    manifests: list[dict[str, Any]]
    secrets: list[dict[str, Any]]
    wait_for: dict[str, Any]


@dataclass
class RenderedAddon:
    name: str
    depends_on: list[str]
    steps: list[RenderedStep] = field(default_factory=list)

    @property
    def manifests(self) -> list[dict[str, Any]]:
        return [m for s in self.steps for m in s.manifests]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depends_on": self.depends_on,
            "steps": [s.__dict__ for s in self.steps],
        }


def storage_facts(cluster: Cluster) -> dict[str, Any]:
    """Longhorn when any node names a drive, else k3s's bundled local-path provisioner."""
    drive_nodes = [cluster.hostname(n.name) for n in cluster.nodes if n.storage_device]
    longhorn = bool(drive_nodes)
    return {
        "longhorn": longhorn,
        "storage_class": "longhorn" if longhorn else "local-path",
        "drive_nodes": drive_nodes,
        # Longhorn's default of 3 replicas never schedules with fewer drives.
        "replicas": max(1, min(3, len(drive_nodes))),
        "data_path": LONGHORN_DATA_PATH,
        "disk_label": LONGHORN_DISK_LABEL,
    }


def node_names(cluster: Cluster) -> list[str]:
    """Kubernetes node names: k3s registers each node under its host name (ceil-one, ...)."""
    return [cluster.hostname(n.name) for n in cluster.nodes]


# Ingress annotations of the add-on UIs (issue 18 #2): TLS on Traefik's websecure entry point
# (the login must not cross the LAN in clear), and for UIs without a login of their own the
# traefik add-on's basic-auth middleware (addons/traefik/ui-auth.yaml.j2).
TLS_ANNOTATIONS = {
    "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
    "traefik.ingress.kubernetes.io/router.tls": "true",
}
UI_AUTH_MIDDLEWARE = "kube-system-ceil-ui-auth@kubernetescrd"
UI_AUTH_ANNOTATIONS = {**TLS_ANNOTATIONS, "traefik.ingress.kubernetes.io/router.middlewares": UI_AUTH_MIDDLEWARE}


def _yaml_map(d: dict[str, str]) -> str:
    """A block mapping, one `key: "value"` per line, for templates to indent where they need it."""
    import json

    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in d.items())


def template_context(cluster: Cluster, spec: AddonSpec, enabled_addons: list[str]) -> dict[str, Any]:
    return {
        # What this cluster runs (not only what is being applied now): e.g. the demo's autoscaler
        # takes the request rate where custom-metrics serves it.
        "enabled_addons": enabled_addons,
        "tls_annotations": _yaml_map(TLS_ANNOTATIONS),
        "ui_auth_annotations": _yaml_map(UI_AUTH_ANNOTATIONS),
        "cluster": cluster,
        "addon": spec,
        "domain": cluster.domain,
        "ingress_ip": str(cluster.network.ingress_ip),
        "router_ip": str(cluster.network.router_ip),
        "storage": storage_facts(cluster),
        "gitops": {"private": cluster.gitops.token is not None, "public": cluster.gitops.token is None},
        "node_names": node_names(cluster),
    }


def _environment(root: Path) -> jinja2.Environment:
    return escaping.install(jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        bytecode_cache=template_bytecode_cache(),
    ))


def render_addon(cluster: Cluster, spec: AddonSpec, catalog: Catalog, pins: Pins, enabled_addons: list[str]) -> RenderedAddon:
    env = _environment(catalog.dir(spec.name))
    ctx = template_context(cluster, spec, enabled_addons)
    out = RenderedAddon(spec.name, list(spec.depends_on))
    for step in spec.steps:
        if step.when and not _fact(ctx, step.when):
            continue
        manifests: list[dict[str, Any]] = []
        for name in step.templates:
            manifests += _render_docs(env, name, ctx, f"addons/{spec.name}/{name}")
        apply_image_pins(manifests, pins)  # name:tag -> name:tag@sha256:... where pinned
        apply_chart_pins(manifests, pins)  # the job installs only the pinned archive
        secrets = [s.model_dump(exclude_none=True) for s in step.secrets]
        out.steps.append(RenderedStep(manifests, secrets, step.wait_for.model_dump()))
    return out


def _fact(ctx: dict[str, Any], dotted: str) -> Any:
    value: Any = ctx
    for part in dotted.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _render_docs(env: jinja2.Environment, name: str, ctx: dict, where: str) -> list[dict]:
    try:
        text = env.get_template(name).render(**ctx)
    except jinja2.TemplateError as e:
        raise CeilError(f"{where}: cannot render: {e}") from None
    try:
        docs = [d for d in yamlfile.parse_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CeilError(f"{where}: rendered text is not valid YAML: {e}") from None
    for d in docs:
        if not isinstance(d, dict) or not {"apiVersion", "kind", "metadata"} <= d.keys():
            raise CeilError(f"{where}: every document needs apiVersion, kind and metadata")
    return docs


def render_selected(cluster: Cluster, catalog: Catalog | None = None,
                    names: list[str] | None = None, pins: Pins | None = None) -> list[RenderedAddon]:
    """The chosen add-ons (or exactly `names`, in dependency order), rendered (with `pins`, or
    addons/pins.yaml's)."""
    catalog = catalog or Catalog()
    chosen = selected(cluster, catalog)
    if names is None:
        specs = chosen
    else:
        from .catalog import dependency_order

        specs = dependency_order([catalog.get(n) for n in names])
    pins = pins or Pins.load()  # once for every add-on rendered, as the selection
    enabled = sorted(s.name for s in chosen)
    return [render_addon(cluster, s, catalog, pins, enabled) for s in specs]


def build_plan(cluster: Cluster, catalog: Catalog | None = None,
               names: list[str] | None = None) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "cluster": cluster.name,
        "nodes": node_names(cluster),
        "addons": [a.to_json() for a in render_selected(cluster, catalog, names)],
    }


def plan_json(cluster: Cluster, catalog: Catalog | None = None) -> str:
    """The plan as shipped to the server (/etc/ceil/addons.json)."""
    return json.dumps(build_plan(cluster, catalog), indent=1, sort_keys=True) + "\n"


def embed_pinned_charts(addons: list[RenderedAddon]) -> None:
    """Each pinned chart's HelmChart with its checked archive as chartContent, as the server's job
    applies it (job/charts.py): for manifests applied by someone else (Flux from `render --out`),
    where helm-controller would otherwise fetch the chart by version and ignore the pin."""
    from .job import charts

    for addon in addons:
        for step in addon.steps:
            try:
                step.manifests = [charts.pinned_chart(m) for m in step.manifests]
            except charts.ChartRefused as e:
                raise CeilError(f"{addon.name}: {e}") from None


def write_rendered(addons: list[RenderedAddon], out: Path) -> list[Path]:
    """One multi-document YAML file per add-on, numbered in apply order (for review or kubectl).
    The files of an earlier render go first: `kubectl apply -f out/addons` applied them too."""
    if out.exists() and not out.is_dir():
        raise CeilError(f"--out {out} is a file: give a folder for the add-ons' manifests (default: out/addons)")
    out.mkdir(parents=True, exist_ok=True)
    names = Catalog().specs
    for old in out.glob("[0-9][0-9]-*.yaml"):
        if old.name[3:-len(".yaml")] in names:  # an earlier render's (NN-<add-on>.yaml); the user's own files stay
            old.unlink()
    written = []
    for i, addon in enumerate(addons, 1):
        path = out / f"{i:02d}-{addon.name}.yaml"
        path.write_text(yaml.safe_dump_all(addon.manifests, sort_keys=False))
        written.append(path)
    return written


def ingress_hosts(cluster: Cluster, catalog: Catalog | None = None) -> list[str]:
    """FQDNs the router's DNS should answer with the ingress address (network.ingress_ip)."""
    catalog = catalog or Catalog()
    return [f"{h}.{cluster.domain}" for s in selected(cluster, catalog) for h in s.ingress_hosts]
