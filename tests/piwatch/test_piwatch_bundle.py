"""The offline bundle: pip command construction, caching, the hand-built piwatch wheel, and the
deploy files. Only the test marked e2e talks to the package index."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import piwatch
from piwatch import bundle
from piwatch.bundle import (BundleError, build_bundle, build_piwatch_wheel, cache_key,
                            fetch_wheels, pip_download_command, python_version, render_env)

DEPLOY = Path(piwatch.__file__).parent / "deploy"


FAKE_WHEELS = ("fastapi-1.0-py3-none-any.whl", "uvicorn-1.0-py3-none-any.whl")
WHEEL_BYTES = b"wheel"
TARGET = "cp311 manylinux2014_aarch64"  # fetch_wheels' default target
LOCK = {TARGET: {name: hashlib.sha256(WHEEL_BYTES).hexdigest() for name in FAKE_WHEELS}}


class FakePip:
    """Stands in for `pip download`: records the command and drops fake wheels into --dest."""

    def __init__(self, wheels=FAKE_WHEELS, returncode=0, content=WHEEL_BYTES):
        self.calls: list[list[str]] = []
        self.wheels, self.returncode, self.content = wheels, returncode, content

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        for name in self.wheels:
            (dest / name).write_bytes(self.content)
        return subprocess.CompletedProcess(cmd, self.returncode, "", "ERROR: no matching distribution")


def test_pip_download_command_targets_the_router(tmp_path):
    cmd = pip_download_command(tmp_path, ["fastapi>=0.110,<1"], python_tag="cp312",
                               platform="manylinux2014_aarch64", pip=["pip"])
    assert cmd[:2] == ["pip", "download"]
    assert "--only-binary=:all:" in cmd  # nothing can be compiled for another CPU here
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--python-version"] == "3.12"
    assert pairs["--implementation"] == "cp"
    assert pairs["--abi"] == "cp312"
    assert pairs["--platform"] == "manylinux2014_aarch64"
    assert pairs["--dest"] == str(tmp_path)
    assert cmd[-1] == "fastapi>=0.110,<1"


def test_several_platforms(tmp_path):
    cmd = pip_download_command(tmp_path, ["x"], platform=["manylinux_2_36_aarch64", "linux_aarch64"])
    platforms = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--platform"]
    assert platforms == ["manylinux_2_36_aarch64", "linux_aarch64"]


@pytest.mark.parametrize("tag,version", [("cp311", "3.11"), ("cp39", "3.9"), ("cp313", "3.13")])
def test_python_version(tag, version):
    assert python_version(tag) == version


@pytest.mark.parametrize("tag", ["311", "py3", "cpython311", "cp3"])
def test_bad_python_tag(tag):
    with pytest.raises(BundleError, match="cp311"):
        python_version(tag)


def test_cache_key_changes_with_every_input():
    base = cache_key("cp311", "manylinux2014_aarch64", ["a", "b"])
    assert base == cache_key("cp311", "manylinux2014_aarch64", ["b", "a"])
    assert base.startswith("cp311-manylinux2014_aarch64-")
    assert base != cache_key("cp312", "manylinux2014_aarch64", ["a", "b"])
    assert base != cache_key("cp311", "manylinux2014_armv7l", ["a", "b"])
    assert base != cache_key("cp311", "manylinux2014_aarch64", ["a", "b>=2"])


def test_default_cache_root_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bundle.default_cache_root() == tmp_path / "ceil" / "wheels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert bundle.default_cache_root() == Path.home() / ".cache" / "ceil" / "wheels"


def test_fetch_wheels_downloads_once_then_uses_the_cache(tmp_path):
    pip = FakePip()
    first = fetch_wheels(cache_root=tmp_path, runner=pip, lock=LOCK)
    assert len(pip.calls) == 1
    assert {"--require-hashes", "--no-deps"} <= set(pip.calls[0])  # pip checks every download
    assert sorted(p.name for p in first.glob("*.whl")) == sorted(pip.wheels)
    assert (first / ".complete").is_file()
    assert fetch_wheels(cache_root=tmp_path, runner=pip, lock=LOCK) == first
    assert len(pip.calls) == 1, "second call must come from the cache"
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no scratch directory left"


def test_a_cached_wheel_that_changed_is_refused(tmp_path):
    """Issue 18 #10: the cache was never re-hashed; now every use checks it against the lock."""
    first = fetch_wheels(cache_root=tmp_path, runner=FakePip(), lock=LOCK)
    (first / "fastapi-1.0-py3-none-any.whl").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match its pinned sha256"):
        fetch_wheels(cache_root=tmp_path, runner=FakePip(), lock=LOCK)


def test_a_download_that_differs_from_the_lock_leaves_no_cache_entry(tmp_path):
    with pytest.raises(BundleError, match="does not match its pinned sha256"):
        fetch_wheels(cache_root=tmp_path, runner=FakePip(content=b"another build"), lock=LOCK)
    assert list(tmp_path.iterdir()) == []


def test_a_target_without_pins_is_refused_with_the_fix(tmp_path):
    with pytest.raises(BundleError, match="python -m piwatch.bundle --lock"):
        fetch_wheels(python_tag="cp39", cache_root=tmp_path, runner=FakePip(), lock=LOCK)


def test_a_failed_download_leaves_no_cache_entry(tmp_path):
    with pytest.raises(BundleError) as exc:
        fetch_wheels(cache_root=tmp_path, runner=FakePip(returncode=1), lock=LOCK)
    assert "pip download failed" in str(exc.value) and "no matching distribution" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_gpio_library_wheels_are_never_pinned(tmp_path):
    pip = FakePip(wheels=("lgpio-0.0.0.2-py3-none-any.whl", "fastapi-1.0-py3-none-any.whl"))
    with pytest.raises(BundleError, match="lgpio"):
        bundle.make_lock([("cp311", ["manylinux2014_aarch64"])], runner=pip, work=tmp_path)


def test_the_shipped_lock_pins_every_flavor_target():
    lock = bundle.load_lock(bundle.LOCK_FILE)
    for python_tag, platforms in bundle.catalog_targets():
        wheels = lock[bundle.target_name(python_tag, platforms)]
        names = {w.split("-")[0].lower() for w in wheels}
        assert {"fastapi", "uvicorn", "gpiozero", "pydantic", "pydantic_settings", "pyyaml"} <= names
        assert "pip" not in names  # the router unpacks its wheels (deploy/unpack_wheels.py)
        assert all(len(d) == 64 for d in wheels.values())


def test_piwatch_wheel_is_complete_and_reproducible(tmp_path):
    a = build_piwatch_wheel(tmp_path / "a")
    b = build_piwatch_wheel(tmp_path / "b")
    assert a.name == f"piwatch-{piwatch.__version__}-py3-none-any.whl"
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = set(zf.namelist())
        for needed in ("piwatch/__main__.py", "piwatch/app.py", "piwatch/reactions.yaml",
                       "piwatch/static/index.html", "piwatch/deploy/ceil-piwatch.service"):
            assert needed in names, needed
        assert not any("__pycache__" in n for n in names)
        meta = zf.read(f"piwatch-{piwatch.__version__}.dist-info/METADATA").decode()
        assert "Requires-Dist: pydantic>=2.6,<3" in meta
        assert "Requires-Dist: fastapi" in meta


def test_piwatch_wheel_installs_with_pip(tmp_path):
    """pip itself checks RECORD hashes and metadata; install offline with no dependencies."""
    wheel = build_piwatch_wheel(tmp_path / "w")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert (target / "piwatch" / "reactions.yaml").is_file()
    assert (target / "piwatch" / "static" / "index.html").is_file()


def test_build_bundle_layout(tmp_path):
    out = build_bundle(tmp_path / "bundle", cache_root=tmp_path / "cache", runner=FakePip(), lock=LOCK)
    piwatch_wheel = out / "wheels" / f"piwatch-{piwatch.__version__}-py3-none-any.whl"
    # Every wheel pinned, piwatch's own as built.
    digest = hashlib.sha256(WHEEL_BYTES).hexdigest()
    assert (out / "requirements.txt").read_text().splitlines() == [
        f"fastapi==1.0 --hash=sha256:{digest}",
        f"piwatch=={piwatch.__version__} --hash=sha256:{hashlib.sha256(piwatch_wheel.read_bytes()).hexdigest()}",
        f"uvicorn==1.0 --hash=sha256:{digest}"]
    assert os.access(out / "install-piwatch.sh", os.X_OK)
    for name in ("unpack_wheels.py", "reactions.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "ceil-piwatch.service").exists()  # placed with ceil's units, not by the step
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels == sorted([*FAKE_WHEELS, f"piwatch-{piwatch.__version__}-py3-none-any.whl"])


def test_render_env_is_read_back_by_settings(tmp_path, monkeypatch):
    from piwatch.settings import Settings

    text = render_env("10.42.0.1", 8080)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    s = Settings()
    assert (s.host, s.port) == ("10.42.0.1", 8080)
    assert s.reactions_file == Path("/etc/ceil/piwatch-reactions.yaml")


def test_service_unit_directives():
    unit = (DEPLOY / "ceil-piwatch.service").read_text()
    # It names only units that exist on the router: a unit that was never installed (the old
    # ceil-piwatch-install.service) listed as "not-found" on the booted router.
    assert "ceil-piwatch-install" not in unit
    for line in ("EnvironmentFile=/etc/ceil/piwatch.env",
                 "ExecStart=/opt/ceil/piwatch/venv/bin/python -m piwatch",
                 "Restart=on-failure", "User=ceil-piwatch", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "WantedBy=multi-user.target"):
        assert line in unit.splitlines(), line


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_parse_and_are_hardened(tmp_path):
    units = [DEPLOY / "ceil-piwatch.service"]
    done = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True)
    # The executables exist only on the router; anything else (unknown keys, bad values) fails.
    problems = [l for l in (done.stdout + done.stderr).splitlines()
                if l.strip() and "is not executable: No such file or directory" not in l]
    assert problems == []
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(units[0], root / "etc/systemd/system")
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "--no-pager", "ceil-piwatch.service"], capture_output=True, text=True)
    level = [l for l in done.stdout.splitlines() if "Overall exposure level" in l]
    assert level, done.stdout + done.stderr
    assert float(level[0].split(":")[1].split()[0]) <= 3.0, level[0]


def test_install_script_is_valid_sh():
    subprocess.run(["sh", "-n", str(DEPLOY / "install-piwatch.sh")], check=True)


def test_install_script_installs_offline_once_and_refuses_a_changed_wheel(tmp_path):
    """install-piwatch.sh as the router runs it, into a scratch prefix, with no index: stand-in
    wheels (this machine is no router, and tests fetch nothing from PyPI) carry the modules its
    import check names. A changed wheel is refused and leaves no venv; a second run is a no-op.
    The real wheels install on the booted router twin, which has no internet
    (tests/infra/test_piwatch.py)."""
    b = tmp_path / "bundle"
    (b / "wheels").mkdir(parents=True)
    wheels = [
        _wheel(b / "wheels" / "pydantic-2.0-py3-none-any.whl", {"pydantic/__init__.py": b"VERSION = '2.0'\n"}),
        _wheel(b / "wheels" / "uvicorn-1.0-py3-none-any.whl", {"uvicorn/__init__.py": b""}),
        _wheel(b / "wheels" / "piwatch-1.0-py3-none-any.whl",
               {"piwatch/__init__.py": b"", "piwatch/app.py": b"READY = True\n"}),
    ]
    (b / "requirements.txt").write_text("\n".join(bundle.requirement_lines(
        {w.name: bundle.sha256_of(w) for w in wheels})) + "\n")
    for name in ("install-piwatch.sh", "unpack_wheels.py"):
        shutil.copy2(DEPLOY / name, b / name)
    (b / "reactions.yaml").write_text("reactions: {}\n")
    env = {**os.environ, "CEIL_ETC": str(tmp_path / "etc"), "PIP_NO_INDEX": "1"}

    forged = tmp_path / "forged"
    shutil.copytree(b, forged)
    victim = forged / "wheels" / wheels[1].name
    victim.write_bytes(victim.read_bytes() + b"\0")
    done = subprocess.run(["sh", str(forged / "install-piwatch.sh"), str(forged)], capture_output=True, cwd=tmp_path,
                          text=True, env={**env, "CEIL_PIWATCH_PREFIX": str(tmp_path / "opt-forged")})
    assert done.returncode != 0 and "matches no hash" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "opt-forged/venv").exists()

    env["CEIL_PIWATCH_PREFIX"] = str(tmp_path / "opt")
    # The router's first boot: the venv alone while apt is busy, then the rest (piwatch.sh).
    for run, venv_only in enumerate([True, False, False]):
        # cwd: `python -c` puts it first on sys.path, and this checkout has the real piwatch.
        done = subprocess.run(["sh", str(b / "install-piwatch.sh"), str(b)], cwd=tmp_path,
                              env={**env, "CEIL_PIWATCH_VENV_ONLY": "1" if venv_only else ""},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("already installed" in done.stdout) == (run > 0), done.stdout
        # What needs the packages step (the system user, the config) waits for the second call.
        assert (tmp_path / "etc/piwatch-reactions.yaml").exists() == (not venv_only)
    python = tmp_path / "opt/venv/bin/python"
    check = subprocess.run([str(python), "-c", "import piwatch.app, pydantic; print(piwatch.app.READY, pydantic.VERSION)"],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert check.stdout.split() == ["True", "2.0"], check.stdout + check.stderr
    assert (tmp_path / "etc/piwatch-reactions.yaml").read_text() == "reactions: {}\n"


def test_the_venv_is_on_the_card_before_its_marker_and_the_reactions_file_is_whole_or_absent():
    """Found in review: `mv venv.new venv; touch marker; sync` lets ext4 commit the rename and the
    marker before the modules' data: a power cut left a marker over empty modules, and every
    re-run said "already installed" while PiWatch never answered. The reactions file was written
    in place, and an empty one reads as the defaults for good."""
    lines = [line.strip() for line in (DEPLOY / "install-piwatch.sh").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    swap = lines.index('mv "$VENV.new" "$VENV"')
    assert "sync" in lines[swap - 3:swap] and lines.index('touch "$marker"') > swap
    assert not [line for line in lines if line.endswith('"$ETC/piwatch-reactions.yaml"') and line.startswith("install ")]
    assert 'mv "$ETC/.piwatch-reactions.yaml.tmp" "$ETC/piwatch-reactions.yaml"' in lines


def test_bundle_cli(tmp_path, monkeypatch, capsys):
    pip = FakePip(returncode=1)
    monkeypatch.setattr(bundle.subprocess, "run", pip)
    rc = bundle.main([str(tmp_path / "b"), "--python-tag", "cp312", "--platform", "linux_armv7l",
                      "--cache-root", str(tmp_path / "cache")])
    assert rc == 1
    assert "no pinned wheels for cp312 linux_armv7l" in capsys.readouterr().err
    assert pip.calls == []  # nothing unpinned is downloaded


def _wheel(path: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _unpack(bundle_dir: Path, site: Path) -> subprocess.CompletedProcess:
    """deploy/unpack_wheels.py run as the router runs it, with site-packages moved to `site`."""
    code = (f"import sys, sysconfig; sysconfig.get_path = lambda name: {str(site)!r}; "
            f"sys.argv = ['unpack_wheels.py', {str(bundle_dir)!r}]; "
            f"exec(compile(open({str(DEPLOY / 'unpack_wheels.py')!r}).read(), 'unpack_wheels.py', 'exec'))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_unpack_wheels_lays_out_site_packages_and_refuses_what_is_not_pinned(tmp_path):
    b = tmp_path / "bundle"
    (b / "wheels").mkdir(parents=True)
    good = _wheel(b / "wheels" / "demo-1.0-py3-none-any.whl", {
        "demo/__init__.py": b"X = 1\n", "demo-1.0.dist-info/METADATA": b"Name: demo\n",
        "demo-1.0.data/purelib/demo_extra.py": b"Y = 2\n", "demo-1.0.data/scripts/demo": b"#!/bin/sh\n"})
    lib = _wheel(b / "wheels" / "native-1.0-cp311-linux_aarch64.whl", {"native/_speed.so": b"\x7fELF"}, 0o755)
    pins = [f"demo==1.0 --hash=sha256:{bundle.sha256_of(good)}", f"native==1.0 --hash=sha256:{bundle.sha256_of(lib)}"]
    (b / "requirements.txt").write_text("\n".join(pins) + "\n")
    site = tmp_path / "site"
    done = _unpack(b, site)
    assert done.returncode == 0, done.stderr
    assert (site / "demo/__init__.py").read_bytes() == b"X = 1\n"
    assert list((site / "demo/__pycache__").glob("__init__.*.pyc"))  # compiled at install, as root
    assert (site / "demo_extra.py").is_file() and not (site / "demo").joinpath("..", "demo-1.0.data").exists()
    assert (site / "demo-1.0.dist-info/INSTALLER").read_text() == "ceil\n"
    assert os.access(site / "native/_speed.so", os.X_OK)
    # A changed wheel, a missing one and a path out of site-packages: each refused, nothing unpacked.
    for breakage in ("changed", "missing", "escape"):
        broken = tmp_path / breakage
        shutil.copytree(b, broken)
        if breakage == "changed":
            (broken / "wheels" / good.name).write_bytes(good.read_bytes() + b"\0")
        elif breakage == "missing":
            (broken / "wheels" / lib.name).unlink()
        else:
            evil = _wheel(broken / "wheels" / good.name, {"../../evil.py": b"boom"})
            (broken / "requirements.txt").write_text(
                f"demo==1.0 --hash=sha256:{bundle.sha256_of(evil)}\n{pins[1]}\n")
        fresh = tmp_path / f"site-{breakage}"
        done = _unpack(broken, fresh)
        assert done.returncode == 1, (breakage, done.stdout)
        assert {"changed": "matches no hash", "missing": "missing from",
                "escape": "unsafe path"}[breakage] in done.stderr
        assert not (tmp_path / "evil.py").exists()
        if breakage != "escape":
            assert not fresh.exists(), breakage
