# ceil-lib.sh: shell functions shared by the first-boot step scripts (POSIX sh, sourced):
#     . "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"
# (CEIL_LIB lets the unit tests run a step from the checkout or a rendered payload.)

# ceil_replace SRC DST [MODE]: make DST a copy of SRC, atomically, only when they differ; sets
# CEIL_CHANGED=yes when it wrote. The copy is made as ".<name>.ceil-tmp" beside DST: a dot-file,
# so no conf-dir reader (dnsmasq.d, chrony's conf.d, ifupdown's interfaces.d, ...) ever includes
# a half-written one that a power cut left behind; it is synced before the rename, so the rename
# never exposes an empty file. A step re-run after a power cut converges on the same DST.
ceil_replace() {
    if cmp -s "$1" "$2"; then return 0; fi
    mkdir -p "$(dirname "$2")"
    _ceil_tmp="$(dirname "$2")/.$(basename "$2").ceil-tmp"
    cp "$1" "$_ceil_tmp"
    if [ -n "${3:-}" ]; then chmod "$3" "$_ceil_tmp"; fi
    sync "$_ceil_tmp" 2>/dev/null || sync
    mv -f "$_ceil_tmp" "$2"
    CEIL_CHANGED=yes
}

# ceil_enable UNIT: make sure UNIT is enabled, without reloading systemd. Packages enable their
# daemons already, and asking again for a unit that also has a SysV script runs update-rc.d,
# which reloads systemd whatever --no-reload says (30-70 s on a starved machine); so ask only
# when it is not enabled.
ceil_enable() {
    systemctl is-enabled --quiet "$1" || systemctl enable --no-reload "$1"
}

# ceil_why TEXT: say, in one line, why this attempt of the step fails (ceil-step records it in
# status.json, where `bake.py status` shows it and a power cut does not erase it). Keep TEXT the
# same for the same cause (no times or counters): distinct reasons are kept as the step's history.
ceil_why() {
    if [ -n "${CEIL_STEP_WHY:-}" ]; then printf '%s\n' "$*" > "$CEIL_STEP_WHY" 2>/dev/null || true; fi
}

# ceil_retry TEXT: this attempt fails for a reason a later one may not meet (a drive not plugged
# in yet, a service still starting, an archive not answering): TEXT on stderr and as the step's
# reason (ceil_why: `bake.py status` and the status board show why the step waits), then exit 1,
# which ceil-step retries. The one way a step gives up an attempt (tests/unit/test_ceil_lib.py).
ceil_retry() {
    ceil_why "$*"
    echo "ceil-$(basename "$0" .sh): $*; retrying" >&2
    exit 1
}

# ceil_need FILE...: every FILE the image was baked with is there, non-empty. A missing one means
# an incomplete or damaged payload, which no retry mends: say which file on stderr and in the
# step's status (ceil_why), and exit 3 (permanent: re-bake this image).
ceil_need() {
    for _ceil_need in "$@"; do
        if [ ! -s "$_ceil_need" ]; then
            ceil_why "$_ceil_need is missing: the payload is incomplete; re-bake this image"
            echo "ceil-$(basename "$0" .sh): $_ceil_need is missing: the payload is incomplete; re-bake this image" >&2
            exit 3
        fi
    done
}

# ceil_restore_datastore SNAPSHOT DBDIR: install SNAPSHOT (an SQLite datastore from `bake.py
# datastore backup`) as DBDIR/state.db, for k3s to start on, unless k3s already has a datastore
# there: one k3s made or ran is never replaced. Either way SNAPSHOT is then removed, so no copy of
# the cluster's data stays among the card's secrets. ceil_replace writes it whole, so a power cut
# leaves either no state.db (the next run installs it) or the whole one; the directory is synced
# before the snapshot goes. A -wal/-shm left without their database belong to nothing and would
# be replayed into it: they go.
ceil_restore_datastore() {
    if [ ! -s "$1" ]; then return 0; fi
    if [ -e "$2/state.db" ]; then
        echo "ceil: k3s already has a datastore ($2/state.db): the baked snapshot is not used" >&2
    else
        mkdir -p "$2"
        chmod 0700 "$2"
        rm -f "$2/state.db-wal" "$2/state.db-shm"
        ceil_replace "$1" "$2/state.db" 0600
        sync "$2" 2>/dev/null || sync
        echo "ceil: k3s's datastore restored from the baked snapshot ($(wc -c < "$2/state.db") bytes)" >&2
    fi
    rm -f "$1"
}
