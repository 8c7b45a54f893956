#!/bin/sh
# ceil step "datastore-pull": check the keys arrived, then enable the snapshot timer (idempotent).
set -eu

for secret in datastore/pull_ed25519 datastore/snapshot-hmac; do
    if [ ! -s "/etc/ceil/secrets/$secret" ]; then
        echo "ceil-datastore-pull: /etc/ceil/secrets/$secret is missing: re-bake the router" >&2
        exit 3
    fi
done
install -d -m 0700 /var/lib/ceil/datastore
systemctl enable --no-reload --now ceil-datastore-snapshots.timer
