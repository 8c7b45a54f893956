"""Did any first-boot step leave a visible effect twice? (steps re-run after a power cut)

`duplicated_effects(host)` lists every doubled line, rule or lease a re-run step could have
made, as human-readable strings; empty means converged. Used by tests/infra/test_converged.py
(every machine, QEMU and real Pis) and tests/e2e/test_power_cut_firstboot.py (a router cut at
several moments of its first boot).
"""

from __future__ import annotations

import collections
import shlex

# Files ceil's steps write or edit, where no line may occur twice (blank lines and comments aside).
LINE_FILES = (
    "/etc/fstab",
    "/etc/dnsmasq.d/ceil.conf",
    "/etc/chrony/conf.d/ceil.conf",
    "/etc/sysctl.d/60-ceil-router.conf",
    "/etc/sysctl.d/90-ceil-k3s.conf",
    "/etc/modules-load.d/ceil-k3s.conf",
    "/etc/ssh/sshd_config.d/10-ceil.conf",
    "/etc/ceil/apt/sources.list",
    "/etc/dhcpcd.conf",
    "/var/lib/ceil-backup/.ssh/authorized_keys",  # the server's account for the router's snapshots
    "/etc/sudoers.d/ceil-datastore-snapshot",
)
# YAML, where lines such as "endpoint:" repeat by design: only the top-level keys must be unique
# (k3s-node.sh appends flannel-iface to the rendered config).
YAML_KEY_FILES = ("/etc/rancher/k3s/config.yaml",)
LEASES = "/var/lib/misc/dnsmasq.leases"


def _read(host, path: str) -> str | None:
    r = host.run(f"sudo cat {shlex.quote(path)}")
    return r.stdout if r.rc == 0 else None


def repeated_lines(text: str, ignore=lambda line: False) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines()]
    counts = collections.Counter(ln for ln in lines if ln and not ln.startswith("#") and not ignore(ln))
    return [f"{ln!r} x{n}" for ln, n in counts.items() if n > 1]


def repeated_nft_rules(ruleset: str) -> list[str]:
    """Identical rules within one chain (`nft list ruleset`); sets and maps are not rules."""
    out, table, where, seen = [], "", "", collections.Counter()
    for raw in ruleset.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            table, where = line.rstrip("{ ").strip(), ""
        elif line.startswith(("set ", "map ", "flowtable ", "counter ", "quota ", "limit ", "ct ")) and line.endswith("{"):
            where = ""  # a named object's body (elements may wrap lines), not rules
        elif line.startswith("chain "):
            where = f"{table} {line.rstrip('{ ').strip()}"
        elif line == "}":
            continue
        elif where and line and not line.startswith(("type ", "policy ", "elements", "flags ", "#")):
            seen[(where, line)] += 1
    out += [f"nft {w}: {rule!r} x{n}" for (w, rule), n in seen.items() if n > 1]
    return out


def duplicated_effects(host) -> list[str]:
    found: list[str] = []
    for path in LINE_FILES:
        text = _read(host, path)
        if text is not None:
            found += [f"{path}: {d}" for d in repeated_lines(text)]
    for path in YAML_KEY_FILES:
        text = _read(host, path)
        if text is not None:
            keys = [ln.split(":", 1)[0] for ln in text.splitlines() if ln[:1].isalpha() and ":" in ln]
            found += [f"{path}: top-level key {k!r} x{n}" for k, n in collections.Counter(keys).items() if n > 1]
    # Hypriot's sshd has no sshd_config.d: install.sh appends a marked block once.
    sshd = _read(host, "/etc/ssh/sshd_config") or ""
    if sshd.count("# ceil: hardening") > 1:
        found.append(f"/etc/ssh/sshd_config: ceil's hardening block x{sshd.count('# ceil: hardening')}")
    wg = _read(host, "/etc/wireguard/wg0.conf")
    if wg is not None:
        found += [f"/etc/wireguard/wg0.conf: {d}" for d in repeated_lines(wg, lambda ln: not ln.startswith("PublicKey"))]
    if host.run("command -v nft").rc == 0:
        r = host.run("sudo nft list ruleset")
        if r.rc == 0:
            found += repeated_nft_rules(r.stdout)
    leases = _read(host, LEASES)
    if leases:
        rows = [ln.split() for ln in leases.splitlines() if ln.strip()]
        for idx, what in ((1, "MAC"), (2, "address")):
            counts = collections.Counter(r[idx] for r in rows if len(r) > idx)
            found += [f"{LEASES}: {what} {k} leased x{n}" for k, n in counts.items() if n > 1]
    return found
