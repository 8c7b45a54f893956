#!/bin/sh
# Make the router itself resolve through its dnsmasq (127.0.0.1), so cluster names work on the
# router and every lookup follows network.upstream_dns. Handles the resolver stacks of the
# supported flavors; idempotent (atomic writes, appends only after a check).
set -eu

domain="$(sed -n 's/^local=\/\(.*\)\/$/\1/p' /etc/dnsmasq.d/ceil.conf)"

# put_file DST FORMAT [ARG...]: write printf's output to DST atomically when different; sets
# $changed to yes or no (an argument, not a pipe: a pipe would run it in a subshell).
# A symlink DST (to a resolvconf/NetworkManager file) is always replaced by a plain file.
# (No `|| true` callers: under `||` a shell function loses set -e and would hide write errors.)
put_file() {
    dst="$1"; shift
    tmp="$(dirname "$dst")/.$(basename "$dst").ceil-tmp"
    # shellcheck disable=SC2059  # the format is always a literal of this script
    printf "$@" > "$tmp"
    changed=no
    if [ ! -L "$dst" ] && cmp -s "$tmp" "$dst"; then rm -f "$tmp"; return 0; fi
    sync "$tmp" 2>/dev/null || sync
    mv -f "$tmp" "$dst"
    changed=yes
}

if systemctl is-active --quiet systemd-resolved.service; then
    # Ubuntu: keep resolved (and its stub on 127.0.0.53) but route every query to dnsmasq:
    # a global "~." routing domain outranks the uplink's DHCP-learned servers.
    mkdir -p /etc/systemd/resolved.conf.d
    put_file /etc/systemd/resolved.conf.d/ceil-dnsmasq.conf \
        '[Resolve]\nDNS=127.0.0.1\nDomains=~. %s\n' "$domain"
    if [ "$changed" = yes ]; then systemctl restart systemd-resolved.service; fi
    exit 0
fi

if systemctl is-active --quiet NetworkManager.service; then
    # Raspberry Pi OS: NetworkManager must stop rewriting /etc/resolv.conf from the uplink's DHCP.
    mkdir -p /etc/NetworkManager/conf.d
    put_file /etc/NetworkManager/conf.d/ceil-dns.conf '[main]\ndns=none\n'
    if [ "$changed" = yes ]; then systemctl reload NetworkManager.service || true; fi
fi
if [ -f /etc/dhcpcd.conf ] && ! grep -q '^nohook resolv.conf' /etc/dhcpcd.conf; then
    # HypriotOS / dhcpcd: same reason (one short line: a power cut cannot leave half of it).
    printf 'nohook resolv.conf\n' >> /etc/dhcpcd.conf
fi
if [ -d /etc/dhcp ]; then
    # ifupdown / dhclient on the uplink: keep dhclient-script from rewriting /etc/resolv.conf.
    mkdir -p /etc/dhcp/dhclient-enter-hooks.d
    put_file /etc/dhcp/dhclient-enter-hooks.d/ceil-keep-resolv-conf \
        '# ceil: the router resolves through its own dnsmasq\nmake_resolv_conf() { :; }\n'
fi
put_file /etc/resolv.conf \
    '# ceil: the router resolves through its own dnsmasq\nnameserver 127.0.0.1\nsearch %s\n' "$domain"
