#!/bin/sh
# ceil step "k3s-prep": make the node ready for k3s.
#   swap off (and kept off), overlay + br_netfilter loaded now and at boot, forwarding and
#   bridge-netfilter sysctls, /etc/rancher/k3s/registries.yaml, and a synced clock.
# Idempotent: files are replaced atomically only when they differ, swap/module/sysctl commands
# converge, so a power cut at any line followed by a re-run ends in the same state.
# Exit 1 = transient (clock not synced yet: ceil-step retries), exit 3 = permanent.
# CEIL_ROOT prefixes every path (tests run the file handling on a scratch tree).
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

ROOT="${CEIL_ROOT:-}"
ETC="$ROOT/etc/ceil/k3s-prep"
SECRETS="$ROOT/etc/ceil/secrets/k3s"
SYNC_TRIES="${CEIL_SYNC_TRIES:-30}"   # chronyc waitsync polls every 2 s: about a minute per try

log() { echo "ceil-k3s-prep: $*" >&2; }

ceil_need "$ETC/modules.conf" "$ETC/sysctl.conf"

# --- swap: off now, and nothing that turns it back on at boot ------------------------------
# The kubelet expects no swap. Raspberry Pi OS uses dphys-swapfile (older) or zram through
# rpi-swap / systemd-zram-generator (Trixie); Ubuntu may have a swap file in fstab.
for unit in dphys-swapfile.service zramswap.service rpi-zram-writeback.timer; do
    if systemctl cat "$unit" >/dev/null 2>&1; then
        systemctl disable --no-reload --now "$unit" >/dev/null 2>&1 || true
        systemctl mask --no-reload "$unit" >/dev/null
    fi
done
swapoff -a
systemctl list-units --type=swap --all --plain --no-legend 2>/dev/null | awk '{print $1}' |
    while read -r unit; do
        if [ -n "$unit" ]; then systemctl mask --no-reload --now "$unit" >/dev/null 2>&1 || true; fi
    done
if [ -f "$ROOT/etc/fstab" ] && grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' "$ROOT/etc/fstab"; then
    sed -E 's@^([^#].*[[:space:]]swap[[:space:]].*)$@#ceil (k3s-prep, no swap): \1@' "$ROOT/etc/fstab" >"$ROOT/etc/.fstab.ceil-tmp"
    sync
    mv -f "$ROOT/etc/.fstab.ceil-tmp" "$ROOT/etc/fstab"
fi
if [ -n "$(swapon --noheadings 2>/dev/null)" ]; then
    swapon --show >&2 || true
    ceil_retry "swap is still active after swapoff -a"
fi

# --- kernel modules and sysctls ---------------------------------------------------------------
ceil_replace "$ETC/modules.conf" "$ROOT/etc/modules-load.d/ceil-k3s.conf" 0644
grep -Ev '^[[:space:]]*(#|$)' "$ETC/modules.conf" | while read -r mod; do
    if ! modprobe "$mod"; then
        log "kernel module $mod cannot be loaded: this kernel lacks it, and k3s cannot run without it"
        exit 3
    fi
done
ceil_replace "$ETC/sysctl.conf" "$ROOT/etc/sysctl.d/90-ceil-k3s.conf" 0644
sysctl -q -p "$ROOT/etc/sysctl.d/90-ceil-k3s.conf" >/dev/null

# --- containerd registries (k3s reads it at start) ----------------------------------------------
# The CA first: registries.yaml names it, and containerd reads both when k3s starts.
if [ -f "$SECRETS/registry-ca.crt" ]; then
    ceil_replace "$SECRETS/registry-ca.crt" "$ROOT/etc/rancher/k3s/registry-ca.crt" 0644
fi
if [ -f "$SECRETS/registries.yaml" ]; then
    ceil_replace "$SECRETS/registries.yaml" "$ROOT/etc/rancher/k3s/registries.yaml" 0600
fi

# --- time: no RTC on a Pi; k3s must not issue or check a certificate before the clock is right --
if ! command -v chronyc >/dev/null 2>&1; then
    ceil_retry "chronyc not found: chrony should have been installed by ceil-packages"
fi
# waitsync TRIES MAX-CORRECTION(s) MAX-SKEW(ppm, 0 = any) INTERVAL(s)
if ! chronyc waitsync "$SYNC_TRIES" 0.5 0 2 >/dev/null; then
    log "the clock is not synchronised yet (chronyc sources below); retrying"
    chronyc -n sources >&2 || true
    ceil_retry "the clock is not synchronised with the router yet"
fi
# A router that serves a time before this card was baked (its own clock stale, no upstream) is
# not believed: k3s would issue certificates from the past and refuse the server's.
if ! "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-clock-floor"; then
    ceil_retry "the router serves a time before this card was baked (no upstream NTP?)"
fi
# Later boots: hold time-sync.target (which k3s is ordered after) until chrony has synced, so
# k3s never starts on the stale clock a Pi without RTC wakes up with.
if systemctl cat chrony-wait.service >/dev/null 2>&1; then
    systemctl enable --no-reload chrony-wait.service >/dev/null
fi
log "swap off, modules and sysctls set, clock synchronised ($(chronyc -n tracking | sed -n 's/^Reference ID *: //p'))"
