#!/bin/sh
# ceil step "dnsmasq": DHCP + DNS for the cluster LAN, and the router itself resolving through it.
# Idempotent: every file is replaced atomically and only when it differs; a re-run after a power
# cut converges. The lease file is never touched, so reservations and leases survive.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

src=/etc/ceil/dnsmasq/ceil.conf
dst=/etc/dnsmasq.d/ceil.conf

ceil_need "$src"
if ! command -v dnsmasq >/dev/null; then
    ceil_retry "dnsmasq is not installed (ceil-packages should have installed it)"
fi
# The directories of nodes baked after the router (ceil-lan-hosts): dnsmasq refuses to start
# without the ones its config names.
sed -n 's/^\(dhcp-\)\{0,1\}hostsdir=//p' "$src" | while read -r dir; do mkdir -p "$dir"; done
# A config the daemon would refuse is a bake bug, not a transient failure.
if ! dnsmasq --test -C "$src" >/dev/null 2>&1; then
    dnsmasq --test -C "$src" >&2 || true
    echo "ceil-dnsmasq: $src does not pass 'dnsmasq --test'; fix the template and re-bake" >&2
    exit 3
fi

mkdir -p /etc/dnsmasq.d /var/lib/misc
ceil_replace "$src" "$dst"

ceil_enable dnsmasq.service
systemctl restart dnsmasq.service

/usr/local/lib/ceil/steps/router-resolver.sh
