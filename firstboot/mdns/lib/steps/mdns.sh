#!/bin/sh
# ceil step "mdns": avahi-daemon answers <router hostname>.local on the uplink side, for
# router.trusted_networks (the firewall lets mDNS in from those only). Idempotent. avahi reads
# ceil's configuration where the payload put it (the drop-in's ExecStart=), never the packaged one.
set -eu
. "${CEIL_LIB:-/usr/local/lib/ceil}/ceil-lib.sh"

src=/etc/ceil/avahi/avahi-daemon.conf
dropin=/etc/systemd/system/avahi-daemon.service.d/ceil.conf
ceil_need "$src" "$dropin"
if [ ! -d /etc/avahi ]; then
    ceil_retry "/etc/avahi not found: ceil-packages should have installed avahi-daemon"
fi
# Without D-Bus the packaged unit's Type=dbus never sees the daemon ready (the drop-in says why).
# The payload installer placed the drop-in before avahi-daemon was installed, so the packages
# step's daemon-reload read it: a reload here (seconds to a minute on a starved machine) only if
# systemd has not.
if [ "$(systemctl show -p Type --value avahi-daemon.service)" != simple ]; then
    systemctl daemon-reload
fi
ceil_enable avahi-daemon.service
systemctl restart avahi-daemon.service
