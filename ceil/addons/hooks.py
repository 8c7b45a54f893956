"""Hooks of the first-boot feature `addons`: the post-join job on the k3s server.
See docs/features.md for the hook contract.

The job ships as Python source rendered into lib/addons_job/ (one source of truth with the
workstation's `bake.py addons apply`), and the plan as /etc/ceil/addons.json.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Cluster
from ..secrets import SecretStore, htpasswd_line
from ..errors import ConfigError
from .catalog import Catalog, selected
from .fit import fit_problems, fit_warnings
from .render import plan_json

JOB_DIR = Path(__file__).parent / "job"
JOB_FILES = ("__init__.py", "__main__.py", "apply.py", "charts.py", "kube.py", "status.py")
GRAFANA_PASSWORD = "grafana-admin-password"
# The login in front of the add-on UIs that have none of their own (Longhorn, Prometheus, the
# Traefik dashboard): a Traefik basic-auth middleware. The workstation keeps the password; the
# server gets only its htpasswd line.
UI_USER = "admin"
UI_PASSWORD = "ui-admin-password"
UI_HTPASSWD = "ui-htpasswd"
# kubewatch's webhook URL with PiWatch's token, as Helm values (HelmChart valuesSecrets).
KUBEWATCH_VALUES = "kubewatch-values"
# tunnel.token from cluster.yaml, for the add-on job's Secret (the manifest only names it).
TUNNEL_TOKEN = "cloudflare-tunnel-token"
# gitops.token and gitops.username, for the GitRepository's Secret (a private repository).
GITOPS_TOKEN, GITOPS_USERNAME = "gitops-token", "gitops-username"


def cluster_secret(cluster: Cluster, name: str) -> str | None:
    """The secrets cluster.yaml itself holds (via environment variables), by the names the
    add-ons' manifests use; None for the others."""
    if name == TUNNEL_TOKEN and cluster.tunnel.token is not None:
        return cluster.tunnel.token.get_secret_value().strip() + "\n"
    if name == GITOPS_TOKEN and cluster.gitops.token is not None:
        return cluster.gitops.token.get_secret_value().strip() + "\n"
    if name == GITOPS_USERNAME:
        return cluster.gitops.username + "\n"
    return None


def grafana_password(store: SecretStore) -> str:
    """Made once and kept in secrets/; the server gets it as /etc/ceil/secrets/<name>. An add-on
    turned on after the bake gets it from the `addons apply` that installs it."""
    return store.token(GRAFANA_PASSWORD, 16, any_command=True)


def ui_password(store: SecretStore) -> str:
    return store.token(UI_PASSWORD, 16, any_command=True)


def ui_htpasswd(store: SecretStore) -> str:
    return htpasswd_line(UI_USER, ui_password(store))


def kubewatch_values(cluster: Cluster, store: SecretStore) -> str:
    import json

    from ..hooks.piwatch import webhook_url

    return f"webhook:\n  url: {json.dumps(webhook_url(cluster, store))}\n"


def job_sources() -> dict[str, str]:
    return {name: (JOB_DIR / name).read_text() for name in JOB_FILES}


def check(cluster: Cluster, role: str) -> None:
    chosen = selected(cluster, Catalog())  # unknown names or a disabled dependency fail the bake early
    if problems := fit_problems(cluster, chosen):
        raise ConfigError("; ".join(problems))


def warnings(cluster: Cluster, role: str) -> list[str]:
    return fit_warnings(cluster) + ([loose] if (loose := pin_warning(cluster)) else [])


def pin_warning(cluster: Cluster, pins=None) -> str | None:
    """What the chosen add-ons install that no digest holds (addons/pins.yaml: images by tag,
    charts by version), said at every bake of the server until it is pinned: the registries and
    chart repositories are believed on the day the server pulls."""
    from .pins import Pins, references
    from .render import render_selected

    pins = pins or Pins.load()
    try:
        rendered = render_selected(cluster, pins=pins)
    except ConfigError:  # an unknown add-on, ...: the check says so, among every other problem
        return None
    images, charts = references([m for a in rendered for m in a.manifests])
    loose_images = [i for i in images if not pins.images.get(i)]
    loose_charts = [c for c in charts if not pins.charts.get(c)]
    if not (loose_images or loose_charts):
        return None
    return (f"add-ons: {len(loose_images)} of {len(images)} container images and {len(loose_charts)} of"
            f" {len(charts)} Helm charts are pinned by tag or version only, not by digest (addons/pins.yaml),"
            " and a chart's own images follow its version: the server installs what the registries and chart"
            " repositories serve under those names on the day it pulls them. `python bake.py addons pins --check"
            " --write`, on a machine that reaches them, records today's digests (docs/addons.md)")


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {
        "addons_plan_json": plan_json(cluster),
        "addons_job_source": job_sources(),
    }


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict:
    chosen = {s.name for s in selected(cluster, Catalog())}
    files = {}
    if "monitoring" in chosen:
        files[GRAFANA_PASSWORD] = grafana_password(store) + "\n"
    if "traefik" in chosen:
        files[UI_HTPASSWD] = ui_htpasswd(store)
    if "kubewatch" in chosen:
        files[KUBEWATCH_VALUES] = kubewatch_values(cluster, store)
    if "tunnel" in chosen:
        files[TUNNEL_TOKEN] = cluster_secret(cluster, TUNNEL_TOKEN)
    if "gitops" in chosen and cluster.gitops.token is not None:
        files[GITOPS_TOKEN] = cluster_secret(cluster, GITOPS_TOKEN)
        files[GITOPS_USERNAME] = cluster_secret(cluster, GITOPS_USERNAME)
    return files
