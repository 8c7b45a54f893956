"""Hooks of the `common` feature: what every card carries: the time it was baked, the kernel
arguments its bake added (kept through kernel updates), and the machine's SSH host key
(ceil/host_keys.py).

No Pi has a real-time clock: a freshly flashed card starts at whatever its RTC-less kernel and
image say (months in the past), where apt refuses archives "not valid yet" and certificates are
"not yet valid". The bake time is a floor: install.sh sets the clock forward to it on first boot
and leaves it as /usr/lib/clock-epoch for later boots (systemd advances the clock to that file's
time at every start), and k3s-prep never starts k3s on a time before it.
"""

from __future__ import annotations

import time

from ..config import Cluster
from ..host_keys import CARD_SECRET, host_key
from ..secrets import SecretStore


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    """The bake time (the clock floor) and cmdline-keep's flags: the kernel arguments the bake
    writes for this role."""
    from ..bakery import cmdline_flags  # the one list the bake writes (bakery imports the features)

    return {"bake_time": int(time.time()), "cmdline_flags": cmdline_flags(cluster, role)}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes]:
    return {CARD_SECRET: host_key(store, role)}
