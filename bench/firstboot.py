#!/usr/bin/env python3
"""Benchmark: the router's first boot under QEMU (TCG), step by step, beside the bare twin's.

Boots, in one run and side by side, the test bed bare (its own NoCloud seed: the OS and
cloud-init alone) and a router baked from it (tests/e2e's cluster.yaml, the same fakes of the
internet), from scratch (the first-boot cache is not used). Prints each first-boot step's start,
duration and share of the router's first boot (`bake.py status --times` reads the same records),
and the ratio of the router's first boot to the bare twin's.

    python bench/firstboot.py [--arch amd64|arm64] [--flavor testbed-ubuntu|testbed-raspios]

Needs what `make e2e` needs (root for the test bed's first build, QEMU); takes the time of one
router first boot (minutes under TCG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "e2e"), str(REPO / "tests" / "infra"), str(REPO)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="amd64", choices=["amd64", "arm64"])
    ap.add_argument("--flavor", default="testbed-ubuntu", choices=["testbed-ubuntu", "testbed-raspios"])
    args = ap.parse_args()
    os.environ.update(CEIL_E2E_ARCH=args.arch, CEIL_E2E_FLAVOR=args.flavor, CEIL_E2E_FRESH="1")
    # The suite's timing twins hold the router's upstream NTP back (300 s and more) and date the
    # card's first boot 30 days after its bake, so that a test can see ceil wait; here they would
    # be time ceil spends waiting for the harness, not its own. Off unless asked for; the twins of
    # a real image (Ubuntu's unattended-upgrades holding apt's locks, the stale clock) stay on.
    os.environ.setdefault("CEIL_E2E_NTP_DELAY", "0")
    os.environ.setdefault("CEIL_E2E_BOOTED_AFTER_BAKE_DAYS", "0")
    os.environ.setdefault("CEIL_E2E_ARTIFACTS", str(REPO / "test-artifacts" / f"bench-firstboot-{time.strftime('%Y%m%d-%H%M%S')}"))

    from rich.console import Console

    from ceil.status import times_tables
    from ceil_e2e import session

    bare = session.bare(args.flavor)
    router = session.new_cluster("bench", roles=["router"], reuse=False)
    try:
        bare.wait()
        bare_s = time.monotonic() - bare.guest.started_at
        session.close_bare(args.flavor)  # the router's boot gets the second core from here on
        router_s = router.wait_ready("router", firstboot=True).timings["firstboot_s"]
        host = router.host("router")
        report = json.loads(host.check_output("sudo /usr/local/lib/ceil/ceil-status --json"))
    finally:
        router.close()
        session.close_bare()

    print(f"router first boot, {args.flavor} {args.arch} under TCG: {router_s:.0f} s from power-on to"
          f" ceil-firstboot.target; bare twin (OS + cloud-init): {bare_s:.0f} s")
    # The same table as `bake.py status --times`, from the router's own report.
    for table in times_tables({"hosts": [{"hostname": "router", "report": report}]}):
        Console(width=100).print(table)
    print(f"ratio router / bare twin: {router_s / bare_s:.2f}x (upstream NTP held"
          f" {os.environ['CEIL_E2E_NTP_DELAY']} s, card booted {os.environ['CEIL_E2E_BOOTED_AFTER_BAKE_DAYS']}"
          " days after its bake)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
