"""The add-on catalog: `addons/<name>/addon.yaml` read into typed specs, and the choice of
which add-ons a cluster gets, in dependency order.

An add-on is data: a metadata file plus Jinja2 manifest templates. Its steps are applied in
order; after each step the post-join job waits for what the step names under `wait_for`
(CRDs established, HelmChart installs finished, Deployments available) so that the next step,
and every add-on depending on this one, only starts once the API objects it needs exist.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import Cluster
from .. import yamlfile
from ..errors import CeilError, ConfigError

ADDONS_DIR = Path(__file__).resolve().parents[2] / "addons"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
NS_NAME_RE = re.compile(r"^[a-z0-9-]+/[a-z0-9.-]+$")


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _ns_names(values: list[str]) -> list[str]:
    for v in values:
        if not NS_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not 'namespace/name'")
    return values


class WaitFor(Model):
    crds: list[str] = Field(default_factory=list, description="CRD names, e.g. ipaddresspools.metallb.io")
    helmcharts: list[str] = Field(default_factory=list, description="namespace/name of HelmCharts")
    deployments: list[str] = Field(default_factory=list, description="namespace/name of Deployments")
    timeout_seconds: int = Field(default=900, ge=10, le=7200)

    _check = field_validator("helmcharts", "deployments")(_ns_names)


class SecretValue(Model):
    """One key of a Secret the job creates: a literal, or a value kept in secrets/ (never rendered)."""

    value: str | None = None
    secret: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]*$")

    @model_validator(mode="after")
    def _one_of(self) -> SecretValue:
        if (self.value is None) == (self.secret is None):
            raise ValueError("give exactly one of 'value' (literal) or 'secret' (a file in secrets/)")
        return self


class SecretSpec(Model):
    name: str
    namespace: str
    data: dict[str, SecretValue]


class Step(Model):
    templates: list[str] = Field(min_length=1)
    # Dotted name of a render-time fact (e.g. storage.longhorn): the step exists only when true.
    when: str | None = Field(default=None, pattern=r"^[a-z_]+(\.[a-z_]+)*$")
    secrets: list[SecretSpec] = Field(default_factory=list)
    wait_for: WaitFor = Field(default_factory=WaitFor)


class CrdSource(Model):
    """Where the real CRDs of custom resources an add-on renders come from, at the version its
    chart installs: a Go module (the chart itself cannot be fetched where the tests run, the
    Go module proxy can). The control-plane tests install them into the real API server and
    apply the rendered resources against them (tests/apiserver/test_addons_job.py)."""

    module: str = Field(pattern=r"^[a-z0-9.-]+(/[A-Za-z0-9._~-]+)+$")
    version: str = Field(pattern=r"^v\d+\.\d+\.\d+$")
    paths: list[str] = Field(min_length=1)
    # The kinds (group/version Kind) of our templates these CRDs define, e.g. keda.sh/v1alpha1 ScaledObject.
    kinds: list[str] = Field(min_length=1)
    # The module's go.mod asks for a newer Go than the one installed: fetch with this toolchain.
    toolchain: str | None = Field(default=None, pattern=r"^go\d+\.\d+\.\d+$")


class AddonSpec(Model):
    name: str
    summary: str = Field(max_length=60, description="one line for `addons list`")
    description: str
    default: bool = True
    depends_on: list[str] = Field(default_factory=list)
    # Dotted cluster.yaml key that must be true (e.g. piwatch.enabled), like feature.yaml's `when`.
    when: str | None = Field(default=None, pattern=r"^[a-z_]+(\.[a-z_]+)*$")
    # Host names (under the cluster domain) this add-on serves through the ingress.
    ingress_hosts: list[str] = Field(default_factory=list)
    crds: list[CrdSource] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    def applies_to(self, cluster: Cluster) -> bool:
        if self.when is None:
            return True
        value: object = cluster
        for part in self.when.split("."):
            value = getattr(value, part)
        return bool(value)


class Catalog:
    """Every add-on found under `root`, by name."""

    def __init__(self, root: Path = ADDONS_DIR):
        self.root = root

    @cached_property
    def specs(self) -> dict[str, AddonSpec]:
        specs = {}
        for meta in sorted(self.root.glob("*/addon.yaml")):
            spec = _load_spec(meta)
            specs[spec.name] = spec
        if not specs:
            raise CeilError(f"no add-ons found under {self.root} (expected {self.root}/<name>/addon.yaml)")
        for spec in specs.values():
            self._check_refs(spec, specs)
        return specs

    def _check_refs(self, spec: AddonSpec, specs: dict[str, AddonSpec]) -> None:
        for dep in spec.depends_on:
            if dep not in specs:
                raise CeilError(f"addons/{spec.name}/addon.yaml: depends_on names {dep!r}, which is not an add-on")
        for step in spec.steps:
            for t in step.templates:
                if not (self.root / spec.name / t).is_file():
                    raise CeilError(f"addons/{spec.name}/addon.yaml: template {t!r} does not exist")

    def get(self, name: str) -> AddonSpec:
        if name not in self.specs:
            raise CeilError(f"no add-on called {name!r}: the add-ons are {', '.join(self.specs)}")
        return self.specs[name]

    def dir(self, name: str) -> Path:
        return self.root / self.get(name).name


def _load_spec(meta: Path) -> AddonSpec:
    name = meta.parent.name
    if not NAME_RE.match(name):
        raise CeilError(f"{meta.parent}: add-on folder names are lowercase words with '-' (found {name!r})")
    try:
        data = yamlfile.load(meta) or {}
        return AddonSpec.model_validate({"name": name, **data})
    except (yaml.YAMLError, ValidationError) as e:
        raise CeilError(f"{meta} is not a valid add-on description: {e}") from None


def selected(cluster: Cluster, catalog: Catalog) -> list[AddonSpec]:
    """The add-ons this cluster gets on first boot, in the order they must be applied."""
    if not cluster.addons.enabled:
        return []
    specs = catalog.specs
    for key in ("enable", "disable"):
        unknown = [n for n in getattr(cluster.addons, key) if n not in specs]
        if unknown:
            raise ConfigError(
                f"addons.{key}: {', '.join(map(repr, unknown))} is not an add-on;"
                f" the add-ons are {', '.join(specs)}"
            )
    chosen = {
        n for n, s in specs.items()
        if (s.default or n in cluster.addons.enable)
        and n not in cluster.addons.disable
        and s.applies_to(cluster)
    }
    for name in sorted(chosen):
        missing = [d for d in specs[name].depends_on if d not in chosen]
        if missing:
            raise ConfigError(
                f"addons: {name!r} needs {', '.join(map(repr, missing))}, which is off:"
                f" add it to addons.enable, or add {name!r} to addons.disable"
            )
    return dependency_order([specs[n] for n in sorted(chosen)])


def dependency_order(specs: list[AddonSpec]) -> list[AddonSpec]:
    """Dependencies first; ties keep name order so the plan is stable from bake to bake."""
    by_name = {s.name: s for s in specs}
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name not in by_name:
            return
        if name in visiting:
            raise CeilError(f"add-on dependency cycle: {' -> '.join((*path, name))}")
        visiting.add(name)
        for dep in by_name[name].depends_on:
            visit(dep, (*path, name))
        visiting.discard(name)
        done.append(name)

    for s in sorted(by_name):
        visit(s, ())
    return [by_name[n] for n in done]
