"""First-boot features: which apply to a role, and rendering them into a payload tree.

A feature is a folder firstboot/<name>/ (see docs/features.md): feature.yaml says which roles
and when, units/ lib/ etc/ hold files and Jinja2 templates, an optional hooks module adds
template context and secret files. Adding a feature needs no change here.
"""

from __future__ import annotations

import functools
import re
import importlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .catalog import Flavor
from .config import Cluster, Node
from . import escaping, yamlfile
from .errors import ConfigError
from .secrets import SecretStore

FIRSTBOOT_DIR = Path(__file__).resolve().parent.parent / "firstboot"
TREES = ("units", "lib", "etc")
RoleKind = Literal["router", "server", "agent", "node", "all"]


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    description: str
    roles: list[RoleKind]
    when: str | list[str] | None = None
    packages: list[str] = Field(default_factory=list)
    hooks: str | None = None
    # Only on flavors whose network stack is one of these (images/*.yaml `network:`); None = all.
    networks: list[str] | None = None
    # Lower runs first in listings; systemd ordering itself comes from the units' After=.
    order: int = 50


@dataclass
class Feature:
    name: str
    path: Path
    spec: FeatureSpec
    hooks: ModuleType | None = field(default=None, repr=False)

    def hook(self, name: str):
        return getattr(self.hooks, name, None) if self.hooks else None


def load_features(root: Path = FIRSTBOOT_DIR) -> list[Feature]:
    features = []
    for spec_file in sorted(root.glob("*/feature.yaml")):
        try:
            spec = FeatureSpec.model_validate(yamlfile.load(spec_file))
        except (ValidationError, yaml.YAMLError) as e:
            raise ConfigError(f"{spec_file} is not a valid feature file: {e}") from None
        hooks = importlib.import_module(spec.hooks) if spec.hooks else None
        features.append(Feature(spec_file.parent.name, spec_file.parent, spec, hooks))
    return sorted(features, key=lambda f: (f.spec.order, f.name))


def role_kinds(cluster: Cluster, role: str) -> set[str]:
    if role == "router":
        return {"router", "all"}
    return {cluster.node(role).role, "node", "all"}


def _truthy(cluster: Cluster, dotted: str) -> bool:
    value: object = cluster
    for part in dotted.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"feature condition {dotted!r} names no cluster.yaml key")
        value = getattr(value, part)
    return bool(value)


def applies(feature: Feature, cluster: Cluster, role: str, flavor: Flavor | None = None) -> bool:
    if not role_kinds(cluster, role) & set(feature.spec.roles):
        return False
    if feature.spec.networks is not None and (flavor is None or flavor.network not in feature.spec.networks):
        return False
    when = feature.spec.when
    conditions = [when] if isinstance(when, str) else (when or [])
    return all(_truthy(cluster, c) for c in conditions)


def features_for(cluster: Cluster, role: str, root: Path = FIRSTBOOT_DIR,
                 flavor: Flavor | None = None) -> list[Feature]:
    return [f for f in load_features(root) if applies(f, cluster, role, flavor)]


def uplink_problems(cluster: Cluster, flavor: Flavor) -> list[str]:
    """What the flavor's network stack cannot carry of the router's uplink: an interface pattern
    where ifupdown needs the exact name (netplan matches patterns), and the WiFi values
    wpa_supplicant would read back otherwise (wifi_problems)."""
    problems = []
    uplink = cluster.uplink_interface
    if uplink.endswith("*") and flavor.network == "ifupdown":
        problems.append(f"router.uplink.interface: {uplink!r} is a pattern, and flavor {flavor.name} configures the"
                        " network with ifupdown, which needs the exact name: set router.uplink.interface (e.g. eth1)")
    return problems + wifi_problems(cluster, flavor)


def wifi_problems(cluster: Cluster, flavor: Flavor) -> list[str]:
    """What the router's WiFi name and passphrase lose on their way through netplan's networkd
    path. netplan writes them into wpa_supplicant's configuration (ssid=P"..." with only its
    double quotes escaped, psk="..." as it is), and wpa_supplicant reads that back wrong: a
    backslash starts a printf-style escape ("x\\y" is read as "xy"), and a # after an odd number
    of double quotes starts a comment, since it pairs quotes left to right without regard to
    escapes. Found with netplan 1.1.2 (the twin's; Ubuntu 24.04 ships the 1.1 series) and
    wpa_supplicant 2.10 (tests/e2e/test_wifi_real_parsers.py reads what netplan wrote with it).
    NetworkManager's keyfiles carry both."""
    uplink = cluster.router.uplink
    if not uplink.is_wifi or flavor.network != "netplan-networkd":
        return []
    ssid, psk = uplink.wifi.ssid, uplink.wifi.psk.get_secret_value()
    why = (f"flavor {flavor.name} writes the WiFi uplink through netplan into wpa_supplicant's configuration,"
           " which reads it back otherwise. Ways out: router.uplink.type: ethernet, or flavor raspios-trixie"
           " (NetworkManager carries it)")
    problems = []
    if "\\" in ssid:
        problems.append(f"router.uplink.wifi.ssid: {ssid!r} holds a backslash, which wpa_supplicant reads as the"
                        f" start of an escape and drops: the router would look for another network; {why},"
                        " or rename the network")
    if read_as_comment(ssid):
        problems.append(f"router.uplink.wifi.ssid: {ssid!r} holds a # after an odd number of double quotes, where"
                        f" wpa_supplicant reads a comment and cuts the name; {why}, or rename the network")
    if read_as_comment(psk):  # the passphrase is not shown
        problems.append("router.uplink.wifi.psk: the passphrase holds a # after an odd number of double quotes,"
                        " where wpa_supplicant reads a comment and cuts it. Give the key derived from it"
                        " instead: `wpa_passphrase 'SSID'` asks for the passphrase and prints psk=<64 hex"
                        " digits>, which router.uplink.wifi.psk takes (WPA2 and WPA2/WPA3 networks; a WPA3-only"
                        f" network needs the passphrase itself); {why}")
    return problems


def read_as_comment(value: str) -> bool:
    """Whether wpa_supplicant's configuration reader sees a comment in `value` written between
    double quotes: a # after an odd number of the value's own double quotes."""
    quotes = 0
    for c in value:
        quotes += c == '"'
        if c == "#" and quotes % 2:
            return True
    return False


def preflight(cluster: Cluster, roles: list[str], flavor: Flavor, root: Path = FIRSTBOOT_DIR) -> list[str]:
    """Every feature's check for every role about to be baked, before anything is written: all
    problems at once (a second server used to be refused after the router's image was written).
    Returns the features' warnings: what will work, but less safely than the user may expect."""
    problems: list[str] = []
    warnings: list[str] = []
    problems += uplink_problems(cluster, flavor)
    # Checks of every role, whichever are baked: they judge cluster.yaml, which every card shares
    # (two servers were refused by `--role one` but baked by `--role three`). Warnings only for
    # the roles baked.
    for role in dict.fromkeys([*roles, *cluster.roles]):
        for feature in features_for(cluster, role, root, flavor):
            if check := feature.hook("check"):
                try:
                    check(cluster, role)
                except ConfigError as e:
                    if str(e) not in problems:
                        problems.append(str(e))
            if role in roles and (warn := feature.hook("warnings")):
                warnings += [w for w in warn(cluster, role) if w not in warnings]
    if problems:
        raise ConfigError("nothing was baked; fix these first:\n  " + "\n  ".join(problems))
    if cluster.apt_mirror and cluster.apt_mirror.trusted:
        warnings.append(
            f"apt_mirror.trusted is true: the cards install whatever {cluster.apt_mirror.url} serves,"
            " unsigned, as root; meant for a local test archive only: set it false (the archive's"
            " signing key must then be one the flavor's OS trusts)")
    if flavor.test_only:
        warnings.append(
            f"flavor: {flavor.name} is a QEMU test bed of this project, not an image for a Raspberry Pi:"
            " its cards boot only in the test harness; for real cards use one of `python bake.py flavors`")
    return warnings


# The cluster.yaml key a problem starts with (`nodes: ...`, `router.uplink.wifi.ssid: ...`,
# `nodes[1].mac (line 7): ...`); a problem of the whole starts otherwise ("no node has room ...").
KEY_RE = re.compile(r"([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*)(?::| \(line)")


def with_feature_problems(error: ConfigError) -> ConfigError:
    """cluster.yaml's refusal, with the features' problems of the rest added (the number of
    servers, an unknown add-on, a WiFi name the flavor cannot carry, ...): they used to come one
    bake later, after the first fix. A feature's problem with a key set aside, or one under it,
    is left out: it judged a default the user did not write."""
    from .catalog import load_flavor
    from .config.loading import SET_ASIDE_NAME

    cluster = error.checkable
    if cluster is None:
        return error
    try:
        preflight(cluster, cluster.roles, load_flavor(cluster.flavor))
        return error
    except ConfigError as more:
        found = str(more).split("\n  ")[1:]
    stand_in = SET_ASIDE_NAME.format(index="")

    def about_aside(line: str) -> bool:
        if not (named := KEY_RE.match(line)):  # a problem of the whole (the add-ons' fit): it read what was set aside too
            return True
        key = named.group(1)
        return stand_in in line or any(key == a or key.startswith((a + ".", a + "[")) or a.startswith(key + ".")
                                       for a in error.aside)

    kept = [line for line in found if not about_aside(line) and line not in str(error)]
    return ConfigError("\n  ".join([str(error), *kept])) if kept else error


# ---- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleContext:
    """Everything a role's templates may refer to."""

    cluster: Cluster
    role: str
    flavor: Flavor
    store: SecretStore
    # `bake.py --airgap DIR`: k3s release files to bake into node images.
    airgap: Path | None = None

    @property
    def node(self) -> Node | None:
        return None if self.role == "router" else self.cluster.node(self.role)

    def template_vars(self) -> dict:
        return {
            "cluster": self.cluster,
            "role": self.role,
            "node": self.node,
            "hostname": self.cluster.hostname(self.role),
            "fqdn": self.cluster.fqdn(self.role),
            "flavor": self.flavor,
            "boot_mount": self.flavor.boot_mount,
        }


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """A cache that never fails a bake: a folder removed or full, or a file cut short, costs a
    compile and nothing else."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError):
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


@functools.lru_cache(maxsize=None)
def template_bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs, under the cache folder (jinja keys each by its
    template's source checksum, so an edited template compiles again): every bake process
    compiled the same hundred templates, about a tenth of a five-role bake of a small image.
    The folder is the user's own (0700), like the rest of the cache."""
    from .fetch import cache_root

    # Compiled code also depends on the environment's settings (escaping's finalize is compiled in),
    # which jinja's source checksum does not see: a folder per setting, so code compiled without
    # the escaping check is never loaded.
    folder = cache_root() / "jinja-escaped"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None  # a read-only cache: compile every time, as before
    return _BytecodeCache(str(folder))


@functools.lru_cache(maxsize=None)
def jinja_env(search: Path) -> jinja2.Environment:
    """One environment per template folder for the process: it keeps its compiled templates
    (recompiled when a file changes), so the roles of one bake compile each template once."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(search)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=template_bytecode_cache(),
    )
    # tojson writes non-ASCII as itself: with ensure_ascii an emoji became a pair of \uD83D-style
    # surrogate escapes, valid JSON but refused by libyaml (netplan, cloud-init) as YAML.
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": True}
    return escaping.install(env)


@dataclass
class RenderedPayload:
    features: list[str]
    packages: list[str]
    units: list[str]
    secrets: dict[str, bytes]
    rootfs: dict[str, Path]  # absolute path in the root file system -> workstation file


def render_features(ctx: RoleContext, dest: Path, root: Path = FIRSTBOOT_DIR) -> RenderedPayload:
    """Render every applicable feature's trees into `dest` (units/, lib/, etc/)."""
    chosen = features_for(ctx.cluster, ctx.role, root, ctx.flavor)
    base_vars = ctx.template_vars()
    packages: list[str] = []
    secrets: dict[str, bytes] = {}
    rootfs: dict[str, Path] = {}
    for feature in chosen:
        if check := feature.hook("check"):
            check(ctx.cluster, ctx.role)
        variables = dict(base_vars)
        if context := feature.hook("context"):
            variables.update(context(ctx.cluster, ctx.role, ctx.store))
        _render_tree(feature, variables, dest)
        packages += [p for p in feature.spec.packages if p not in packages]
        if flavor_packages := feature.hook("packages"):  # what the feature needs on this flavor
            packages += [p for p in flavor_packages(ctx) if p not in packages]
        if units := feature.hook("units"):
            # Units whose text lives elsewhere (PiWatch's own unit file): placed by install.sh
            # like the feature's units/, so its single daemon-reload covers them too.
            for name, text in units(ctx).items():
                _claim(feature, dest / "units" / name, f"units/{name}").write_text(text)
        if payload_files := feature.hook("payload_files"):
            # Large prepared content (e.g. PiWatch's wheels): lands in <boot>/ceil/files/.
            for name, src in payload_files(ctx, dest / "files").items():
                if not src.exists():
                    raise ConfigError(f"feature {feature.name}: payload file {name} ({src}) was not produced")
        if rootfs_files := feature.hook("rootfs_files"):
            # Too big for the boot partition (e.g. k3s binaries): written into ext4 with debugfs.
            rootfs.update(rootfs_files(ctx))
        if secret_files := feature.hook("secret_files"):
            for name, value in secret_files(ctx.cluster, ctx.role, ctx.store).items():
                if name in secrets:
                    raise ConfigError(f"two features write the secret file {name!r}")
                secrets[name] = value.encode() if isinstance(value, str) else value
    units = sorted(p.name for p in (dest / "units").glob("*") if p.is_file()) if (dest / "units").is_dir() else []
    return RenderedPayload([f.name for f in chosen], packages, units, secrets, rootfs)


def _claim(feature: Feature, target: Path, what: Path | str) -> Path:
    """`target` with its folder made, unless another feature already wrote it (`what` names it)."""
    if target.exists():
        raise ConfigError(f"feature {feature.name}: {what} is also written by another feature")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _render_tree(feature: Feature, variables: dict, dest: Path) -> None:
    env = jinja_env(feature.path)
    for tree in TREES:
        src_root = feature.path / tree
        if not src_root.is_dir():
            continue
        for src in sorted(p for p in src_root.rglob("*") if p.is_file()):
            rel = src.relative_to(feature.path)
            target = _claim(feature, dest / (str(rel)[: -len(".j2")] if src.suffix == ".j2" else str(rel)), rel)
            if src.suffix == ".j2":
                try:
                    text = env.get_template(rel.as_posix()).render(**variables)
                except jinja2.TemplateError as e:
                    raise ConfigError(f"firstboot/{feature.name}/{rel}: template error: {e}") from None
                if not text.strip():
                    continue  # a file this role does not get (e.g. a router-only unit)
                target.write_text(text)
            else:
                target.write_bytes(src.read_bytes())
