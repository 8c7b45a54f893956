#!/bin/sh
# ceil step "wireguard": install the baked wg0.conf and keep wg-quick@wg0 enabled and up.
# Idempotent: the config is replaced atomically only when it differs; enable/start converge.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

src=/etc/ceil/secrets/wireguard/wg0.conf
dst=/etc/wireguard/wg0.conf

if [ ! -s "$src" ]; then
    echo "ceil-wireguard: $src is missing: the router image was baked without its VPN config;" \
         "re-bake the router with vpn.enabled: true" >&2
    exit 3
fi

umask 077
mkdir -p /etc/wireguard
chmod 700 /etc/wireguard
ceil_replace "$src" "$dst" 0600

ceil_enable wg-quick@wg0.service
# reload = `wg syncconf` when wg0 is already up (a re-run), start otherwise.
systemctl reload-or-restart wg-quick@wg0.service
wg show wg0 listen-port
