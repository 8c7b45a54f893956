"""ceil-addons: the post-join job on the k3s server (`python3 -m addons_job` there).

Exit codes follow the first-boot step contract: 0 all add-ons ready; 1 something failed or
timed out that a later run may fix (systemd restarts the unit); 3 a permanent problem (the
plan or the kubeconfig is unusable), where retrying cannot help.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .apply import Applier
from .kube import ApiError, KubeApi, KubeconfigTransport
from .status import StatusFile

EXIT_OK, EXIT_RETRY, EXIT_PERMANENT = 0, 1, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ceil-addons", description=__doc__.splitlines()[0])
    p.add_argument("--plan", default="/etc/ceil/addons.json", type=Path)
    p.add_argument("--kubeconfig", default="/etc/rancher/k3s/k3s.yaml")
    p.add_argument("--status", default="/var/lib/ceil/addons.json", type=Path)
    p.add_argument("--secrets-dir", default="/etc/ceil/secrets", type=Path)
    p.add_argument("--node-timeout", default=1200.0, type=float,
                   help="seconds to wait for every node to be Ready before applying anyway")
    p.add_argument("--poll-seconds", default=5.0, type=float, help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", default=[], metavar="ADDON",
                   help="apply just this add-on (repeatable); default: the whole plan")
    return p.parse_args(argv)


def load_plan(path: Path, only: list[str]) -> dict:
    plan = json.loads(path.read_text())
    if plan.get("format") != 1:
        raise ValueError(f"{path}: plan format {plan.get('format')!r}, this job reads format 1")
    if only:
        unknown = set(only) - {a["name"] for a in plan["addons"]}
        if unknown:
            raise ValueError(f"{path} has no add-on {', '.join(sorted(unknown))}")
        plan["addons"] = [a for a in plan["addons"] if a["name"] in only]
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = load_plan(args.plan, args.only)
        api = KubeApi(KubeconfigTransport(args.kubeconfig))
    except (OSError, ValueError, KeyError) as e:
        print(f"ceil-addons: {e}", file=sys.stderr)
        return EXIT_PERMANENT
    except Exception as e:  # the kubernetes client's ConfigException and friends
        print(f"ceil-addons: cannot use kubeconfig {args.kubeconfig}: {e}", file=sys.stderr)
        return EXIT_RETRY  # k3s writes it at start-up: it may just not be there yet

    applier = Applier(api, secret_reader=lambda name: (args.secrets_dir / name).read_bytes(),
                      status=StatusFile(args.status), poll_seconds=args.poll_seconds,
                      log=lambda m: print(m, flush=True))
    try:
        report = applier.run(plan, node_timeout=args.node_timeout)
    except ApiError as e:
        print(f"ceil-addons: {e}", file=sys.stderr)
        return EXIT_RETRY
    if report.missing_nodes:
        print(f"ceil-addons: nodes that never became Ready: {', '.join(report.missing_nodes)}")
    failed = [n for n, s in report.states.items() if s != "ready"]
    if failed:
        print(f"ceil-addons: not ready: {', '.join(failed)} (see {args.status})", file=sys.stderr)
        return EXIT_RETRY
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
