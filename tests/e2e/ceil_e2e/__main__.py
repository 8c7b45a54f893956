"""Boot the e2e test cluster by hand and keep it up for debugging (Ctrl-C tears it down).

    cd tests/e2e && python -m ceil_e2e up [--roles router,one] [--no-wait] [--add three=10.42.0.13]
    ssh -F <artefacts>/main/ssh_config router        # printed when ready; nodes: one, two, ...

Same settings as the suite (CEIL_E2E_ARCH, CEIL_E2E_OVERRIDES, ...: docs/testing.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "infra"), str(Path(__file__).resolve().parents[3])]

from ceil_e2e import session  # noqa: E402
from ceil_e2e.cluster import log  # noqa: E402


def main() -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m ceil_e2e")
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--roles", help="comma-separated subset, e.g. router,one (default: all)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for first boot to finish")
    ap.add_argument("--add", action="append", default=[], metavar="NAME=IP",
                    help="then bake and boot a node added to cluster.yaml after the others (as a user adds one;"
                         " no MAC), e.g. three=10.42.0.13; repeatable")
    args = ap.parse_args()
    c = session.new_cluster("main", roles=args.roles.split(",") if args.roles else None, reuse=True)
    try:
        if not args.no_wait:
            for role in c.machines:
                try:
                    c.wait_ready(role, firstboot=True)
                except AssertionError as exc:
                    log(f"{role} not ready:\n{exc}")
        for spec in args.add:
            name, _, ip = spec.partition("=")
            c.add_node(name, ip)
            if not args.no_wait:
                try:
                    c.wait_ready(name, firstboot=True)
                except AssertionError as exc:
                    log(f"{name} not ready:\n{exc}")
        log(f"up; log in with: ssh -F {c.ssh.path} <{'|'.join(c.machines)}>; Ctrl-C to stop")
        while True:
            for g in c.guests:
                g.poll()
            time.sleep(5)
    except KeyboardInterrupt:
        return 0
    finally:
        c.close()
        log(f"artefacts: {c.artifacts}")


if __name__ == "__main__":
    sys.exit(main())
