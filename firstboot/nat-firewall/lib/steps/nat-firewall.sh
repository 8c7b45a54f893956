#!/bin/sh
# ceil step "nat-firewall": load the router's nftables ruleset, make it persistent through
# nftables.service, and turn on IPv4 forwarding.
# Idempotent: files are replaced atomically when they differ; the ruleset replaces only ceil's own
# tables in one transaction, so loading it twice never duplicates a rule.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

rules_src=/etc/ceil/nftables/ceil.nft
rules_dst=/etc/nftables.conf
sysctl_src=/etc/ceil/sysctl/60-ceil-router.conf
sysctl_dst=/etc/sysctl.d/60-ceil-router.conf

ceil_need "$rules_src" "$sysctl_src"
if ! nft -c -f "$rules_src"; then
    echo "ceil-nat-firewall: $rules_src is not a valid nftables ruleset (nft -c -f); fix and re-bake" >&2
    exit 3
fi

# Firewall first, then forwarding: the LAN is never routed without the rules in place.
ceil_replace "$rules_src" "$rules_dst" 0755
ceil_enable nftables.service
# nftables.service is a oneshot with RemainAfterExit: restart re-reads the file; it stops with
# `nft flush ruleset` in between, so load the file directly (one transaction) instead.
systemctl start nftables.service
nft -f "$rules_dst"

ceil_replace "$sysctl_src" "$sysctl_dst"
sysctl -q -p "$sysctl_dst"
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ]
