#!/bin/sh
# ceil step "ddns": check the token arrived, then enable the update timer (idempotent).
set -eu

if [ ! -s /etc/ceil/secrets/ddns-token ]; then
    echo "ceil-ddns: /etc/ceil/secrets/ddns-token is missing: re-bake the router with" \
         "ddns.api_token set" >&2
    exit 3
fi
mkdir -p /var/lib/ceil/ddns
chmod 700 /var/lib/ceil/ddns
systemctl enable --no-reload --now ceil-ddns-update.timer
