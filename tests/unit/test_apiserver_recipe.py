"""The fast layer's control-plane build recipe (testbed/apiserver.py), without building it."""

from __future__ import annotations

import pytest

from ceil.config.schema import Kubernetes
from pathlib import Path

from testbed import apiserver

REPO = Path(__file__).resolve().parents[2]

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


# ---- The add-on controllers the fast layer runs (testbed/addon_controllers.py) -----------------

def test_flux_builds_the_controllers_of_the_versions_the_gitops_addon_names():
    """A version bump in addons/gitops/addon.yaml's CRDs builds and tests the new controllers."""
    from ceil.addons.catalog import Catalog
    from testbed import addon_controllers as ac

    named = {s.module: s.version for s in Catalog().get("gitops").crds}
    flux = {c.name: c for c in ac.controllers() if c.module.startswith(ac.FLUX)}
    assert set(flux) == {"source-controller", "kustomize-controller"}
    assert {c.module: c.version for c in flux.values()} == named
    assert all(c.api_submodule for c in flux.values())


def test_keda_builds_the_operator_interceptor_and_scaler_of_the_versions_the_keda_addon_names():
    from ceil.addons.catalog import Catalog
    from testbed import addon_controllers as ac

    named = {s.module: s.version for s in Catalog().get("keda").crds}
    built = {c.name: (c.module, c.version, c.package) for c in ac.controllers()}
    assert built["keda-operator"] == (ac.KEDA, named[ac.KEDA], "./cmd/operator")
    assert built["interceptor"] == (ac.KEDA_HTTP, named[ac.KEDA_HTTP], "./interceptor")
    assert built["scaler"] == (ac.KEDA_HTTP, named[ac.KEDA_HTTP], "./scaler")


def test_the_adapter_built_is_the_app_version_of_the_chart_the_addon_installs():
    """A chart bump in adapter.yaml.j2 must bring the adapter version it ships (its appVersion)."""
    import yaml

    from testbed import addon_controllers as ac

    (chart,) = [d for d in yaml.safe_load_all((REPO / "addons/custom-metrics/adapter.yaml.j2").read_text())
                if d and d["kind"] == "HelmChart"]
    assert chart["spec"]["version"] == ac.ADAPTER_CHART, "update ADAPTER_CHART and ADAPTER_VERSION together"
    (adapter,) = [c for c in ac.controllers() if c.name == "prometheus-adapter"]
    assert (adapter.module, adapter.version) == ("sigs.k8s.io/prometheus-adapter", ac.ADAPTER_VERSION)


def test_a_substitute_applies_only_to_the_version_it_names():
    from testbed import addon_controllers as ac

    module, (refused, served) = next(iter(ac.SUBSTITUTES.items()))
    asks = f"module github.com/fluxcd/source-controller\n\nrequire (\n\t{module} {refused}\n\tgithub.com/x/y v1.0.0\n)\n"
    assert ac.substitutions(asks) == {module: served}
    assert ac.substitutions(f"require {module} {refused} // indirect\n") == {module: served}
    assert ac.substitutions(asks.replace(refused, refused + "1")) == {}
    assert ac.substitutions(asks.replace(refused, "v0.19.0")) == {}


def test_the_controllers_key_changes_with_the_versions_and_the_toolchain():
    from testbed import addon_controllers as ac

    import dataclasses

    base = ac.controllers()

    def bumped(n: int) -> tuple:
        return tuple(dataclasses.replace(c, version=c.version + "-1") if i == n else c for i, c in enumerate(base))

    recipes = [ac.Recipe(base, "go1.26.8"), ac.Recipe(base, "go1.27.3"),
               *(ac.Recipe(bumped(n), "go1.26.8") for n in range(len(base)))]
    assert len({r.key for r in recipes}) == 2 + len(base)
