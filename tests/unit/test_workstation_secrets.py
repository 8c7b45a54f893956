"""Issue 19, "every mistake caught before anything is written": the workstation's commands on a
baked cluster use its secrets and never make them. Run in a folder without secrets/ (or one
without the cluster CA), `kubeconfig` made a new CA and server key, so its kubeconfig could never
match the cluster. Each command is run as a user runs it (`bake.py ...`, in process): exit status
1, a message that says what is missing and what to do, and nothing written."""

from __future__ import annotations

import fcntl
import os
import re
import threading
from pathlib import Path

import pytest

from ceil import cli, workstation
from ceil.k3s import pki
from ceil.secrets import SecretStore
from ceil.config import load_cluster
from ceil.addons.hooks import grafana_password
from ceil.wireguard import add_client, server_private_key
from tests.bake_cli import bake_py_waiting

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t@t"
CLUSTER = f"""ssh: {{authorized_keys: ["{KEY}"]}}
router: {{uplink: {{type: ethernet}}}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}, {{name: two, ip: 10.42.0.12}}]
vpn: {{endpoint: vpn.example.com}}
piwatch: {{enabled: false}}
"""

CONFIG = "--config"  # stands for `--config FOLDER/cluster.yaml` where each command takes it
# argv, and what the message says is missing
COMMANDS = {
    "kubeconfig": (["kubeconfig", CONFIG], "cluster CA (server-ca)"),
    "kubeconfig --tunnel-port": (["kubeconfig", CONFIG, "--tunnel-port", "16443"], "cluster CA (server-ca)"),
    "dashboard-token": (["dashboard-token", CONFIG], "cluster CA (server-ca)"),
    "addons apply": (["addons", CONFIG, "apply", "demo"], "cluster CA (server-ca)"),
    # With a kubeconfig of its own: the add-on's secret is refused before anything is applied.
    "addons apply --kubeconfig": (["addons", CONFIG, "--kubeconfig", "KUBECONFIG", "apply", "monitoring"], "secret"),
    "addons grafana-password": (["addons", CONFIG, "grafana-password"], "secret"),
    "addons ui-password": (["addons", CONFIG, "ui-password"], "secret"),
    "vpn-client": (["vpn-client", "laptop", CONFIG], "VPN server key"),
    "node remove": (["node", "remove", CONFIG, "--yes", "two"], "cluster CA (server-ca)"),
}


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def run(capsys, folder: Path, args: list[str]) -> tuple[int, str]:
    """`bake.py ARGS` in process: (exit status, everything it printed)."""
    argv = [a for arg in args for a in ([CONFIG, str(folder / "cluster.yaml")] if arg == CONFIG else [arg])]
    argv = [str(folder.parent / "kubeconfig") if a == "KUBECONFIG" else a for a in argv]
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def folder(tmp_path, monkeypatch):
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")  # a cluster nobody may reach
    # `node remove` would reach the router next: nothing may get that far.
    monkeypatch.setattr(workstation.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    return d


# vpn-client before any bake makes the VPN server key the router will be baked with (README,
# "Your way in"; test_wireguard): it refuses one only beside a baked cluster's secrets.
@pytest.mark.parametrize("name", [name for name in COMMANDS if name != "vpn-client"])
def test_without_secrets_nothing_is_made(folder, capsys, name):
    args, what = COMMANDS[name]
    code, out = run(capsys, folder, args)
    assert code == 1, out
    said = " ".join(out.split())  # the console wraps long lines
    assert f"no {what} in {folder / 'secrets'}" in said
    assert "Run it in the folder you baked from" in said and "bake first" in said
    assert "Traceback" not in out
    assert files_under(folder) == ["cluster.yaml"]


@pytest.mark.parametrize("name", ["kubeconfig", "dashboard-token", "node remove"])
def test_secrets_without_the_cluster_ca_are_not_completed(folder, capsys, name):
    """A secrets/ with the router's VPN key but no k3s CA (copied in part, or only the router
    baked here): the CA is not made up either."""
    server_private_key(SecretStore(folder / "secrets"))
    before = {p: p.read_bytes() for p in (folder / "secrets").rglob("*") if p.is_file()}
    code, out = run(capsys, folder, COMMANDS[name][0])
    said = " ".join(out.split())
    assert code == 1 and f"no cluster CA (server-ca) in {folder / 'secrets/k3s/tls/server-ca.crt'}" in said, said
    assert {p: p.read_bytes() for p in (folder / "secrets").rglob("*") if p.is_file()} == before
    assert not (folder / "out").exists()


def test_with_the_baked_secrets_the_commands_work(folder, capsys):
    """The same folder once the bake made its secrets: the refusals above are about their absence."""
    store = SecretStore(folder / "secrets")
    pki.ensure_k3s_cas(store)
    server_private_key(store)
    code, out = run(capsys, folder, COMMANDS["vpn-client"][0])
    assert code == 0 and (folder / "secrets/wireguard/clients/laptop.conf").is_file(), out
    code, out = run(capsys, folder, COMMANDS["kubeconfig"][0])
    assert code == 0 and (folder / "out" / "kubeconfig").is_file(), out


def test_two_new_vpn_clients_at_once_get_two_addresses(folder):
    """`vpn-client` takes the next address no client holds: two at once took the same one. The
    second waits on secrets/.lock, says so, and then takes the next after the first's."""
    store = SecretStore(folder / "secrets")
    server_private_key(store)
    with store.held():
        second, said = bake_py_waiting("vpn-client", "phone", "--config", str(folder / "cluster.yaml"), cwd=folder)
        first, _ = add_client(load_cluster(folder / "cluster.yaml"), store, "laptop")
    rest, _ = second.communicate(timeout=60)
    assert second.returncode == 0, said + rest
    [phone] = re.findall(r"client 'phone' has VPN address (\S+)", rest)
    assert phone != str(first.address), rest


def test_an_add_on_turned_on_after_the_bake_gets_its_password_from_the_command(folder, capsys):
    """Its password is on no card yet: in the baked cluster's folder the command that shows or
    applies it makes it (review of stop 32: refused before, with advice to re-bake everything)."""
    store = SecretStore(folder / "secrets")
    pki.ensure_k3s_cas(store)
    from ceil.compat import check_secrets_format

    check_secrets_format(store)  # what the first bake stamps
    code, out = run(capsys, folder, COMMANDS["addons grafana-password"][0])
    assert code == 0, out
    made = (folder / "secrets/grafana-admin-password").read_text().strip()
    assert made in out and len(made) == 32


def test_an_add_ons_password_asked_for_during_a_bake_is_the_one_the_bake_makes(folder):
    """`addons grafana-password` run while a bake holds secrets/ (and makes that password for the
    server's image) made a second one: the workstation showed a password the card never had. It
    now waits on secrets/.lock, says so, and then shows the one the bake made."""
    store = SecretStore(folder / "secrets")
    pki.ensure_k3s_cas(store)
    from ceil.compat import check_secrets_format

    check_secrets_format(store)  # a baked cluster's folder
    with store.held():
        shown, said = bake_py_waiting("addons", "--config", str(folder / "cluster.yaml"), "grafana-password",
                                      cwd=folder)
        baked = grafana_password(store)  # the bake, meanwhile
    rest, _ = shown.communicate(timeout=60)
    assert shown.returncode == 0, said + rest
    assert rest.strip().splitlines()[-1] == baked


def test_a_command_holding_the_secrets_makes_them_without_waiting_on_itself(tmp_path):
    """The bake holds secrets/.lock and makes its secrets inside it; a flock taken again through a
    second open of .lock by the same process would wait for ever."""
    store = SecretStore(tmp_path / "secrets")
    with store.held(), SecretStore(tmp_path / "secrets").held():  # another store on the same folder, too
        made = store.token("board-key")
    assert store.token("board-key") == made


def test_a_key_and_its_certificate_are_written_while_no_other_command_holds_the_secrets(tmp_path):
    """Two commands renewing the admin certificate at once (`kubeconfig` in two terminals) could
    leave one's key beside the other's certificate, a pair load_pair refuses for good."""
    store = SecretStore(tmp_path / "secrets")
    store.write("FORMAT", b"1\n")
    other = os.open(store.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)  # another command's hold
    fcntl.flock(other, fcntl.LOCK_EX)
    writer = threading.Thread(target=store.write_pair, args=("a/client.key", b"key", "a/client.crt", b"crt"))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and not store.exists("a/client.key")
    os.close(other)
    writer.join(10)
    assert (store.read("a/client.key"), store.read("a/client.crt")) == (b"key", b"crt")


def test_writing_what_a_secret_already_holds_leaves_the_file_alone(tmp_path):
    """Each bake records the secrets' format and a node's k3s version again: rewriting them meant
    an fsync each, which after an image's gigabytes waits for ext4's journal (bench/bake.py)."""
    store = SecretStore(tmp_path / "secrets")
    store.write("k3s-version", b"v1.35.0+k3s1\n")
    before = store.path("k3s-version").stat()
    store.write("k3s-version", b"v1.35.0+k3s1\n")
    after = store.path("k3s-version").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    store.write("k3s-version", b"v1.36.0+k3s1\n")  # a new value is still written, atomically, 0600
    assert store.read("k3s-version") == b"v1.36.0+k3s1\n"
    assert store.path("k3s-version").stat().st_mode & 0o777 == 0o600
