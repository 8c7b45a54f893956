"""The fast layer's control-plane build recipe (testbed/apiserver.py), without building it."""

from __future__ import annotations

import pytest

from ceil.config.schema import Kubernetes
from testbed import apiserver

GOMOD = """module k8s.io/kubernetes

go 1.26.0

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apiserver => ./staging/src/k8s.io/apiserver
\tk8s.io/kube-openapi => k8s.io/kube-openapi v0.0.0-20250910181357-589584f1c912
)
"""


def test_the_stand_in_release_has_its_components_listed():
    """A new STAND_IN_K3S must bring the kine and helm-controller versions it embeds."""
    assert apiserver.STAND_IN_K3S in apiserver.K3S_COMPONENTS


def test_the_stand_in_plays_the_kubernetes_minor_release_of_ceils_default():
    """The add-ons are checked against the control plane the test bed builds: it must serve the
    API of the Kubernetes minor release ceil's default k3s runs (a new default minor moves it)."""
    minor = lambda v: v.split("+")[0].rsplit(".", 1)[0]  # noqa: E731
    assert minor(apiserver.STAND_IN_K3S) == minor(Kubernetes().k3s_version)


def test_versions_follow_the_stand_in_release():
    assert apiserver.kubernetes_version("v1.36.1+k3s1") == "v1.36.1"
    assert apiserver.staging_version("v1.36.1") == "v0.36.1"
    assert apiserver.kubernetes_version() == apiserver.STAND_IN_K3S.split("+")[0]


def test_only_the_staging_replaces_are_pinned():
    modules = apiserver.staging_modules(GOMOD)
    assert modules == ["k8s.io/api", "k8s.io/apiserver"]
    gomod = apiserver.wrapper_gomod("v1.36.1", modules, "go1.26.8")
    assert "require k8s.io/kubernetes v1.36.1" in gomod and "\ngo 1.26.8\n" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.36.1\n" in gomod and "kube-openapi" not in gomod


def test_the_key_changes_with_every_input():
    base = apiserver.Recipe("v1.36.1", "v0.17.5", "v0.17.1", "go1.26.8")
    others = [apiserver.Recipe("v1.36.2", "v0.17.5", "v0.17.1", "go1.26.8"),
              apiserver.Recipe("v1.36.1", "v0.17.4", "v0.17.1", "go1.26.8"),
              apiserver.Recipe("v1.36.1", "v0.17.5", "v0.17.2", "go1.26.8"),
              apiserver.Recipe("v1.36.1", "v0.17.5", "v0.17.1", "go1.27.3")]
    assert len({base.key, *(o.key for o in others)}) == 5


def test_an_unlisted_k3s_release_is_refused_with_the_fix():
    with pytest.raises(apiserver.BuildError, match="K3S_COMPONENTS has no row for k3s v1.99.0"):
        apiserver.recipe("v1.99.0+k3s1")
