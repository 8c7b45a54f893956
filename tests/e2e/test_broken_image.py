"""A deliberately broken image must fail the suite with the failed unit and its log.

Bakes a router, adds a first-boot step that fails on purpose (exit 3: permanent, so ceil-step
does not retry), boots it, and checks that the harness's readiness wait fails fast with a message
naming the unit and quoting its journal.
"""

from __future__ import annotations

import pytest

from ceil_e2e import seed, session
from ceil_e2e.readiness import NotReady

pytestmark = [pytest.mark.e2e, pytest.mark.full, pytest.mark.own_cluster]

UNIT = "ceil-broken-on-purpose.service"
MESSAGE = "simulated failure: this step is broken on purpose"
UNIT_TEXT = f"""[Unit]
Description=ceil e2e: a first-boot step that fails on purpose
After=ceil-secrets.service
ConditionPathExists=!/var/lib/ceil/done/broken-on-purpose

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/ceil/ceil-step broken-on-purpose /bin/sh -c 'echo "{MESSAGE}"; exit 3'

[Install]
RequiredBy=ceil-firstboot.target
"""


def break_router(c) -> None:
    seed.add_to_boot(c.image("router"), {f"ceil/units/{UNIT}": UNIT_TEXT})


def test_a_failing_firstboot_unit_fails_with_its_name_and_log():
    c = session.new_cluster("broken", roles=["router"], after_bake=break_router)
    try:
        with pytest.raises(NotReady) as err:
            c.wait_ready("router", firstboot=True)
        text = str(err.value)
        assert UNIT in text, text
        assert MESSAGE in text, text
        c.collect("expected failure")
        assert (c.artifacts / "diagnostics" / "router" / "journal-ceil.txt").read_text().count(MESSAGE)
    finally:
        c.close()
