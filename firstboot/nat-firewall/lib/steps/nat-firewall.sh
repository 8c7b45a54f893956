#!/bin/sh
# ceil step "nat-firewall": load the router's nftables ruleset, make it persistent through
# nftables.service, and turn on IPv4 forwarding.
# Idempotent: files are replaced atomically when they differ; the ruleset replaces only ceil's own
# tables in one transaction, so loading it twice never duplicates a rule.
set -eu

rules_src=/etc/ceil/nftables/ceil.nft
rules_dst=/etc/nftables.conf
sysctl_src=/etc/ceil/sysctl/60-ceil-router.conf
sysctl_dst=/etc/sysctl.d/60-ceil-router.conf

install_file() {  # install_file SRC DST: atomic replace when different
    if cmp -s "$1" "$2"; then return 0; fi
    tmp="$(dirname "$2")/.$(basename "$2").ceil-tmp"
    cp "$1" "$tmp"
    sync "$tmp" 2>/dev/null || sync
    mv -f "$tmp" "$2"
}

for f in "$rules_src" "$sysctl_src"; do
    if [ ! -s "$f" ]; then
        echo "ceil-nat-firewall: $f is missing: the router payload is incomplete; re-bake the router" >&2
        exit 3
    fi
done
if ! nft -c -f "$rules_src"; then
    echo "ceil-nat-firewall: $rules_src is not a valid nftables ruleset (nft -c -f); fix and re-bake" >&2
    exit 3
fi

# Firewall first, then forwarding: the LAN is never routed without the rules in place.
install_file "$rules_src" "$rules_dst"
chmod 0755 "$rules_dst"
# The package enabled it already; asking again would run its SysV script through update-rc.d,
# which reloads systemd (--no-reload notwithstanding).
systemctl is-enabled --quiet nftables.service || systemctl enable --no-reload nftables.service
# nftables.service is a oneshot with RemainAfterExit: restart re-reads the file; it stops with
# `nft flush ruleset` in between, so load the file directly (one transaction) instead.
systemctl start nftables.service
nft -f "$rules_dst"

mkdir -p /etc/sysctl.d
install_file "$sysctl_src" "$sysctl_dst"
sysctl -q -p "$sysctl_dst"
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ]
