"""A role's first-boot payload: the tree written to <boot>/ceil/ and the cloud-init seed.

The payload carries units, scripts and configs (rendered from the applicable features), the
role's package list, a generated ceil-firstboot.target that requires every step, the installer
cloud-init runs, and the secret files (which first boot moves off the FAT partition).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import ConfigError
from .features import FIRSTBOOT_DIR, RoleContext, jinja_env, render_features, uplink_problems

CLOUD_INIT_DIR = Path(__file__).resolve().parent.parent / "cloud-init"
SEED_FILES = ("user-data", "meta-data", "network-config")


@dataclass(frozen=True)
class Payload:
    root: Path  # the folder that becomes <boot>/ceil
    seed: dict[str, str]  # seed file name -> text (at the FAT root)
    features: list[str]
    packages: list[str]
    steps: list[str]
    instance_id: str
    rootfs: dict[str, Path]


def build_payload(ctx: RoleContext, dest: Path) -> Payload:
    rendered = render_features(ctx, dest)
    # Steps are the units run through the step runner; long-running ceil services are not steps.
    steps = [u for u in rendered.units if u.endswith(".service") and "ceil-step" in (dest / "units" / u).read_text()]
    (dest / "units" / "ceil-firstboot.target").write_text(_target(steps))
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "packages.txt").write_text("".join(p + "\n" for p in rendered.packages))
    if ctx.cluster.apt_mirror:
        (dest / "etc" / "apt").mkdir(exist_ok=True)
        (dest / "etc" / "apt" / "sources.list").write_text(ctx.cluster.apt_mirror.sources_line() + "\n")
    variables = ctx.template_vars()
    (dest / "install.sh").write_text(jinja_env(FIRSTBOOT_DIR).get_template("install.sh.j2").render(**variables))
    for name, value in rendered.secrets.items():
        path = dest / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
        path.chmod(0o600)
    instance_id = f"ceil-{ctx.role}-{uuid.uuid4()}"
    (dest / "manifest.json").write_text(
        json.dumps(
            {"ceil": __version__, "role": ctx.role, "instance_id": instance_id,
             "features": rendered.features, "packages": rendered.packages, "steps": steps},
            indent=1,
        )
    )
    seed = render_seed(ctx, instance_id)
    return Payload(dest, seed, rendered.features, rendered.packages, steps, instance_id, rendered.rootfs)


def _target(steps: list[str]) -> str:
    # Requires+After: the target is reached only when every step succeeded, and a failed step
    # shows as a failed dependency instead of a silently "active" target.
    # DefaultDependencies=no: otherwise multi-user.target, which wants this target, would be
    # ordered after it, and every later boot of an unfinished first boot (a power cut) would
    # hold back multi-user.target and cloud-init's final stage until every step is done.
    listed = " ".join(steps)
    return (
        "[Unit]\n"
        "Description=ceil first-boot configuration (every step done)\n"
        "DefaultDependencies=no\n"
        "Conflicts=shutdown.target\n"
        "Before=shutdown.target\n"
        f"Requires={listed}\n"
        f"After={listed}\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def render_seed(ctx: RoleContext, instance_id: str) -> dict[str, str]:
    env = jinja_env(CLOUD_INIT_DIR)
    uplink = ctx.cluster.uplink_interface if ctx.role == "router" else None
    if uplink and (problems := uplink_problems(ctx.cluster, ctx.flavor)):
        raise ConfigError("\n".join(problems))  # preflight said so already; a direct render is refused too
    variables = {
        "uplink_iface": uplink,
        **ctx.template_vars(),
        "instance_id": instance_id,
        "version": __version__,
        "ssh_keys": ctx.cluster.ssh.all_keys(),
    }
    return {name: env.get_template(f"{name}.j2").render(**variables) for name in SEED_FILES}
