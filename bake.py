#!/usr/bin/env python3
"""ceil: bake SD-card images for a self-provisioning Raspberry Pi k3s cluster. See --help."""

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv"

# `python3 bake.py` (or `sudo python3 bake.py flash`) outside the venv `make setup` made: run the
# same command with the venv's Python. Decided by which Python this is, not by an import failing:
# a system Python with click and rich (Debian packages them) imports ceil.cli, whose commands load
# their own modules later, when they run. Once only.
if (VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != VENV.resolve() \
        and not os.environ.get("CEIL_IN_VENV"):
    os.environ["CEIL_IN_VENV"] = "1"
    os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])


def cannot_start(missing: ImportError) -> str:
    return (f"ceil cannot start: {missing}. Run `make setup` in {VENV.parent} (it makes the venv .venv with"
            " ceil's Python packages), then run this command again")


def aborted() -> None:
    # Ctrl-C while Python is still importing (the first few tenths of a second) printed a
    # KeyboardInterrupt traceback; the commands themselves say "aborted" and exit 130 too.
    sys.stderr.write("aborted\n")
    sys.exit(130)


try:
    from ceil.cli import main
except ImportError as missing:
    sys.exit(cannot_start(missing))
except KeyboardInterrupt:
    aborted()

if __name__ == "__main__":
    try:
        main()
    except ModuleNotFoundError as missing:
        # No venv yet, and a Python with click and rich: a command's own modules fail to import.
        if (missing.name or "ceil").partition(".")[0] == "ceil":
            raise
        sys.exit(cannot_start(missing))
    except KeyboardInterrupt:
        aborted()
