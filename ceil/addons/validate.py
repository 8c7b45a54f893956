"""Offline validation of rendered manifests.

Built-in kinds are checked with `kubernetes-validate` in strict mode against the Kubernetes
release k3s ships (v1.36.4+k3s1 -> 1.36); our custom resources (HelmChart, HelmChartConfig,
MetalLB pools, Traefik's Middleware) against the JSON schemas in addons/schemas/, written from the published CRDs;
kinds whose real CRDs an add-on names (KEDA's, prometheus-operator's) by the API server in the control-plane tests.
`kubernetes-validate` is a test/workstation extra, so it is imported only when used.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from .catalog import ADDONS_DIR

CR_SCHEMAS = {
    ("helm.cattle.io/v1", "HelmChart"): "helmchart.json",
    ("helm.cattle.io/v1", "HelmChartConfig"): "helmchartconfig.json",
    ("metallb.io/v1beta1", "IPAddressPool"): "ipaddresspool.json",
    ("metallb.io/v1beta1", "L2Advertisement"): "l2advertisement.json",
    ("traefik.io/v1alpha1", "Middleware"): "middleware.json",
}


def kubernetes_version(k3s_version: str) -> str:
    """'v1.36.1+k3s1' -> '1.36', or the newest schema set kubernetes-validate has that is not newer."""
    from kubernetes_validate.utils import all_versions

    m = re.match(r"^v?(\d+)\.(\d+)", k3s_version)
    if not m:
        raise ValueError(f"{k3s_version!r} is not a k3s version like v1.36.1+k3s1")
    wanted = (int(m.group(1)), int(m.group(2)))
    have = sorted({tuple(int(x) for x in v.split(".")[:2]) for v in all_versions()})
    usable = [v for v in have if v <= wanted]
    if not usable:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {wanted[0]}.{wanted[1]} or older")
    return "%d.%d" % usable[-1]


@cache
def _cr_schema(filename: str) -> dict[str, Any]:
    return json.loads((ADDONS_DIR / "schemas" / filename).read_text())


@cache
def crd_checked_kinds() -> frozenset[tuple[str, str]]:
    """Kinds whose real CRDs an add-on names (addon.yaml `crds:`): the control-plane tests apply
    them against those CRDs on the real API server (tests/apiserver/test_addons_job.py); offline
    there is no copy of their schema to check against."""
    from .catalog import Catalog

    return frozenset(tuple(k.split(" ", 1)) for spec in Catalog().specs.values() for c in spec.crds for k in c.kinds)


def validate_manifest(doc: dict[str, Any], k8s_version: str) -> str | None:
    """None when valid, else one line saying what is wrong and where."""
    import jsonschema
    import kubernetes_validate

    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema_file = CR_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if schema_file:
        try:
            jsonschema.validate(doc, _cr_schema(schema_file))
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            return f"{where}: {path}: {e.message}"
        return None
    if (doc.get("apiVersion"), doc.get("kind")) in crd_checked_kinds():
        return None
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top)"
        return f"{where}: {path}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"{where}: no schema: {e.message}"
    return None


def validate_all(docs: list[dict[str, Any]], k8s_version: str) -> list[str]:
    return [err for d in docs if (err := validate_manifest(d, k8s_version))]
