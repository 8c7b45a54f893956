"""The real wpa_supplicant's configuration reader, as a checker: what it takes from a file, read
from its own debug output (-dd -K prints each network's SSID and key as it parsed them). It
runs no interface: the one it is given does not exist, so it stops after reading."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

WPA = shutil.which("wpa_supplicant") or next((p for p in ("/sbin/wpa_supplicant", "/usr/sbin/wpa_supplicant")
                                              if Path(p).exists()), None)
MISSING = "wpa_supplicant not installed (scripts/setup-host.sh --test installs wpasupplicant)"
DUMP = re.compile(r"^(?P<title>[\w ()]+) - hexdump(?P<ascii>_ascii)?\(len=(?P<n>\d+)\):(?P<rest>.*)$")


def parsed(conf: str, tmp: Path) -> tuple[dict[str, bytes], str]:
    """({title: bytes} of every value wpa_supplicant dumped while reading `conf`: "ssid",
    "PSK (ASCII passphrase)", "PSK (from passphrase)" (the key it derived), "PSK" (a 64-hex key);
    what it said)."""
    path = tmp / "wpa.conf"
    path.write_text(conf)
    done = subprocess.run([WPA, "-dd", "-K", "-c", str(path), "-i", "ceil-nosuch0", "-D", "nl80211"],
                          capture_output=True, text=True, timeout=30)
    lines = (done.stdout + done.stderr).splitlines()
    found: dict[str, bytes] = {}
    for i, line in enumerate(lines):
        if m := DUMP.match(line):
            n = int(m["n"])
            if m["ascii"]:  # rows of 16: five spaces, the hex bytes, then the text
                hexes = [h for row in lines[i + 1:i + 1 + (n + 15) // 16] for h in row[5:52].split()]
            else:
                hexes = m["rest"].split()
            found.setdefault(m["title"], bytes.fromhex("".join(hexes)))
    return found, "\n".join(lines[:40])


def read_back(conf: str, tmp: Path) -> tuple[bytes | None, bytes | None, str]:
    """(SSID, passphrase or 64-hex key) as wpa_supplicant 2.10's configuration reader takes them
    from `conf`, each None where it refused the line; and what it said."""
    found, said = parsed(conf, tmp)
    return found.get("ssid"), found.get("PSK (ASCII passphrase)") or found.get("PSK"), said
