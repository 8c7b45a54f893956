"""The router's registries from a node: ceil/oci.py run there as root (nodes have python3, not
docker), with the node's own CA and, for pulls, the account containerd uses there. Shared by the
registry checks (test_router_services.py) and the workstation's app delivery (e2e)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from ceil.registry_access import NODE_CA_PATH

OCI_SCRIPT = (Path(__file__).resolve().parents[3] / "ceil/oci.py").read_text()


def oci(node, verb: str, base: str, name: str, tag: str, auth: tuple[str, str] | None = None,
        ca: str | None = NODE_CA_PATH, sample: str = "image") -> dict:
    """Run ceil/oci.py on the node (it has python3, not docker), as root: the CA file is
    the node's own, and `auth` goes through a root-only file, not the command line.
    Returns its JSON result, or {"error": ...} when it failed."""
    job = f"/run/ceil-oci-{uuid.uuid4().hex[:12]}"
    env = f"OCI_CA={ca}" if ca else ""
    try:
        if auth:
            node.run_expect([0], f"sudo sh -c 'umask 077; cat > {job}' <<'CEIL_EOF'\n{auth[0]}:{auth[1]}\nCEIL_EOF")
            env += f" OCI_AUTH_FILE={job}"
        what = f" {sample}" if verb == "push" else ""
        done = node.run(f"sudo {env} python3 - {verb} {base} {name} {tag}{what} <<'CEIL_OCI'\n{OCI_SCRIPT}\nCEIL_OCI")
    finally:
        node.run(f"sudo rm -f {job}")
    if done.rc != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def node_pull_account(node) -> tuple[str, str]:
    """The account containerd uses on this node, read from its own registries.yaml."""
    import yaml

    with node.sudo():
        doc = yaml.safe_load(node.file("/etc/rancher/k3s/registries.yaml").content_string)
    auth = next(c["auth"] for c in doc["configs"].values() if "auth" in c)
    return auth["username"], auth["password"]
