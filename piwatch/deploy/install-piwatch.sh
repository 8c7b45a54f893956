#!/bin/sh
# Install PiWatch on the router from the offline bundle: a venv under /opt/ceil/piwatch/venv
# filled only from the bundled wheels, and the ceil-piwatch system user. Idempotent: a marker
# keyed by the bundle's contents makes a re-run (reboot, power loss) a no-op, and a new
# bundle (re-bake) a fresh install. Usage: install-piwatch.sh [BUNDLE_DIR]
set -eu

BUNDLE=${1:-/opt/ceil/piwatch/bundle}
# Overridable so the test suite can install into a scratch directory without root.
PREFIX=${CEIL_PIWATCH_PREFIX:-/opt/ceil/piwatch}
ETC=${CEIL_ETC:-/etc/ceil}
VENV=$PREFIX/venv
USER_NAME=ceil-piwatch

[ -d "$BUNDLE/wheels" ] || { echo "install-piwatch: no wheels in $BUNDLE/wheels (was the bundle baked in?)" >&2; exit 1; }
key=$(cd "$BUNDLE" && ls wheels requirements.txt | sha256sum | cut -c1-16)
marker=$PREFIX/.installed-$key
install_venv() {
    [ -f "$BUNDLE/unpack_wheels.py" ] || { echo "install-piwatch: no unpack_wheels.py in $BUNDLE" >&2; exit 1; }

    # --without-pip: Debian/Ubuntu split ensurepip into python3-venv, which images may lack; nothing
    # here needs pip. --system-site-packages: the distro's GPIO modules (python3-lgpio,
    # python3-rpi.gpio) stay importable, while the venv's own pydantic v2 shadows the distro's v1.
    install -d -m 0755 "$PREFIX"
    rm -rf "$VENV.new"
    python3 -m venv --without-pip --system-site-packages "$VENV.new"
    # The pinned wheels, unpacked (unpack_wheels.py says why not pip): each is checked against the
    # sha256 in requirements.txt first (piwatch/wheels.lock.json, and piwatch's own wheel as built at
    # bake time); a wheel changed on the card is refused. It also compiles their byte code, as root.
    "$VENV.new/bin/python" "$BUNDLE/unpack_wheels.py" "$BUNDLE"
    # Prove the venv resolves the right libraries before switching to it.
    "$VENV.new/bin/python" -c 'import pydantic, uvicorn, piwatch.app; assert pydantic.VERSION.startswith("2"), pydantic.VERSION'
    # Its files on the card before the rename and the marker: ext4 may commit those within seconds
    # while the files' data still waits in the page cache, and a power cut would leave a marker
    # over a venv of empty modules that no re-run repairs (found in review).
    sync
    rm -rf "$VENV"
    mv "$VENV.new" "$VENV"
    # The venv records its own path in scripts; "python -m piwatch" does not depend on them.
    rm -f "$PREFIX"/.installed-*
    touch "$marker"
    sync
    echo "install-piwatch: installed into $VENV"
}

if [ -f "$marker" ] && [ -x "$VENV/bin/python" ]; then
    echo "install-piwatch: already installed ($marker)"
else
    install_venv
fi
# The venv needs only python3 (on every image: cloud-init runs on it), so the router's first boot
# builds it while its packages step still waits for apt (CEIL_PIWATCH_VENV_ONLY=1, then again
# without it). What follows waits for the packages: useradd refuses while a package's maintainer
# script holds /etc/passwd's lock. Done on every run: each part is cheap and idempotent.
[ "${CEIL_PIWATCH_VENV_ONLY:-}" != 1 ] || exit 0

if [ "$(id -u)" = 0 ]; then
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$USER_NAME"
    fi
    # gpio owns the GPIO device nodes on Raspberry Pi OS, dialout on Ubuntu's raspi images.
    for group in gpio dialout; do
        if getent group "$group" >/dev/null; then usermod -aG "$group" "$USER_NAME"; fi
    done
else
    echo "install-piwatch: not root, skipping the $USER_NAME user" >&2
fi

install -d -m 0755 "$ETC"
# Keep an edited reactions file across re-installs.
# Whole or absent (a temp file, synced, renamed): an empty one would read as the defaults for good.
if [ ! -f "$ETC/piwatch-reactions.yaml" ]; then
    install -m 0644 "$BUNDLE/reactions.yaml" "$ETC/.piwatch-reactions.yaml.tmp"
    sync
    mv "$ETC/.piwatch-reactions.yaml.tmp" "$ETC/piwatch-reactions.yaml"
fi

