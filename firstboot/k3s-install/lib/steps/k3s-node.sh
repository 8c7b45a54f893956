#!/bin/sh
# ceil steps "k3s-server" / "k3s-agent": configure k3s and start it (k3s-node.sh server|agent).
#   /etc/rancher/k3s/config.yaml  from /etc/ceil/k3s-<mode>/config.yaml + the LAN interface
#   /etc/rancher/node/password    the node's stable password (a re-flashed node rejoins as itself)
#   server/tls/*                  the CA set made at bake time (init server only)
#   server/db/state.db            a datastore snapshot, when one was baked in (`bake.py datastore`)
#   k3s.service / k3s-agent.service (placed by the payload installer), enabled and started
# k3s itself then retries for ever (Restart=always, no start limit): an agent whose server is
# not up yet keeps trying, visible in `systemctl status k3s-agent`.
# Idempotent: files are replaced atomically only when they differ; enable/start converge.
# Exit 1 = transient (the node has no LAN address yet), 3 = permanent (payload incomplete).
# CEIL_ROOT prefixes every path (tests run it on a scratch tree with stub commands).
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

MODE="${1:-}"
ROOT="${CEIL_ROOT:-}"
case "$MODE" in
    server) UNIT=k3s.service ;;
    agent) UNIT=k3s-agent.service ;;
    *) echo "usage: k3s-node.sh server|agent" >&2; exit 3 ;;
esac
ETC="$ROOT/etc/ceil/k3s-$MODE"
SECRETS="$ROOT/etc/ceil/secrets/k3s"
RANCHER="$ROOT/etc/rancher"
TLS="$ROOT/var/lib/rancher/k3s/server/tls"
CEIL_CHANGED=""  # set by ceil_replace when it wrote a file

log() { echo "ceil-k3s-$MODE: $*" >&2; }

ceil_need "$ETC/config.yaml" "$ROOT/etc/systemd/system/$UNIT" "$SECRETS/node-password"
if [ ! -x "$ROOT/usr/local/bin/k3s" ]; then
    ceil_retry "/usr/local/bin/k3s is missing: ceil-k3s-install has not finished"
fi

# flannel must carry pod traffic over the cluster LAN: the interface that holds node-ip (the
# router's DHCP reservation). No such interface yet means the lease has not arrived: retry.
node_ip=$(sed -n 's/^node-ip: *//p' "$ETC/config.yaml" | tr -d "'\"")
iface=$(ip -o -4 addr show | awk -v ip="$node_ip" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }')
if [ -z "$iface" ]; then
    log "no interface has the node address $node_ip yet (DHCP reservation from the router); retrying"
    ip -o -4 addr show >&2 || true
    ceil_retry "no address from the router yet (its DHCP reservation for this node)"
fi
conf_tmp="$ETC/.config.yaml.composed"
{ cat "$ETC/config.yaml"; echo "flannel-iface: $iface"; } >"$conf_tmp"
ceil_replace "$conf_tmp" "$RANCHER/k3s/config.yaml" 0600
rm -f "$conf_tmp"
ceil_replace "$SECRETS/node-password" "$RANCHER/node/password" 0600

# The init server's CA set: k3s keeps pre-created CA files and only makes what is missing.
if [ "$MODE" = server ] && [ -d "$SECRETS/tls" ]; then
    for src in $(cd "$SECRETS/tls" && find . -type f -name '*.crt' -o -type f -name '*.key' | sort); do
        dst="$TLS/${src#./}"
        if [ -f "$dst" ] && ! cmp -s "$SECRETS/tls/$src" "$dst"; then
            log "replacing $dst, which differs from the baked CA (k3s ran before its CA was installed?)"
        fi
        case "$src" in *.key) perm=0600 ;; *) perm=0644 ;; esac
        ceil_replace "$SECRETS/tls/$src" "$dst" "$perm"
    done
    chmod 0700 "$TLS"
fi

# A datastore snapshot staged with `bake.py datastore restore` (the init server of a one-server
# cluster): k3s's state.db before k3s first starts on this card (ceil-lib.sh says when not).
if [ "$MODE" = server ]; then
    ceil_restore_datastore "$SECRETS/restore/state.db" "$ROOT/var/lib/rancher/k3s/server/db"
fi

# The unit came with ceil's others (the payload installer's daemon-reload read it): no reload
# here, which costs up to a minute on a starved machine.
systemctl enable --no-reload "$UNIT" >/dev/null
# --no-block: k3s (notify) reports ready only once it has joined; joining is k3s's own retry
# loop under Restart=always, not this step's.
if [ -n "$CEIL_CHANGED" ] && systemctl is-active --quiet "$UNIT"; then
    systemctl restart --no-block "$UNIT"
else
    systemctl start --no-block "$UNIT"
fi
log "configured ($iface, $node_ip) and started $UNIT"
