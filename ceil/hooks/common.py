"""Hooks of the `common` feature: facts every card carries, here the time it was baked.

No Pi has a real-time clock: a freshly flashed card starts at whatever its RTC-less kernel and
image say (months in the past), where apt refuses archives "not valid yet" and certificates are
"not yet valid". The bake time is a floor: install.sh sets the clock forward to it on first boot
and leaves it as /usr/lib/clock-epoch for later boots (systemd advances the clock to that file's
time at every start), and k3s-prep never starts k3s on a time before it.
"""

from __future__ import annotations

import time

from ..config import Cluster
from ..secrets import SecretStore


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"bake_time": int(time.time())}
