"""The duplicate-effect finder the e2e power-cut tests rely on (tests/infra/ceil_infra/converge.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

from ceil_infra.converge import duplicated_effects, repeated_lines, repeated_nft_rules  # noqa: E402

RULESET = """table inet ceil {
	set lan_services {
		type inet_service
		elements = { 53, 67 }
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iifname "lo" accept
		tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
	}
}
table ip ceil_nat {
	set wide {
		type ipv4_addr
		elements = { 10.0.0.1, 10.0.0.2,
			     10.0.0.3, 10.0.0.4 }
	}
	set wide2 {
		type ipv4_addr
		elements = { 10.0.0.1, 10.0.0.2,
			     10.0.0.3, 10.0.0.4 }
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth1" masquerade
	}
}
"""


def test_a_clean_ruleset_has_no_repeats_even_across_chains():
    assert repeated_nft_rules(RULESET) == []


def test_a_rule_added_twice_to_one_chain_is_found():
    doubled = RULESET.replace('oifname "eth1" masquerade', 'oifname "eth1" masquerade\n\t\toifname "eth1" masquerade')
    assert repeated_nft_rules(doubled) == ["nft table ip ceil_nat chain postrouting: 'oifname \"eth1\" masquerade' x2"]


def test_repeated_lines_ignores_comments_and_blanks():
    assert repeated_lines("# a\n# a\n\n\nx=1\ny=2\n") == []
    assert repeated_lines("x=1\n x=1\n") == ["'x=1' x2"]


class FakeHost:
    def __init__(self, files: dict[str, str], nft: str = ""):
        self.files, self.nft = files, nft

    def run(self, cmd: str):
        class R:
            rc, stdout = 1, ""
        r = R()
        if cmd.startswith("sudo cat "):
            path = cmd.split(" ", 2)[2].strip("'")
            if path in self.files:
                r.rc, r.stdout = 0, self.files[path]
        elif cmd == "command -v nft":
            r.rc = 0 if self.nft else 1
        elif cmd == "sudo nft list ruleset":
            r.rc, r.stdout = 0, self.nft
        return r


def test_duplicated_effects_names_file_line_and_lease():
    host = FakeHost({
        "/etc/fstab": "LABEL=writable / ext4 defaults 0 1\nLABEL=CEILDATA /srv ext4 nofail 0 2\nLABEL=CEILDATA /srv ext4 nofail 0 2\n",
        "/etc/wireguard/wg0.conf": "[Interface]\n[Peer]\nPublicKey = A\nPersistentKeepalive = 25\n[Peer]\nPublicKey = B\nPersistentKeepalive = 25\n",
        "/var/lib/misc/dnsmasq.leases": "1 52:54:00:00:00:01 10.42.0.11 ceil-one *\n2 52:54:00:00:00:01 10.42.0.11 ceil-one *\n",
        "/etc/rancher/k3s/registries.yaml": "mirrors:\n  a:\n    endpoint:\n    - http://r:5000\n  b:\n    endpoint:\n    - http://r:5000\n",
        "/etc/rancher/k3s/config.yaml": "node-ip: 10.42.0.11\ntls-san:\n- a\nflannel-iface: eth0\nflannel-iface: eth0\n",
    }, nft=RULESET)
    found = duplicated_effects(host)
    assert any(f.startswith("/etc/fstab: 'LABEL=CEILDATA") for f in found)
    assert not any("wg0.conf" in f for f in found)  # [Peer] headers and keepalives repeat by design
    assert "/var/lib/misc/dnsmasq.leases: MAC 52:54:00:00:00:01 leased x2" in found
    assert "/var/lib/misc/dnsmasq.leases: address 10.42.0.11 leased x2" in found
    assert "/etc/rancher/k3s/config.yaml: top-level key 'flannel-iface' x2" in found
    assert not any("registries.yaml" in f for f in found)  # nested YAML repeats by design
    assert len(found) == 4


def test_a_converged_machine_reports_nothing():
    assert duplicated_effects(FakeHost({"/etc/fstab": "a\nb\n"}, nft=RULESET)) == []
