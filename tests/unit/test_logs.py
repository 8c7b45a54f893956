"""`bake.py logs` (issue 20, phase 3's kail): the command line it runs, with stern or kubectl."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ceil import logs
from ceil.errors import CeilError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"


def test_stern_follows_a_name_pattern_everywhere_or_in_one_namespace():
    argv = logs.logs_argv("/k", "podinfo", None, "10m", "/usr/bin/stern", "/usr/bin/kubectl")
    assert argv == ["/usr/bin/stern", "--kubeconfig", "/k", "--all-namespaces", "--since", "10m", "podinfo"]
    assert logs.logs_argv("/k", ".", "demo", "1h", "stern", None)[3:5] == ["--namespace", "demo"]


def test_a_selector_means_the_same_with_stern_as_with_kubectl_and_the_examples_select_the_demo():
    """The README's `logs -n demo` failed without stern, and the hint's app=podinfo selected
    nothing: the demo's pods carry app.kubernetes.io/name."""
    argv = logs.logs_argv("/k", logs.DEMO_SELECTOR, "demo", "10m", "/usr/bin/stern", None)
    assert argv[-3:] == ["--selector", "app.kubernetes.io/name=podinfo", "."]
    from pathlib import Path
    demo = (Path(__file__).resolve().parents[2] / "addons/demo/podinfo.yaml.j2").read_text()
    assert "labels: {app.kubernetes.io/name: podinfo}" in demo
    with pytest.raises(CeilError, match="app.kubernetes.io/name=podinfo"):
        logs.logs_argv("/k", None, "demo", "10m", None, "/usr/bin/kubectl")


def test_without_stern_kubectl_follows_a_selector_and_a_name_says_what_to_install():
    argv = logs.logs_argv("/k", "app=podinfo", "demo", "10m", None, "/usr/bin/kubectl")
    assert argv[:4] == ["/usr/bin/kubectl", "--kubeconfig", "/k", "logs"]
    assert {"--follow", "--prefix", "--all-containers"} <= set(argv)
    assert argv[argv.index("--selector") + 1] == "app=podinfo" and argv[-2:] == ["--namespace", "demo"]
    with pytest.raises(CeilError, match="label selector.*stern"):
        logs.logs_argv("/k", "podinfo", None, "10m", None, "/usr/bin/kubectl")
    with pytest.raises(CeilError, match="neither stern nor kubectl"):
        logs.logs_argv("/k", "app=x", None, "10m", None, None)


def test_the_command_runs_it_with_the_baked_kubeconfig(tmp_path, monkeypatch):
    (tmp_path / "cluster.yaml").write_text(f"ssh: {{authorized_keys: ['{KEY}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/kubeconfig").write_text("apiVersion: v1\n")
    ran = []
    monkeypatch.setattr(logs.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "stern" else None)
    monkeypatch.setattr(logs.subprocess, "Popen", lambda argv: ran.append(argv) or type("P", (), {"wait": lambda self: 0})())
    result = CliRunner().invoke(logs.logs_command, ["--config", str(tmp_path / "cluster.yaml"), "-n", "demo", "httpd"])
    assert result.exit_code == 0, result.output
    assert ran == [["/usr/bin/stern", "--kubeconfig", str((tmp_path / "out/kubeconfig").resolve()),
                    "--namespace", "demo", "--since", "10m", "httpd"]]


@pytest.mark.parametrize("since, good", [("10m", True), ("1h30m", True), ("45s", True), ("forever", False),
                                         ("10", False), ("-5m", False), ("10m; id", False)])
def test_since_takes_a_duration_or_says_what_one_is(since, good, tmp_path):
    from click.testing import CliRunner

    from ceil.logs import logs_command

    result = CliRunner().invoke(logs_command, ["--config", str(tmp_path / "none.yaml"), "--since", since])
    if good:  # it gets as far as the missing cluster.yaml
        assert "is not a duration" not in result.output
    else:
        assert result.exit_code == 2 and "is not a duration" in result.output and "1h30m" in result.output


def test_without_stern_and_without_a_namespace_each_namespace_gets_its_own_kubectl(tmp_path):
    """`kubectl logs` has no --all-namespaces (`make logs Q=...` without NS failed with "unknown
    flag" wherever stern was missing): the pods' namespaces are asked first, one kubectl each."""
    kubectl = tmp_path / "kubectl"  # answers `get pods -A -l ...` as the API would: one line per pod
    kubectl.write_text("#!/bin/sh\ncase \"$*\" in *'get pods --all-namespaces'*) printf 'demo\\nshop\\ndemo\\n' ;;"
                       " *) exit 9 ;; esac\n")
    kubectl.chmod(0o755)
    argvs = logs.logs_argvs("/k", "app=web", None, "10m", None, str(kubectl))
    assert [a[-2:] for a in argvs] == [["--namespace", "demo"], ["--namespace", "shop"]]
    assert all("--all-namespaces" not in a for a in argvs)
    kubectl.write_text("#!/bin/sh\nexit 0\n")  # no pod matches
    with pytest.raises(CeilError, match="no pod in any namespace matches app=web"):
        logs.logs_argvs("/k", "app=web", None, "10m", None, str(kubectl))


def test_every_command_built_is_one_kubectl_parses(tmp_path):
    """The flags checked by the real kubectl (its parser answers before any connection)."""
    import shutil
    import subprocess

    real = shutil.which("kubectl")
    if real is None:
        pytest.skip("kubectl is not installed (make setup-test installs it)")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                          "current-context: x\n")
    argv = logs.logs_argv(str(kubeconfig), "app=web", "demo", "10m", None, real)
    done = subprocess.run([*argv[:-6], "--request-timeout=2s", *argv[-6:]], capture_output=True, text=True, timeout=60)
    assert "unknown flag" not in done.stderr and "connect" in done.stderr.lower(), done.stderr
    with pytest.raises(CeilError, match="could not list the pods"):
        logs.namespaces_of(str(kubeconfig), "app=web", real)
