"""Small helpers shared by the testinfra checks (tests/infra/test_*.py)."""

from __future__ import annotations

import os
import re
import shlex
import time

import pytest


def fake(fakes, name: str):
    """fakes.<name>, or skip saying which local fake the check needs (absent on real hardware)."""
    value = getattr(fakes, name, None) if fakes is not None else None
    if value is None:
        pytest.skip(f"needs the test bed's fakes.{name} (a local fake internet service)")
    return value


def each_node(nodes) -> list:
    """(name, host) of every node, sorted; skip when the run has none."""
    if not nodes:
        pytest.skip("no node hosts in this run")
    return sorted(nodes.items())


def wait_for(what: str, check, timeout: float = 240, every: float = 5, explain=None):
    """check()'s first truthy value; AssertionError naming `what` after `timeout` seconds, followed
    by explain()'s text when given (what the parts involved said, for the reader of the failure)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                 + (f"\n{explain()}" if explain else ""))
        time.sleep(every)
    return value


def retry(what: str, fn, timeout: float = 240, every: float = 5):
    """fn()'s value once it stops raising; after `timeout` seconds an AssertionError naming
    `what` and the last error (which wait_for with or_none would lose)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {e}") from e
        time.sleep(every)


def or_none(fn):
    """fn()'s value, or None if it raised: for a wait_for check that fails until it works."""
    try:
        return fn()
    except Exception:
        return None



def input_accepts(table: str, interface: str, trusted: bool = False) -> dict[str, set[int]]:
    """Destination ports that the input chain in `table` (the text of `nft list table inet ceil`)
    accepts on `interface`, by protocol: from anyone, or (`trusted`) from the @trusted set only.
    Port sets may be literal (`{ 22, 51820 }`) or named (`@lan_tcp`, resolved from the table)."""
    sets = {name: body for name, body in
            re.findall(r"\bset (\w+) \{[^}]*?elements = (\{[^}]*\})", table)}
    chain = re.search(r"chain input \{(.*?)\n\t\}", table, re.S)
    assert chain, f"no input chain in:\n{table}"
    out: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for line in chain.group(1).splitlines():
        line = line.strip()
        if f'iifname "{interface}"' not in line or not line.endswith("accept"):
            continue
        if ("@trusted" in line) != trusted:
            continue
        m = re.search(r"(tcp|udp) dport (\{[^}]*\}|\d+|@\w+)", line)
        assert m, f"an {interface} rule accepts traffic not limited to ports: {line}"
        ports = m.group(2)
        if ports.startswith("@"):
            ports = sets[ports[1:]]
        out[m.group(1)] |= {int(p) for p in re.findall(r"\d+", ports)}
    return out

def step_names(host) -> list[str]:
    """The done-marker names: the NAME in `ceil-step NAME ...` of every installed ceil unit."""
    out = host.run("grep -ho 'ceil-step [A-Za-z0-9_.-]*' /etc/systemd/system/ceil-*.service").stdout
    return sorted({line.split()[1] for line in out.splitlines() if len(line.split()) == 2})


def failed_ceil_units(host) -> list[str]:
    out = host.run("systemctl list-units --state=failed --plain --no-legend 'ceil-*'").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def block_scan_command(device: str) -> str:
    """Shell: up to 5 distinct patterns (from stdin, one per line) found anywhere in `device`.

    `grep -z` takes NUL bytes, not newlines, as line ends. A boot partition is mostly zeros and
    binary data with few newlines, so plain grep holds "lines" of hundreds of MB in memory: on a
    1 GiB machine that meant soft lockups of 20 s, a jumping clock and SSH timeouts (run 11, 12
    and ci-y of stop 13). A secret (text) holds no NUL, so no match is lost."""
    return f"nice grep -aoFz -f - {shlex.quote(device)} | tr '\\0' '\\n' | sort -u | head -5"


class DetachedJob:
    """A root shell script running detached on a machine (`start_as_root_detached`)."""

    def __init__(self, host, tag: str, what: str):
        self.host, self.tag, self.what = host, tag, what
        self.done = False

    def result(self, timeout: float = 900, every: float = 10) -> str:
        """Its stdout (and stderr), once it has finished; AssertionError naming it after `timeout`."""
        try:
            wait_for(self.what, lambda: self.host.run(f"sudo test -e {self.tag}.rc").rc == 0,
                     timeout=timeout, every=every)
            return self.host.run(f"sudo cat {self.tag}.out").stdout
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop it if it still runs and remove its files (idempotent)."""
        if not self.done:
            self.done = True
            tag = self.tag
            # The files go only once the job's process group is gone: its shell, dying, may still
            # write the exit code.
            self.host.run(f"sudo sh -c 'g=$(cat {tag}.pid); test -e {tag}.rc || kill -s TERM -- -$g;"
                          f" i=0; while kill -0 -- -$g 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done;"
                          f" rm -f {tag}.*'")


def start_as_root_detached(host, script: str, what: str, stdin: str = "") -> DetachedJob:
    """Start root shell `script`, which may run for minutes (e.g. reading a whole partition).

    A long command inside one SSH session dies with the session when a starved guest misses the
    keep-alives, so `script` runs detached on the machine, and short logins poll for its result.
    `stdin` (e.g. grep patterns that are secrets) goes through a root-only file, never argv.
    Several jobs on several machines run at the same time; `result()` collects each.
    """
    tag = f"/run/ceil-check-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    host.run_expect([0], f"sudo sh -c 'umask 077; cat > {tag}.in' <<'CEIL_EOF'\n{stdin}\nCEIL_EOF")
    # setsid: the job leads its own process group, so a timeout can stop all of it.
    job = f"echo $$ > {tag}.pid; ({script}) < {tag}.in > {tag}.out 2>&1; echo $? > {tag}.rc"
    host.run_expect([0], f"sudo setsid sh -c {shlex.quote(job)} < /dev/null > /dev/null 2>&1 &")
    # Started means its pid is on record: a cancel() before that found nothing to stop, and the
    # job started afterwards (stop 40: a loaded machine left its files behind).
    wait_for(f"{what} to start", lambda: host.run(f"sudo test -s {tag}.pid").rc == 0, timeout=60, every=0.1)
    return DetachedJob(host, tag, what)


def cluster_secrets(cluster) -> list[str]:
    """Every secret cluster.yaml itself holds (the WiFi passphrase, API tokens: the SecretStr
    fields), wherever it is in the model; those read from an unset ${VAR} are not known here."""
    from pydantic import BaseModel, SecretStr

    from ceil.config.loading import UnsetSecret

    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, UnsetSecret):
            return
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(cluster)
    return found


# One A query straight to the router's dnsmasq (no resolver cache in between), first answer or "".
DNS_QUERY = r"""
import random,socket,struct,sys
q=struct.pack('!HHHHHH',random.randint(0,65535),0x100,1,0,0,0)+b''.join(bytes([len(p)])+p.encode() for p in sys.argv[2].split('.'))+b'\0'+struct.pack('!HH',1,1)
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);s.sendto(q,(sys.argv[1],53));m=s.recv(4096)
if struct.unpack('!H',m[6:8])[0]:
    print(socket.inet_ntoa(m[-4:]))
"""


def resolves(host, name: str, server: str = "10.42.0.1") -> str:
    return host.check_output(f"python3 -c {shlex.quote(DNS_QUERY)} {server} {shlex.quote(name)}").strip()
