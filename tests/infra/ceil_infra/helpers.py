"""Small helpers shared by the testinfra checks (tests/infra/test_*.py)."""

from __future__ import annotations

import time

import pytest


def fake(fakes, name: str):
    """fakes.<name>, or skip saying which local fake the check needs (absent on real hardware)."""
    value = getattr(fakes, name, None) if fakes is not None else None
    if value is None:
        pytest.skip(f"needs the test bed's fakes.{name} (a local fake internet service)")
    return value


def each_node(nodes) -> list:
    """(name, host) of every node, sorted; skip when the run has none."""
    if not nodes:
        pytest.skip("no node hosts in this run")
    return sorted(nodes.items())


def wait_for(what: str, check, timeout: float = 240, every: float = 5):
    """check()'s first truthy value; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return value


def step_names(host) -> list[str]:
    """The done-marker names: the NAME in `ceil-step NAME ...` of every installed ceil unit."""
    out = host.run("grep -ho 'ceil-step [A-Za-z0-9_.-]*' /etc/systemd/system/ceil-*.service").stdout
    return sorted({line.split()[1] for line in out.splitlines() if len(line.split()) == 2})


def failed_ceil_units(host) -> list[str]:
    out = host.run("systemctl list-units --state=failed --plain --no-legend 'ceil-*'").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
