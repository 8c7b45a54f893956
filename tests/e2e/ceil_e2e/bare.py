"""The cached test bed booted as it is, without the bake: one guest with a hand-made NoCloud seed.

tests/e2e/test_testbed.py checks it, so that a test-bed problem is told apart from a bake problem.
Its boot is split in two (`start()` returns at once, `wait()` awaits SSH and cloud-init) so the
session can boot it while another own-guest test (the broken image) runs: each is one guest with
one vCPU, and the machine has two cores (session.bare(flavor), tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from ceil_infra.ssh import Endpoint, SshConfig, generate_key

from . import readiness, seed
from .cluster import free_port, log, log_to
from .fakes import APT_ADDR, standard_internet
from .vm import Guest, Uplink

NAME = "bare"
USER = "ceil"
DOMAIN = "ceil.internal"


def host_key_config(private_key: Path) -> str:
    """cloud-config giving the machine an ed25519 host key (cloud-init's ssh_keys)."""
    private = "".join(f"    {line}\n" for line in private_key.read_text().splitlines())
    public = Path(f"{private_key}.pub").read_text().strip()
    return f"ssh_keys:\n  ed25519_private: |\n{private}  ed25519_public: {public}\n"


class BareTestbed:
    def __init__(self, testbed, arch: str, artifacts: Path, workdir: Path):
        self.testbed = testbed
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True)
        log_to(artifacts.parent / "progress.log")
        self.work = Path(tempfile.mkdtemp(prefix="ceil-e2e-testbed-", dir=workdir))
        (self.work / "pid").write_text(str(os.getpid()))  # stale-run cleanup (session.remove_stale_workdirs)
        self.net = standard_internet(testbed.repo, artifacts / "fakes.log")
        self.guest: Guest | None = None
        self.ssh: SshConfig | None = None
        self._ready: dict | BaseException | None = None
        try:
            key = generate_key(self.work / "id_ed25519")
            # A throwaway host key the seed gives the machine (ssh_keys), as a bake may: cloud-init
            # puts it in place; what is left of it after the boot is the flavor's (test_testbed.py).
            host_key = generate_key(self.work / "seed_host_ed25519_key")
            self.seed_host_key = Path(f"{host_key}.pub").read_text().strip()
            img = self.work / "disk.img"
            seed.copy_sparse(testbed.image, img)
            os.truncate(img, 8 << 30)
            seed.seed_testbed(img, NAME, Path(f"{key}.pub").read_text(), domain=DOMAIN, user=USER,
                              apt_mirror=f"http://{APT_ADDR[0]}/debian", extra_user_data=host_key_config(host_key))
            port = free_port()
            self.ssh = SshConfig(artifacts / "ssh_config", USER, key, [Endpoint(NAME, "127.0.0.1", port)],
                                 artifacts / "known_hosts")
            self.guest = Guest(NAME, img, arch, artifacts, lan=None, uplink=Uplink(port, self.net.guestfwds()),
                               cpus=int(os.environ.get("CEIL_E2E_CPUS", 1)),
                               board=testbed.manifest.get("twin", {}).get("board"))
        except BaseException:
            self.close()
            raise

    def start(self) -> "BareTestbed":
        self.guest.start()
        log(f"bare test bed: booting {self.testbed.dir.name}")
        return self

    def wait(self) -> dict:
        """{"host", "testbed", "ssh"} once SSH and cloud-init are done; a failure is kept and re-raised."""
        if isinstance(self._ready, BaseException):
            raise self._ready
        if self._ready is None:
            try:
                t = readiness.wait_ssh(self.ssh, NAME, 1200, [self.guest])
                readiness.wait_cloud_init(self.ssh, NAME, 900)
            except BaseException as exc:
                self._ready = exc
                readiness.collect(self.ssh, NAME, self.artifacts / "diagnostics")
                raise
            log(f"bare test bed: SSH after {t:.0f}s of waiting, cloud-init done "
                f"{time.monotonic() - self.guest.started_at:.0f}s after power-on")
            self._ready = {"host": self.ssh.testinfra_host(NAME), "testbed": self.testbed, "ssh": self.ssh,
                           "guest": self.guest, "seed_host_key": self.seed_host_key}
        return self._ready

    def close(self) -> None:
        if self.guest is not None:
            self.guest.cleanup()
            self.guest = None
        if self.ssh is not None:
            self.ssh.close()
        self.net.close()
        shutil.rmtree(self.work, ignore_errors=True)
