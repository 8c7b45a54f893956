"""Resource fit (issue 20 #6): the chosen add-ons against the nodes' memory, from published
numbers only (ceil/addons/fit.py, docs/research/addon-resources.md)."""

from __future__ import annotations

import pytest

from ceil.addons.catalog import Catalog, selected
from ceil.addons.fit import fit_problems, fit_warnings, headroom_mib
from ceil.catalog import load_flavor
from ceil.config import parse_cluster
from ceil.errors import ConfigError
from ceil.features import preflight

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"


def make(nodes: str, extra: str = ""):
    return parse_cluster(f"ssh: {{authorized_keys: ['{KEY}']}}\nnodes: {nodes}\n{extra}")


def problems(cluster):
    return fit_problems(cluster, selected(cluster, Catalog()))


SEED = "[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}, {name: three, ram_gib: 1}, {name: four, ram_gib: 1}]"


def test_unknown_memory_is_not_checked():
    cluster = make("[{name: one, role: server}, {name: two, ram_gib: 1}]")
    assert headroom_mib(cluster) is None and problems(cluster) == [] and fit_warnings(cluster) == []


def test_the_seeds_four_pi_3b_plus_fit_the_default_add_ons_with_a_warning_for_the_server():
    cluster = make(SEED)
    assert problems(cluster) == []
    (warning,) = fit_warnings(cluster)
    assert "nodes[one] is a server with 1 GiB" in warning and "2 GB" in warning


def test_longhorn_on_a_node_under_its_4_gib_minimum_is_refused():
    cluster = make("[{name: one, role: server, ram_gib: 4}, {name: two, ram_gib: 2, storage_device: /dev/sda},"
                   " {name: three, ram_gib: 4, storage_device: /dev/sda}]")
    (problem,) = problems(cluster)
    assert "nodes[two].ram_gib is 2" in problem and "at least 4 GiB" in problem and "/dev/sda" in problem


def test_too_little_memory_for_the_add_ons_requests_is_refused_with_the_numbers():
    cluster = make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]")
    (problem,) = problems(cluster)
    assert "the add-ons' pods ask 1180 MiB" in problem and "dashboard 800" in problem
    assert "two 769" in problem and "one 0" in problem
    # Without the dashboard (800 MiB of requests) the same two boards fit.
    assert problems(make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]",
                         "addons: {disable: [dashboard]}\n")) == []


def test_the_bake_refuses_before_writing_anything():
    cluster = make("[{name: one, role: server, ram_gib: 1}, {name: two, ram_gib: 1}]")
    with pytest.raises(ConfigError, match="(?s)nothing was baked.*the add-ons' pods ask"):
        preflight(cluster, ["router", "one", "two"], load_flavor(cluster.flavor))


def test_ram_must_be_a_pi_size():
    with pytest.raises(ConfigError, match="ram_gib"):
        make("[{name: one, role: server, ram_gib: 3}]")
