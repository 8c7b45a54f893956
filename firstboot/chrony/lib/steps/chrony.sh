#!/bin/sh
# ceil step "chrony": install ceil's chrony drop-in (router: serve the LAN; node: sync from the
# router) and restart chrony.
# Idempotent: atomic replace when different; chrony.conf gets its include line only when missing.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

src=/etc/ceil/chrony/ceil.conf
dst=/etc/chrony/conf.d/ceil.conf
conf=/etc/chrony/chrony.conf

ceil_need "$src"
if [ ! -f "$conf" ]; then
    ceil_retry "$conf not found: ceil-packages should have installed chrony"
fi

# chrony >= 4.0 (Debian 12, Ubuntu 24.04, Trixie) ships `confdir /etc/chrony/conf.d`; older ones
# (HypriotOS / buster, chrony 3.4) do not, so add an include for the directory (one short line:
# a power cut cannot leave half of it).
if ! grep -Eq '^[[:space:]]*(confdir|include)[[:space:]]+/etc/chrony/conf\.d' "$conf"; then
    printf 'include /etc/chrony/conf.d/*.conf\n' >> "$conf"
fi

ceil_replace "$src" "$dst"

# chrony.service on Debian/Ubuntu (chronyd.service is an alias there).
ceil_enable chrony.service
systemctl restart chrony.service
# Router: ceil-chrony-local (WantedBy chrony) decides when the router may serve its own clock; it
# waits minutes for the upstream, so --no-block. Nodes have no such unit.
if [ -f /etc/systemd/system/ceil-chrony-local.service ]; then
    systemctl restart --no-block ceil-chrony-local.service
fi
