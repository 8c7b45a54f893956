"""PiWatch on the router: the offline wheel bundle (built on the workstation, where PyPI is
reachable) travels in the payload; first boot builds the venv from it with no network."""

from __future__ import annotations

from pathlib import Path

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore


WEBHOOK_TOKEN = "piwatch/webhook-token"


def webhook_token(store: SecretStore) -> str:
    """The kubewatch webhook's token: the router checks it, the server's kubewatch sends it."""
    return store.token("piwatch-webhook-token")


def webhook_url(cluster: Cluster, store: SecretStore) -> str:
    """kubewatch's webhook: it logs this URL after every event, so it carries the event-only
    token (piwatch.tokens), not the one that acknowledges alarms."""
    from piwatch.tokens import ingest_token

    return (f"http://{cluster.network.router_ip}:{cluster.piwatch.port}/kubewatch"
            f"?token={ingest_token(webhook_token(store))}")


def check(cluster: Cluster, role: str) -> None:
    return None


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, str]:
    """PiWatch reads it through LoadCredential (ceil-piwatch.service)."""
    return {WEBHOOK_TOKEN: webhook_token(store) + "\n"}


def payload_files(ctx, files_dir: Path) -> dict[str, Path]:
    from piwatch.bundle import BundleError, build_bundle

    if not ctx.flavor.python_tag:
        raise ConfigError(
            f"piwatch: flavor {ctx.flavor.name} has no python_tag, so PiWatch cannot be bundled for it;"
            " set piwatch.enabled: false in cluster.yaml (or add python_tag to the flavor file)"
        )
    try:
        bundle = build_bundle(files_dir / "piwatch", ctx.flavor.python_tag, ctx.flavor.wheel_platforms)
    except BundleError as e:
        raise ConfigError(f"piwatch: could not build the router's wheel bundle: {e}") from None
    return {"piwatch": bundle}


def units(ctx) -> dict[str, str]:
    """PiWatch's unit, kept with its package (piwatch/deploy/): placed with ceil's own units, so
    the payload installer's single daemon-reload covers it and the step needs none."""
    from piwatch.bundle import DEPLOY_DIR

    return {"ceil-piwatch.service": (DEPLOY_DIR / "ceil-piwatch.service").read_text()}


def context(cluster: Cluster, role: str, store) -> dict:
    from piwatch.bundle import render_env

    names = [cluster.hostname("router"), cluster.fqdn("router")]
    return {"piwatch_env": render_env(str(cluster.network.router_ip), cluster.piwatch.port, names=names)}


def packages(ctx) -> list[str]:
    """The flavor's GPIO backend for gpiozero (e.g. python3-lgpio): without it PiWatch runs on
    mock pins on a real Pi, and the lights stay dark."""
    return list(ctx.flavor.gpio_packages)
