#!/bin/sh
# ceil step "node-firewall": check and load the node's own nftables table (ceil_node) now; the
# unit ceil-node-rules.service loads it again at every later boot.
# Idempotent: the file replaces only ceil's own table, in one transaction.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

rules=/etc/ceil/nftables/node.nft
ceil_need "$rules"
if ! nft -c -f "$rules"; then
    echo "ceil-node-firewall: $rules is not a valid nftables ruleset (nft -c -f); fix and re-bake" >&2
    exit 3
fi
nft -f "$rules"
nft list table inet ceil_node >/dev/null
