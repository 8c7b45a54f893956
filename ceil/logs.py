"""`bake.py logs`: follow the logs of many pods at once (the 2019 project's kail, issue 20).

With stern (github.com/stern/stern, maintained; kail is not) a QUERY is a pod-name pattern or a
label selector, and new pods are picked up as they start. Without it, kubectl follows the pods a
label selector names (QUERY must then be a selector such as app.kubernetes.io/name=podinfo, the
demo's), each line prefixed by its pod; `kubectl logs` takes one namespace only, so without -n the
namespaces of the matching pods are asked first and each is followed by a kubectl of its own. So a
selector works either way. Both use the baked admin kubeconfig.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click

from .addons.cli import Context, cluster_options
from .errors import CeilError

DEMO_SELECTOR = "app.kubernetes.io/name=podinfo"  # the demo add-on's pods (addons/demo/podinfo.yaml.j2)
STERN_HINT = ("stern follows pods by name pattern: `brew install stern`, or `go install"
              " github.com/stern/stern@latest`, or a release binary from github.com/stern/stern")


def logs_argv(kubeconfig: str, query: str | None, namespace: str | None, since: str, stern: str | None,
              kubectl: str | None) -> list[str]:
    """The command that follows QUERY's pods: stern's, or kubectl's in `namespace` (kubectl logs
    has no --all-namespaces: without -n, see namespaces_of and logs_argvs)."""
    scope = ["--all-namespaces"] if namespace is None else ["--namespace", namespace]
    if stern:
        # a selector (it has "=") means the same with stern as with kubectl; else a name pattern
        target = ["--selector", query, "."] if query and "=" in query else [query or "."]
        return [stern, "--kubeconfig", kubeconfig, *scope, "--since", since, *target]
    check_kubectl_can(query, kubectl)
    if namespace is None:
        raise ValueError("kubectl logs follows one namespace: ask namespaces_of first")
    return [kubectl, "--kubeconfig", kubeconfig, "logs", "--follow", "--prefix", "--all-containers",
            "--max-log-requests", "20", "--since", since, "--selector", query, "--namespace", namespace]


def check_kubectl_can(query: str | None, kubectl: str | None) -> None:
    """What kubectl, without stern, cannot follow: refused with what to do instead."""
    if not kubectl:
        raise CeilError(f"neither stern nor kubectl found: {STERN_HINT}; kubectl: `python bake.py doctor`")
    if query is None:
        raise CeilError(f"every pod at once needs stern; without it, name the pods by a label selector,"
                        f" e.g. python bake.py logs -n demo {DEMO_SELECTOR}. {STERN_HINT}")
    if "=" not in query:
        raise CeilError(f"without stern, QUERY must be a label selector such as {DEMO_SELECTOR} (got {query!r});"
                        f" {STERN_HINT}")


def namespaces_of(kubeconfig: str, selector: str, kubectl: str) -> list[str]:
    """The namespaces holding a pod that `selector` matches, asked of the API."""
    done = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "--request-timeout=20s", "get", "pods",
                           "--all-namespaces", "--selector", selector, "-o",
                           "jsonpath={range .items[*]}{.metadata.namespace}{'\\n'}{end}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise CeilError(f"kubectl could not list the pods {selector} selects: {done.stderr.strip()}")
    return sorted(set(done.stdout.split()))


def logs_argvs(kubeconfig: str, query: str | None, namespace: str | None, since: str, stern: str | None,
               kubectl: str | None) -> list[list[str]]:
    """One command, or without stern and without -n one kubectl per namespace QUERY's pods are in."""
    if stern or namespace is not None:
        return [logs_argv(kubeconfig, query, namespace, since, stern, kubectl)]
    check_kubectl_can(query, kubectl)  # before asking the API
    found = namespaces_of(kubeconfig, query, kubectl)
    if not found:
        raise CeilError(f"no pod in any namespace matches {query}: `python bake.py logs` follows running pods;"
                        f" check the selector with kubectl get pods -A -l {query}")
    return [logs_argv(kubeconfig, query, ns, since, stern, kubectl) for ns in found]


def _duration(value: str) -> str:
    """A duration as kubectl and stern take it (Go's: 30s, 10m, 1h30m), else a usage error."""
    if not re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h))+", value):
        raise click.BadParameter(f"{value!r} is not a duration: give a number with s, m or h, e.g. 30s, 10m, 1h30m")
    return value


@click.command("logs")
@cluster_options
@click.option("-n", "--namespace", help="Only this namespace [default: every namespace].")
@click.option("--since", default="10m", show_default=True, callback=lambda ctx, param, value: _duration(value),
              help="Start this far back (e.g. 30s, 1h, 1h30m).")
@click.argument("query", required=False)
def logs_command(config_path: Path, secrets_path, kubeconfig_path, namespace, since, query) -> None:
    """Follow the logs of every pod QUERY matches, each line labelled with its pod. QUERY: a label
    selector (app.kubernetes.io/name=podinfo, the demo's pods), with stern or kubectl; with stern
    also a pod-name pattern, or nothing for every pod. Ctrl-C stops."""
    obj = Context(config_path, secrets_path, kubeconfig_path)
    with obj.kubeconfig_path() as kubeconfig:
        argvs = logs_argvs(kubeconfig, query, namespace, since, shutil.which("stern"), shutil.which("kubectl"))
        procs = [subprocess.Popen(argv) for argv in argvs]  # their lines interleave, each with its pod
        try:
            raise SystemExit(max(p.wait() for p in procs))
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            raise SystemExit(0) from None
