"""Fixtures for the testinfra checks, identical for QEMU (e2e) and a real cluster (make verify).

Imported by tests/infra/conftest.py and tests/e2e/conftest.py. The checks see:

  cluster    ceil.config.Cluster as baked (verify: parsed from --cluster-config)
  router     testinfra host of the router, its first boot finished (ceil-firstboot.target)
  nodes      {name: testinfra host} of the nodes, their first boot finished too
  machines   {name: testinfra host} of router + nodes
  machine    one machine name; tests taking it run once per machine (router, one, two, ...)
  host       the testinfra host of `machine`
  fakes      the fake internet (ceil_e2e.session.E2EFakes), or None against a real cluster
  targets    all of the above plus the SSH settings (ssh_config path for manual logins)

Mode: `--cluster-config PATH` (make verify) checks the real cluster described by PATH; without it
the session's QEMU cluster is baked and booted (tests/e2e/ceil_e2e/session.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

E2E_TEMPLATE = Path(__file__).resolve().parents[2] / "e2e" / "cluster.yaml"


def add_options(parser) -> None:
    g = parser.getgroup("ceil", "ceil: checks against a real cluster (make verify)")
    g.addoption("--cluster-config", default=os.environ.get("CEIL_VERIFY_CONFIG"),
                help="check the real cluster this cluster.yaml describes (instead of booting QEMU)")
    g.addoption("--router-host", default=os.environ.get("CEIL_ROUTER_HOST"),
                help="how this workstation reaches the router (default: network.router_ip, i.e. on "
                     "the cluster LAN or through the WireGuard VPN)")
    g.addoption("--nodes-direct", action="store_true", default=bool(os.environ.get("CEIL_NODES_DIRECT")),
                help="reach nodes at their LAN addresses directly instead of ProxyJump via the router")
    g.addoption("--ssh-identity", default=os.environ.get("CEIL_SSH_IDENTITY"),
                help="private key to log in with (default: ssh's own: agent, ~/.ssh/id_*)")
    # --ssh-config (pytest-testinfra's option) is honoured too: that ssh_config is used as is, with
    # Host entries named router and the node names (a kept e2e run's, or your own bastion setup).


def verify_mode(config) -> str | None:
    return config.getoption("cluster_config", None)


def machine_names(config) -> list[str]:
    """Names for parametrising per-machine checks, known at collection time."""
    path = verify_mode(config)
    if path:
        from ceil.config import load_cluster

        return ["router"] + [n.name for n in load_cluster(Path(path), env_optional=True).nodes]
    data = yaml.safe_load(E2E_TEMPLATE.read_text())
    return ["router"] + [n["name"] for n in data["nodes"]]


def generate_tests(metafunc) -> None:
    if "machine" in metafunc.fixturenames:
        metafunc.parametrize("machine", machine_names(metafunc.config), scope="session")


def default_markexpr(config) -> str | None:
    """The `-m` expression the project's addopts (pyproject.toml) gives every run."""
    args = config.getini("addopts")  # already split as the shell would (an "args" ini value)
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
    return None


def allow_e2e_marked_checks(config) -> None:
    """`make verify` runs the checks marked e2e (they need a live cluster, which it has): the
    project's default expression, which deselects them for the unit run, is dropped; one the user
    gave on the command line stays. (Compared with addopts itself: when the default grew `and not
    apiserver`, a fixed copy of it here stopped matching and verify ran no check at all.)"""
    if verify_mode(config) and config.option.markexpr.strip() == (default_markexpr(config) or "").strip():
        config.option.markexpr = ""


@dataclass
class Targets:
    mode: str                      # "e2e" | "verify"
    cluster: object                # ceil.config.Cluster
    ssh: object                    # ceil_infra.ssh.SshConfig
    fakes: object | None
    secrets_dir: Path | None
    out_dir: Path | None = None    # the bake's out/ (where `bake.py app deploy` records its apps)
    _ready: callable = None        # (name) -> None: waits for a QEMU guest's first boot
    _hosts: dict = field(default_factory=dict)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.cluster.nodes]

    def host(self, name: str):
        # QEMU: every check runs after its machine's first boot (a failed step fails the fixture
        # with the unit's name and journal), and the first-boot cache saves each disk right then.
        if self._ready:
            self._ready(name)
        if name not in self._hosts:
            self._hosts[name] = self.ssh.testinfra_host(name)
        return self._hosts[name]


def _verify_targets(config) -> Targets:
    from ceil.config import load_cluster
    from ceil.workstation import known_hosts_file, pin_from_secrets
    from ceil_infra.ssh import Endpoint, SshConfig

    path = Path(verify_mode(config)).resolve()
    # Like bake.py status: no ${VAR} secret needs exporting to check a cluster (an exported one is
    # also looked for where secrets must not be, cluster_secrets).
    cluster = load_cluster(path, env_optional=True)
    router_host = config.getoption("router_host") or str(cluster.network.router_ip)
    direct = config.getoption("nodes_direct")
    ends = [Endpoint("router", router_host)]
    ends += [Endpoint(n.name, str(n.ip) if n.ip else f"{n.name}.{cluster.domain}", jump=None if direct else "router")
             for n in cluster.nodes]
    state = Path(os.environ.get("CEIL_CACHE") or Path.home() / ".cache" / "ceil") / "verify"
    state.mkdir(parents=True, exist_ok=True)
    identity = config.getoption("ssh_identity")
    secrets = Path(os.environ.get("CEIL_SECRETS") or path.parent / "secrets")
    # The workstation's known_hosts for this cluster, with the host keys the bakes made (secrets/),
    # as `bake.py ssh` and `bake.py run` use it: a machine answering with another key is refused.
    pin_from_secrets(cluster, secrets)
    if config.getoption("ssh_config"):
        ssh = ExistingSshConfig(Path(config.getoption("ssh_config")), [e.alias for e in ends])
    else:
        ssh = SshConfig(state / f"ssh_config-{cluster.name}", cluster.ssh.user, Path(identity) if identity else None,
                        ends, known_hosts_file(cluster))
    return Targets("verify", cluster, ssh, None, secrets if secrets.is_dir() else None, out_dir=path.parent / "out")


class ExistingSshConfig:
    """An ssh_config written by someone else: used, never rewritten."""

    def __init__(self, path: Path, aliases: list[str]):
        from ceil_infra.ssh import SshConfig

        self.path = path
        self.endpoints = dict.fromkeys(aliases)
        self.control_dir = Path("/nonexistent")
        for name in ("command", "run", "drop_master", "drop_all", "testinfra_host", "shell_hint"):
            setattr(self, name, getattr(SshConfig, name).__get__(self))

    def close(self) -> None:
        """Its connections are its owner's to keep."""


def _e2e_targets(config) -> Targets:
    from ceil_e2e import session

    c = session.get(config)
    if c.cluster is None:  # baked, so parsed; guard for a failed bake
        raise RuntimeError("the e2e cluster was not baked")
    return Targets("e2e", c.cluster, c.ssh, session.E2EFakes(c), c.workdir / "secrets", out_dir=c.workdir / "out",
                   _ready=session.ready)


@pytest.fixture(scope="session")
def targets(request) -> Targets:
    if not verify_mode(request.config):
        yield _e2e_targets(request.config)  # the e2e session closes its cluster's connections
        return
    t = _verify_targets(request.config)
    try:
        yield t
    finally:
        t.ssh.close()


@pytest.fixture(scope="session")
def cluster(targets):
    return targets.cluster


@pytest.fixture(scope="session")
def fakes(targets):
    return targets.fakes


@pytest.fixture(scope="session")
def router(targets):
    return targets.host("router")


@pytest.fixture(scope="session")
def nodes(targets, router) -> dict:
    return {name: targets.host(name) for name in targets.node_names}


@pytest.fixture(scope="session")
def machines(targets, router, nodes) -> dict:
    return {"router": router, **nodes}


@pytest.fixture(scope="session")
def host(targets, machine):
    """Overrides pytest-testinfra's `host`: the machine this parametrised check is about."""
    return targets.host(machine)
