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
