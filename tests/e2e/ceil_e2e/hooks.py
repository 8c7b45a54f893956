"""pytest hook bodies shared by the e2e and infra conftests."""

from __future__ import annotations

import re

import pytest

from . import session

MAX_COLLECTIONS = 3  # diagnostics cost ~10 s per machine; the first failures tell the story
_done: list[str] = []


def diagnostics_on_failure(item, call) -> None:
    """On a failed e2e test, copy journals, failed units and cloud-init logs into the artefacts."""
    if call.excinfo is None or call.when not in ("setup", "call"):
        return
    # pytest's skip/xfail outcomes are BaseExceptions, not failures: nothing to diagnose.
    if call.excinfo.errisinstance((pytest.skip.Exception, pytest.xfail.Exception)):
        return
    c = session.active()
    if c is None or len(_done) >= MAX_COLLECTIONS:
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-120:]
    _done.append(name)
    try:
        dest = c.collect(f"after {item.nodeid}")
        (dest / "FAILED-TESTS.txt").open("a").write(f"{item.nodeid}\n")
    except Exception as exc:  # diagnostics must never hide the real failure
        print(f"diagnostics collection failed: {exc}")
