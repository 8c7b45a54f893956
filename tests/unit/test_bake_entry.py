"""bake.py, the command people type: `python3 bake.py` outside the venv `make setup` made (a
Debian shell's python3, or `sudo python3 bake.py flash`, which is root's Python) runs the same
command with the venv's Python instead of failing on an import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bake_cli import REPO


def python_without_packages() -> list[str]:
    # The interpreter the venv was made from, without its site-packages: no click, no pydantic.
    return [getattr(sys, "_base_executable", None) or sys.executable, "-S"]


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="no .venv beside bake.py (make setup)")
def test_bake_py_started_by_a_python_without_ceils_packages_runs_in_the_venv(tmp_path):
    done = subprocess.run([*python_without_packages(), str(REPO / "bake.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: bake.py" in done.stdout, done.stderr


def test_without_a_venv_it_says_to_run_make_setup(tmp_path):
    shutil.copy(REPO / "bake.py", tmp_path / "bake.py")  # a checkout where `make setup` never ran
    done = subprocess.run([*python_without_packages(), str(tmp_path / "bake.py"), "doctor"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"Run `make setup` in {tmp_path}" in done.stderr, done.stderr


def click_and_rich_only(tmp_path: Path) -> dict:
    """The environment of a Python that has click and rich (Debian's python3-click and python3-rich)
    but none of ceil's other packages: the venv's click and rich, alone on its path."""
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    if site is None:
        pytest.skip("no .venv to borrow click and rich from (make setup)")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    for name in ("click", "rich", "markdown_it", "mdurl", "pygments"):
        (shelf / name).symlink_to(site / name)
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{shelf}:{REPO}"}


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="no .venv beside bake.py (make setup)")
def test_a_python_with_click_and_rich_but_not_ceils_other_packages_runs_in_the_venv(tmp_path):
    # Debian's python3 can have python3-click and python3-rich: it imports ceil.cli, whose commands
    # import their modules (pydantic and the rest) only when they run.
    env = click_and_rich_only(tmp_path)
    probe = subprocess.run([*python_without_packages(), "-c", "import ceil.cli, click, rich; import pydantic"],
                           env=env, capture_output=True, text=True)
    assert "No module named 'pydantic'" in probe.stderr, probe.stderr  # the Python this test means
    done = subprocess.run([*python_without_packages(), str(REPO / "bake.py"), "status", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: bake.py status" in done.stdout, done.stderr


def test_without_a_venv_a_python_with_click_and_rich_is_told_to_run_make_setup(tmp_path):
    """Debian's python3 with python3-click and python3-rich imports ceil.cli; the command's own
    modules then miss pydantic: the same message as any Python without ceil's packages."""
    shutil.copy(REPO / "bake.py", tmp_path / "bake.py")  # a checkout where `make setup` never ran
    env = click_and_rich_only(tmp_path)
    done = subprocess.run([*python_without_packages(), str(tmp_path / "bake.py"), "status", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "No module named 'pydantic'" in done.stderr and f"Run `make setup` in {tmp_path}" in done.stderr


def test_ctrl_c_while_python_is_still_importing_says_aborted_not_a_traceback():
    """Seen at 0.3 s: a raw KeyboardInterrupt traceback. Here the Ctrl-C lands exactly while
    ceil.cli is being imported."""
    code = ("import runpy, sys\n"
            "class CtrlC:\n"
            "    def find_spec(self, name, *rest):\n"
            "        if name == 'ceil.cli':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            f"sys.argv = [{str(REPO / 'bake.py')!r}, '--help']\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "CEIL_IN_VENV": "1"}, cwd=REPO)
    assert done.returncode == 130 and done.stderr == "aborted\n", done.stderr
