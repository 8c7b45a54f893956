#!/bin/sh
# ceil step "k3s-install": put a verified k3s binary at /usr/local/bin/k3s.
# Sources, first that has it: the air-gap bundle baked into the image, the router's cache, the
# upstream GitHub release. The binary from any of them is checked against the sha256 pinned at
# bake time (kubernetes.k3s_sha256, or the release's published digest that ceil ships) before it
# is made executable; never against a sums file from the same source, which proves nothing:
# whoever can answer on the LAN (the router's cache is plain HTTP) can serve a binary and a
# matching sums file. An image baked without a pin is refused (exit 3: re-bake). Nothing
# downloaded is ever run unverified; no install script is piped in.
# A digest mismatch deletes the download, logs both digests and exits 1 (retried: the source
# may be fixed); a mismatching baked bundle exits 3 (the image itself is bad: re-bake).
# Idempotent: the download goes to a hidden non-executable temp file in the same directory
# and is renamed over the binary, so a power cut leaves the old state or the new, never half.
# CEIL_K3S_INSTALL_ENV, CEIL_ROOT and CEIL_LIB let tests run it on a scratch tree.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

ROOT="${CEIL_ROOT:-}"
ENV_FILE="${CEIL_K3S_INSTALL_ENV:-$ROOT/etc/ceil/k3s-install/install.env}"
BIN="$ROOT/usr/local/bin/k3s"
PART="$ROOT/usr/local/bin/.k3s.ceil-download"
IMAGES_DIR="$ROOT/var/lib/rancher/k3s/agent/images"
# What was installed and how it was verified, kept beyond the journal (which a Pi may keep in
# RAM only, or rotate): `make verify` reads it.
RECORD="$ROOT/var/lib/ceil/k3s-install.verified"

log() { echo "ceil-k3s-install: $*" >&2; }

# record LINE: log LINE and keep it in $RECORD (atomically: a power cut leaves old or new).
record() {
    log "$1"
    mkdir -p "$(dirname "$RECORD")"
    printf '%s\n' "$1" > "$RECORD.tmp"
    sync
    mv -f "$RECORD.tmp" "$RECORD"
}

ceil_need "$ENV_FILE"
# shellcheck source=/dev/null
. "$ENV_FILE"

ARCH="${K3S_ARCH:-$(dpkg --print-architecture)}"
# Release asset names, as k3s's own install.sh spells them (armhf's sums/images say "arm").
case "$ARCH" in
    arm64) ASSET=k3s-arm64 SUMS=sha256sum-arm64.txt IMAGES=k3s-airgap-images-arm64 ;;
    armhf) ASSET=k3s-armhf SUMS=sha256sum-arm.txt IMAGES=k3s-airgap-images-arm ;;
    amd64) ASSET=k3s SUMS=sha256sum-amd64.txt IMAGES=k3s-airgap-images-amd64 ;;
    *) log "k3s publishes no binary for architecture $ARCH (arm64, armhf, amd64)"; exit 3 ;;
esac

if [ -z "${K3S_SHA256:-}" ]; then
    log "no k3s digest was baked into $ENV_FILE: nothing can be trusted as k3s; re-bake the image"
    ceil_why "the image carries no k3s digest: re-bake it with a current ceil"
    exit 3
fi

digest_of() { sha256sum "$1" | cut -d' ' -f1; }
sum_in() { awk -v f="$2" '($2 == f || $2 == "*" f) { print $1; exit }' "$1"; }

# get KIND SRC DEST: copy a file (air-gap bundle) or download a URL; non-zero when unavailable.
get() {
    if [ "$1" = file ]; then
        [ -f "$2" ] && cp "$2" "$3"
    else
        curl -fsSL --retry 2 --connect-timeout 10 --max-time 900 -o "$3" "$2"
    fi
}

install_images() {
    for img in "$K3S_AIRGAP_DIR/$IMAGES".tar*; do
        [ -f "$img" ] || continue
        dst="$IMAGES_DIR/$(basename "$img")"
        cmp -s "$img" "$dst" && continue
        if [ -f "$K3S_AIRGAP_DIR/$SUMS" ]; then
            want=$(sum_in "$K3S_AIRGAP_DIR/$SUMS" "$(basename "$img")")
            got=$(digest_of "$img")
            if [ -n "$want" ] && [ "$want" != "$got" ]; then
                log "SHA256 MISMATCH for baked $img: expected $want, got $got: re-bake the image"
                exit 3
            fi
        fi
        mkdir -p "$IMAGES_DIR"
        cp "$img" "$IMAGES_DIR/.$(basename "$img").ceil-tmp"
        sync
        mv -f "$IMAGES_DIR/.$(basename "$img").ceil-tmp" "$dst"
        log "air-gap images $(basename "$img") placed for k3s to import"
    done
}

# try_source KIND BASE WHAT: install from BASE and exit 0, or return when BASE lacks the files.
try_source() {
    kind=$1 base=$2 what=$3
    [ -n "$base" ] || return 0
    if [ "$kind" = file ] && [ ! -f "$base/$ASSET" ]; then return 0; fi
    expected=$K3S_SHA256 why="the digest pinned at bake time"
    rm -f "$PART"
    if ! get "$kind" "$base/$ASSET" "$PART"; then
        rm -f "$PART"
        log "$what: $base/$ASSET unavailable; trying the next source"
        return 0
    fi
    got=$(digest_of "$PART")
    if [ "$got" != "$expected" ]; then
        rm -f "$PART"
        log "SHA256 MISMATCH for $base/$ASSET ($what): expected $expected (from $why), got $got;" \
            "the download is deleted and NOT installed"
        if [ "$kind" = file ]; then exit 3; fi
        ceil_retry "k3s $K3S_VERSION from the $what does not match its pinned sha256: not installed"
    fi
    chmod 0755 "$PART"
    sync
    mv -f "$PART" "$BIN"
    sync
    record "installed k3s $K3S_VERSION ($ASSET) from the $what $base, sha256 $got verified against $why"
    install_images
    exit 0
}

mkdir -p "$(dirname "$BIN")"
rm -f "$PART"   # a download cut short by a power loss is never trusted
if [ -f "$BIN" ] && [ "$(digest_of "$BIN")" = "$K3S_SHA256" ]; then
    log "k3s $K3S_VERSION already installed, sha256 matches the pin"
    [ -s "$RECORD" ] || record "k3s $K3S_VERSION found installed, sha256 $K3S_SHA256 verified against the digest pinned at bake time"
    install_images
    exit 0
fi
try_source file "$K3S_AIRGAP_DIR" "baked air-gap bundle"
try_source http "$K3S_CACHE_URL" "router cache"
try_source http "$K3S_UPSTREAM_URL" "upstream release"
log "no source has k3s $K3S_VERSION ($ASSET) with the pinned digest yet; retrying"
ceil_retry "no source has k3s $K3S_VERSION with the pinned digest yet (the router's cache, the release)"
