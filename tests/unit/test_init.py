"""`bake.py init --yes` writes a valid cluster.yaml (0600) and generates the shared secrets."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ceil.config import load_cluster

REPO = Path(__file__).resolve().parents[2]


def init_wifi(tmp_path: Path, ssh_pubkey: str, *args: str) -> subprocess.CompletedProcess:
    """`bake.py init --yes` with a WiFi uplink, the passphrase in the environment as the README says."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    env = {**__import__("os").environ, "CEIL_WIFI_PSK": "a-good-passphrase"}
    return subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                           "--uplink", "wifi", *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_init_writes_config_and_secrets(tmp_path, ssh_pubkey, monkeypatch):
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    env = {**__import__("os").environ, "CEIL_WIFI_PSK": "a-good-passphrase"}
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "wifi", "--ssid", "Home", "--country", "de", "--nodes", "3"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "cluster.yaml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    monkeypatch.setenv("CEIL_WIFI_PSK", "a-good-passphrase")
    cluster = load_cluster(cfg)
    assert cluster.roles == ["router", "one", "two", "three"] and cluster.router.uplink.wifi.country == "DE"
    # Issue 19: a passphrase from the environment is never written; the file names the variable.
    assert "a-good-passphrase" not in cfg.read_text() and "${CEIL_WIFI_PSK}" in cfg.read_text()
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = [p for p in secrets.rglob("*") if p.is_file() and p.name != ".gitignore"]
    assert any("k3s" in str(p) for p in files) and any("wireguard" in str(p) for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    # ... and a way in: the first VPN client, made before the router's secrets (so the router is
    # baked knowing it), dialing the router's name on the home network by default.
    assert cluster.vpn.endpoint == "ceil-router"
    client = (secrets / "wireguard/clients/laptop.conf").read_text()
    assert "Endpoint = ceil-router:51820" in client and str(cluster.network.lan_cidr) in client
    assert "laptop.conf" in r.stdout + r.stderr
    again = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr


def test_init_checks_everything_before_writing_anything(tmp_path, ssh_pubkey):
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    env = {**__import__("os").environ, "CEIL_WIFI_PSK": "a-good-passphrase"}
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "wifi", "--ssid", "Home", "--country", "XX"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "not an ISO 3166-1 country code" in r.stderr
    assert not (tmp_path / "cluster.yaml").exists() and not (tmp_path / "secrets").exists()
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key)],
                       cwd=tmp_path, env={k: v for k, v in env.items() if k != "CEIL_WIFI_PSK"},
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--ssid" in r.stderr and "--uplink ethernet" in r.stderr


def test_a_wifi_name_the_flavor_cannot_carry_is_refused_in_inits_own_terms(tmp_path, ssh_pubkey):
    """The features' checks run too, and their refusal names init's options, not cluster.yaml's keys."""
    r = init_wifi(tmp_path, ssh_pubkey, "--ssid", "Back\\slash", "--country", "DE")
    said = " ".join(r.stderr.split())
    assert r.returncode == 1 and "nothing was written" in said and "nothing was baked" not in said, said
    assert "router.uplink.wifi.ssid (--ssid): 'Back\\\\slash' holds a backslash" in said, said
    assert "--uplink ethernet, or --flavor raspios-trixie" in said
    assert not (tmp_path / "cluster.yaml").exists() and not (tmp_path / "secrets").exists()


def test_init_rejects_a_bad_key(tmp_path):
    key = tmp_path / "id.pub"
    key.write_text("not a key\n")
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key), "--uplink", "ethernet"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "not an SSH public key" in r.stderr
    assert not (tmp_path / "cluster.yaml").exists()


def test_init_makes_the_folder_the_config_goes_into(tmp_path, ssh_pubkey):
    """`init --config newdir/cluster.yaml` ended in a FileNotFoundError traceback."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "ethernet", "--nodes", "1", "--config", "new/cluster.yaml"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "new" / "cluster.yaml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600 and load_cluster(cfg).roles == ["router", "one"]
    assert (tmp_path / "new" / "secrets" / "k3s").is_dir()  # secrets/ beside the config, as the bake looks for it
    assert "--config new/cluster.yaml" in r.stdout + r.stderr
    # A file where the folder would be is refused before a question is asked or anything written.
    (tmp_path / "taken").write_text("")
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "ethernet", "--config", "taken/sub/cluster.yaml"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "taken is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "taken").read_text() == ""


def test_a_flavor_ceil_has_no_k3s_digest_for_takes_the_users_in_inits_own_terms(tmp_path, ssh_pubkey):
    """HypriotOS is armhf, and ceil ships no armhf k3s digest: init says to pass --k3s-sha256
    (not to edit a cluster.yaml it never wrote), and with it writes the pin."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    cmd = [sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key), "--uplink", "ethernet",
           "--flavor", "hypriot-1.12.3"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(r.stderr.split())
    assert r.returncode == 1 and "nothing was written" in said and "pass --k3s-sha256 with the k3s-armhf line" in said, said
    assert not (tmp_path / "cluster.yaml").exists() and not (tmp_path / "secrets").exists()
    r = subprocess.run([*cmd, "--k3s-sha256", "e" * 64, "--vpn-client", ""], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_cluster(tmp_path / "cluster.yaml").kubernetes.k3s_sha256 == "e" * 64


def test_a_node_baked_first_after_init_is_not_told_of_an_older_router(tmp_path, ssh_pubkey):
    """init makes the server secret a router bake needs, which read as a router baked before
    secrets/router-contract existed: `bake.py --role one` right after init warned that "the router
    was baked by an older ceil" though no router had been baked at all."""
    from ceil import compat
    from ceil.secrets import SecretStore

    r = init_wifi(tmp_path, ssh_pubkey, "--ssid", "Home")
    assert r.returncode == 0, r.stderr
    store = SecretStore(tmp_path / "secrets", make_new=False)
    assert compat.stale_router_warning(store, ["one"]) is None
    assert compat.new_cluster_warning(store, ["one"]) is None  # init made the cluster: these nodes join it


def test_init_over_a_cluster_an_older_ceil_baked_keeps_its_warning(tmp_path, ssh_pubkey):
    """`init --force` beside a secrets/ whose router an older ceil baked reuses those secrets: its
    router still cannot serve nodes baked now, and the warning stays."""
    from ceil import compat
    from ceil.k3s.token import SERVER_SECRET
    from ceil.secrets import SecretStore

    SecretStore(tmp_path / "secrets").token(SERVER_SECRET)  # baked before the contract record
    (tmp_path / "cluster.yaml").write_text("old\n")
    r = init_wifi(tmp_path, ssh_pubkey, "--ssid", "Home", "--force")
    assert r.returncode == 0, r.stderr
    assert "contract 1" in compat.stale_router_warning(SecretStore(tmp_path / "secrets"), ["one"])


def test_a_vpn_client_made_after_init_is_told_the_routers_first_bake_carries_it(tmp_path, ssh_pubkey):
    """After init, before the router is baked, `vpn-client phone` said the router only knows peers
    that existed when its image was baked (re-bake and re-flash it): the router's first bake
    carries the peer. Once the router is baked, a new client is told how to add it to the running
    router, as before."""
    from ceil import compat
    from ceil.secrets import SecretStore

    r = init_wifi(tmp_path, ssh_pubkey, "--ssid", "Home")
    assert r.returncode == 0, r.stderr
    vpn_client = [sys.executable, str(REPO / "bake.py"), "vpn-client"]
    r = subprocess.run([*vpn_client, "phone"], cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stderr
    assert "first bake" in said and "carries this peer" in said and "re-flash" not in said, said
    compat.router_baked(SecretStore(tmp_path / "secrets"))  # as the router's bake records it
    r = subprocess.run([*vpn_client, "tablet"], cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stderr
    assert "re-flash the router" in said and "--print-peer" in said and "carries this peer" not in said, said


def test_a_refreshed_vpn_client_is_told_to_re_bake_the_router_only_once_one_was_baked(tmp_path, ssh_pubkey):
    """A client rewritten for a changed vpn.endpoint was told to re-bake and re-flash the router
    even before any router was baked (whose first bake takes the settings as they are)."""
    import re

    from ceil import compat
    from ceil.secrets import SecretStore

    assert init_wifi(tmp_path, ssh_pubkey, "--ssid", "Home").returncode == 0
    config = tmp_path / "cluster.yaml"
    vpn_client = [sys.executable, str(REPO / "bake.py"), "vpn-client", "laptop"]
    for endpoint, baked in (("vpn1.example.net", False), ("vpn2.example.net", True)):
        if baked:
            compat.router_baked(SecretStore(tmp_path / "secrets"))  # as the router's bake records it
        text, n = re.subn(r"endpoint: \S+", f"endpoint: {endpoint}", config.read_text())
        assert n == 1
        config.write_text(text)
        r = subprocess.run(vpn_client, cwd=tmp_path, capture_output=True, text=True)
        said = " ".join(r.stdout.split())
        assert r.returncode == 0 and "with the cluster's current VPN settings (same keys)" in said, r.stdout + r.stderr
        assert ("re-bake and re-flash the router too" in said) == baked, said


def test_a_name_too_long_for_its_host_names_is_reported_as_the_names_problem(tmp_path, ssh_pubkey):
    """`init --name <60 a's>` reported only that the VPN endpoint it defaults to, NAME-router, is no
    host name: the name's own problem (the host names it makes are too long) was told only when
    --vpn-endpoint was given."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "ethernet", "--name", "a" * 60], cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(r.stderr.split())
    assert r.returncode == 1 and "nothing was written" in said, said
    assert f"name (--name): the host name '{'a' * 60}-router' it makes is 67 characters long" in said, said
    assert "shorten the cluster's name to at most 56 characters" in said, said
    assert not (tmp_path / "cluster.yaml").exists() and not (tmp_path / "secrets").exists()


def test_an_empty_vpn_endpoint_is_refused_not_taken_for_the_default(tmp_path, ssh_pubkey):
    """`init --vpn-endpoint ''` quietly wrote the default NAME-router (a script's unset variable)."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--yes", "--ssh-key-file", str(key),
                        "--uplink", "ethernet", "--vpn-endpoint", ""], cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "--vpn-endpoint" in said and "empty" in said and "leave the option out" in said, said
    assert not (tmp_path / "cluster.yaml").exists() and not (tmp_path / "secrets").exists()


def test_interactive_init_asks_again_for_a_wrong_ssh_key_path(tmp_path, ssh_pubkey):
    """Interactive init stopped at a mistyped key path (or a file that holds no public key), where
    its other questions ask again with the reason."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    # The last two: the nodes' memory, which has no default (Enter asks again), then 4 GiB.
    answers = f"{tmp_path / 'typo.pub'}\n{tmp_path / 'id'}\n{key}\n\n4\n"
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--uplink", "ethernet", "--nodes", "1",
                        "--vpn-endpoint", "vpn.example.com", "--vpn-client", ""], cwd=tmp_path, input=answers,
                       capture_output=True, text=True, env={**__import__("os").environ, "HOME": str(tmp_path)})
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0, said
    assert f"Error: {tmp_path / 'typo.pub'} does not exist: give the path of your public key (.pub)" in said, said
    assert f"Error: {tmp_path / 'id'}: " in said, said
    assert said.count("SSH public key file") == 3, said
    assert said.count("Memory of each node in GiB") == 2, said
    assert load_cluster(tmp_path / "cluster.yaml").nodes[0].ram_gib == 4
    assert load_cluster(tmp_path / "cluster.yaml").ssh.authorized_keys == [ssh_pubkey]


@pytest.mark.parametrize("typed, endpoint", [("", "ceil-router"), ("vpn.example.com:51820", "vpn.example.com:51820")])
def test_interactive_init_asks_where_vpn_clients_dial(tmp_path, ssh_pubkey, typed, endpoint):
    """Issue 19 #1: `init` asks for the VPN endpoint, defaulting to the router's name on the home
    network, and the first client's config dials it."""
    key = tmp_path / "id.pub"
    key.write_text(ssh_pubkey + "\n")
    answers = f"{key}\n4\n{typed}\n"  # key, the nodes' memory, the endpoint (Enter: the default)
    r = subprocess.run([sys.executable, str(REPO / "bake.py"), "init", "--uplink", "ethernet", "--nodes", "1"],
                       cwd=tmp_path, input=answers, capture_output=True, text=True,
                       env={**__import__("os").environ, "HOME": str(tmp_path)})
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0, said
    assert "VPN endpoint (the router's public name, or its name on your network) [ceil-router]" in said, said
    assert load_cluster(tmp_path / "cluster.yaml").vpn.endpoint == endpoint
    clients = list((tmp_path / "secrets").rglob("*.conf"))
    assert clients and all(f"Endpoint = {endpoint}" in c.read_text() for c in clients), clients
