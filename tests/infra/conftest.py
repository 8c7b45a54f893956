"""Fixtures for the testinfra checks: a real cluster (make verify) or the QEMU cluster (e2e).

`make verify` = `pytest tests/infra --cluster-config cluster.yaml`: the checks run against the
machines that cluster.yaml describes, over SSH (router at network.router_ip or --router-host;
nodes through ProxyJump via the router, or directly with --nodes-direct). Without
--cluster-config the checks run in the e2e session's QEMU cluster. See docs/testing.md.
"""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS / "infra", _TESTS / "e2e"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from ceil_infra.fixtures import (  # noqa: E402,F401  (fixtures are used by name)
    add_options,
    allow_e2e_marked_checks,
    cluster,
    fakes,
    generate_tests,
    host,
    machines,
    nodes,
    router,
    targets,
)
from ceil_e2e.hooks import diagnostics_on_failure  # noqa: E402


def pytest_addoption(parser):
    add_options(parser)


def pytest_configure(config):
    allow_e2e_marked_checks(config)


def pytest_generate_tests(metafunc):
    generate_tests(metafunc)


def pytest_runtest_makereport(item, call):
    diagnostics_on_failure(item, call)
