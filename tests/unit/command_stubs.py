"""Stand-ins for system commands, for running step scripts on a scratch root (CEIL_ROOT).

Each stub appends "NAME ARGS" to a call log, prints $STUB_<NAME>_OUT if set (printf %b, so
"\\n" makes lines) and exits with $STUB_<NAME>_RC (default 0).
"""

from __future__ import annotations

from pathlib import Path


def write_stubs(bin_dir: Path, log: Path, names: list[str]) -> None:
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        var = name.upper()
        (bin_dir / name).write_text(
            f'#!/bin/sh\necho "{name} $*" >> {log}\n'
            f'[ -n "${{STUB_{var}_OUT:-}}" ] && printf "%b\\n" "$STUB_{var}_OUT"\n'
            f'exit "${{STUB_{var}_RC:-0}}"\n'
        )
        (bin_dir / name).chmod(0o755)
