"""`make verify` on a real cluster: the testinfra checks are marked e2e, which the project's
default `-m` (pyproject.toml's addopts) deselects for the unit run. When that default grew
`and not apiserver`, verify silently collected nothing: this runs its very command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def collected(cluster_yaml: Path, *extra: str) -> tuple[int, str]:
    # The Makefile's verify command line (Makefile, `verify:`), collecting only.
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/infra", "--cluster-config", str(cluster_yaml),
                           "-p", "no:cacheprovider", "--collect-only", "-q", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    m = re.search(r"(?:(\d+)/)?(\d+) tests? collected", out)  # "12/34 tests collected" when -m deselects
    return (int(m.group(1) or m.group(2)) if m else 0), out


def test_verify_collects_the_e2e_marked_checks(cluster_yaml):
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^verify:.*\n\t\$\(PY\) -m pytest tests/infra --cluster-config \$\(CONFIG\)"
                     r" \$\(if \$\(VIA\),--router-host \$\(VIA\)\) -p no:cacheprovider$",
                     makefile, re.M), "the verify target's command changed: update this test's copy of it"
    count, out = collected(cluster_yaml())
    assert count >= 50, out[-2000:]
    assert "test_nodes_run_4k_pages_where_the_cluster_asks_for_them" in out


def test_a_marker_expression_the_user_gives_still_selects(cluster_yaml):
    everything, _ = collected(cluster_yaml())
    count, out = collected(cluster_yaml(), "-m", "e2e and not full")
    assert 0 < count < everything, out[-2000:]


def test_verify_needs_no_secret_exported(cluster_yaml, monkeypatch):
    """The example's WiFi passphrase is ${CEIL_WIFI_PSK}: checking a running cluster must not ask
    for it (bake.py status does not either)."""
    monkeypatch.delenv("CEIL_WIFI_PSK", raising=False)
    path = cluster_yaml("router: {uplink: {type: wifi, wifi: {ssid: Home, psk: '${CEIL_WIFI_PSK}', country: DE}}}\n")
    count, out = collected(path)
    assert count >= 50 and "CEIL_WIFI_PSK" not in out, out[-2000:]
