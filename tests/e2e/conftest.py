"""The e2e suite (pytest -m e2e tests/e2e tests/infra): QEMU guests from baked images.

The cluster is one per session (ceil_e2e.session), shared with tests/infra's checks; fixtures
are the same as there (ceil_infra.fixtures). Settings: docs/testing.md.
"""

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS / "infra", _TESTS / "e2e", _TESTS.parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from ceil_infra.fixtures import (  # noqa: E402,F401  (fixtures are used by name)
    cluster,
    fakes,
    generate_tests,
    host,
    machines,
    nodes,
    router,
    targets,
)
from ceil_e2e import session as e2e_session  # noqa: E402
from ceil_e2e.hooks import diagnostics_on_failure  # noqa: E402


def pytest_generate_tests(metafunc):
    generate_tests(metafunc)


def pytest_runtest_makereport(item, call):
    diagnostics_on_failure(item, call)


def pytest_sessionfinish(session, exitstatus):
    # Before the session's cleanup shuts the cluster down: its first boots are recorded in the
    # first-boot cache only if everything passed (ceil_e2e.firstboot_cache).
    e2e_session.finish(passed=exitstatus == 0 and session.testsfailed == 0)


@pytest.fixture(scope="session", autouse=True)
def _boot_the_bare_test_beds_early(request):
    # test_testbed.py's guests boot while the broken-image test's router does: one vCPU each on
    # a two-core machine, so the first boots overlap instead of queueing (ceil_e2e.bare).
    if any(item.get_closest_marker("bare_testbed") for item in request.session.items):
        for flavor in e2e_session.settings()["bare"]:
            e2e_session.bare(flavor)


def pytest_collection_modifyitems(config, items):
    # Tests with their own guests run first, while the shared cluster is not booted yet: on a
    # 2-core machine two clusters at once would starve each other's timeouts.
    # Then e2e_order(n) (lower first; unmarked tests are 100), keeping file order within each.
    def key(item):
        if item.get_closest_marker("own_cluster"):
            return 0
        mark = item.get_closest_marker("e2e_order")
        return mark.args[0] if mark else 100

    items.sort(key=key)
