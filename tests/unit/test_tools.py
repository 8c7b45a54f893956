"""Host tools: `doctor` and the bake's own check list every tool the bake runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ceil import tools
from ceil.errors import CeilError

REPO = Path(__file__).resolve().parents[2]


def test_every_tool_the_bake_runs_is_checked_before_it_starts(monkeypatch):
    """debugfs was missing from the list: `doctor` said every bake tool was there, and the bake
    then failed half-way with "debugfs not found"."""
    bake_tools = {t.name for t in tools.TOOLS if t.needed_for == "bake"}
    called = set()
    for path in (REPO / "ceil").rglob("*.py"):
        called |= set(re.findall(r'\[\s*"(debugfs|mcopy|mtype|mmd|mdel|mdir|mattrib)"', path.read_text()))
    assert called and called <= bake_tools, called - bake_tools
    monkeypatch.setattr(tools.shutil, "which", lambda name: None if name == "debugfs" else f"/usr/bin/{name}")
    with pytest.raises(CeilError, match=r"debugfs not found: it reads and writes the root \(ext4\) partition"):
        tools.check_tools("bake")


def test_doctor_lists_stern_and_says_where_homebrews_debugfs_is(monkeypatch):
    monkeypatch.setattr(tools.platform, "system", lambda: "Darwin")
    hints = {name: hint for name, _, _, _, hint in tools.doctor_rows()}
    assert "brew --prefix e2fsprogs" in hints["debugfs"] and "keg-only" in hints["debugfs"]
    assert hints["stern"] == "brew install stern"


def test_kubectl_is_not_sent_to_debians_too_old_package(monkeypatch):
    """`doctor` said `sudo apt install kubectl`: no Debian release has that package, and its
    kubernetes-client (1.20) is far outside kubectl's one-minor-version skew."""
    monkeypatch.setattr(tools.platform, "system", lambda: "Linux")
    hints = {name: hint for name, _, _, _, hint in tools.doctor_rows()}
    assert "apt install" not in hints["kubectl"] and "pkgs.k8s.io" in hints["kubectl"]
    assert "brew" not in hints["stern"] + hints["helm"]


@pytest.mark.parametrize("client, wrong", [("20", True), ("34", True), ("35", False), ("36", False), ("37+", False),
                                           ("38", True)])
def test_doctor_says_when_kubectl_is_too_far_from_the_clusters_kubernetes(client, wrong):
    said = tools.kubectl_skew(36, '{"clientVersion": {"major": "1", "minor": "%s"}}' % client)
    assert (said is not None) == wrong, said
    if wrong:
        assert "1.36" in said and "pkgs.k8s.io" in said
    assert "could not be read" in tools.kubectl_skew(36, "kubectl: unknown flag -o")


def test_doctor_reads_the_kubectl_on_path(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ceil.cli import cli

    stub = tmp_path / "kubectl"
    stub.write_text('#!/bin/sh\necho \'{"clientVersion": {"major": "1", "minor": "20"}}\'\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "300"})
    assert "kubectl: it is 1.20" in result.output, result.output


def test_the_vpn_clients_tools_are_listed_where_they_are_needed(monkeypatch):
    monkeypatch.setattr(tools.platform, "system", lambda: "Linux")
    hints = {name: hint for name, _, _, _, hint in tools.doctor_rows()}
    assert hints["wg-quick"] == "sudo apt install wireguard-tools"
    assert hints["resolvconf"].startswith("sudo apt install openresolv") and "systemd-resolved" in hints["resolvconf"]
    monkeypatch.setattr(tools.platform, "system", lambda: "Darwin")  # macOS's wg-quick sets DNS itself
    assert "resolvconf" not in {name for name, *_ in tools.doctor_rows()}
