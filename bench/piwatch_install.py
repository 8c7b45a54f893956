#!/usr/bin/env python3
"""Benchmark: PiWatch's install on the router, unpacking the pinned wheels (today) against pip
installing the same wheels (before 1c6710c), side by side in one booted guest under QEMU (TCG).

The router's `piwatch-setup` step builds a venv from the wheels baked into its card. It used to
run pip from its wheel (`--no-index --require-hashes --no-deps`); it now runs
`piwatch/deploy/unpack_wheels.py`, which checks the same sha256 pins, unpacks and compiles. Under
TCG a whole router first boot is too noisy to compare the two (the step took 102-231 s across
runs of different shapes), so this boots the bare test bed once and times both methods there,
alternately, each into a fresh prefix, with the same bundle and the same import check:

    python bench/piwatch_install.py [--arch amd64|arm64] [--flavor testbed-ubuntu|testbed-raspios] [--rounds 3]

pip itself is taken from this checkout's virtualenv (zipped: pip runs from a zip, as from its
wheel) rather than downloaded. Prints each round's seconds, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "e2e"), str(REPO / "tests" / "infra"), str(REPO)]

# Both methods end as the router's step does: the venv imports what the service imports.
CHECK = ("\"$VENV/bin/python\" -c 'import pydantic, uvicorn, piwatch.app; "
         "assert pydantic.VERSION.startswith(\"2\"), pydantic.VERSION'")
UNPACK = f"""set -eu
VENV=$1/venv
python3 -m venv --without-pip --system-site-packages "$VENV"
"$VENV/bin/python" /tmp/bench/bundle/unpack_wheels.py /tmp/bench/bundle >/dev/null
{CHECK}
"""
PIP = f"""set -eu
VENV=$1/venv
python3 -m venv --without-pip --system-site-packages "$VENV"
"$VENV/bin/python" /tmp/bench/pip.zip/pip install --no-index --find-links /tmp/bench/bundle/wheels \\
    --disable-pip-version-check --require-hashes --no-deps -q -r /tmp/bench/bundle/requirements.txt
{CHECK}
"""


def pip_zip(dest: Path) -> Path:
    """pip from this checkout's virtualenv, as a zip `python pip.zip/pip` runs."""
    import pip

    src = Path(pip.__file__).parent
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in src.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                zf.write(f, Path("pip") / f.relative_to(src))
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="amd64", choices=["amd64", "arm64"])
    ap.add_argument("--flavor", default="testbed-ubuntu", choices=["testbed-ubuntu", "testbed-raspios"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.update(CEIL_E2E_ARCH=args.arch, CEIL_E2E_FLAVOR=args.flavor)
    os.environ.setdefault("CEIL_E2E_ARTIFACTS", str(REPO / "test-artifacts" / f"bench-piwatch-{time.strftime('%Y%m%d-%H%M%S')}"))

    from ceil.catalog import load_flavor
    from ceil_e2e import session
    from ceil_e2e.bare import NAME
    from piwatch.bundle import build_bundle

    flavor = load_flavor(f"{args.flavor}-{args.arch}" if args.arch == "amd64" else args.flavor)
    work = Path(tempfile.mkdtemp(prefix="ceil-bench-piwatch-"))
    build_bundle(work / "bundle", flavor.python_tag, flavor.wheel_platforms)
    pip_zip(work / "pip.zip")
    bare = session.bare(args.flavor)
    times: dict[str, list[float]] = {"unpack": [], "pip": []}
    try:
        ssh = bare.wait()["ssh"]
        ssh.run(NAME, "rm -rf /tmp/bench && mkdir -p /tmp/bench", check=True)
        subprocess.run(["scp", "-q", "-F", str(ssh.path), "-r", str(work / "bundle"), str(work / "pip.zip"),
                        f"{NAME}:/tmp/bench/"], check=True, timeout=600)
        for name, script in (("unpack", UNPACK), ("pip", PIP)):
            ssh.run(NAME, f"cat > /tmp/bench/{name}.sh <<'EOF'\n{script}EOF", check=True)
        for r in range(args.rounds):
            # Alternate which goes first, so neither always meets a warmer page cache.
            order = ("unpack", "pip") if r % 2 == 0 else ("pip", "unpack")
            for name in order:
                prefix = f"/tmp/bench/{name}-{r}"
                done = ssh.run(NAME, f"sync; s=$(date +%s%N); sudo sh /tmp/bench/{name}.sh {prefix}"
                                     f" && echo \"$s $(date +%s%N)\"", timeout=1800)
                if done.returncode != 0:
                    print(f"{name} round {r + 1} failed:\n{done.stdout}{done.stderr}", file=sys.stderr)
                    return 1
                start, end = map(int, done.stdout.split()[-2:])
                times[name].append((end - start) / 1e9)
                print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    finally:
        session.close_bare()
    unpack, pip = statistics.median(times["unpack"]), statistics.median(times["pip"])
    print(f"PiWatch install in the {args.flavor} {args.arch} twin under TCG, median of {args.rounds}:"
          f" unpack {unpack:.1f} s, pip {pip:.1f} s")
    print(f"ratio unpack / pip: {unpack / pip:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
