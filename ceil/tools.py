"""Host tools: checked before any work, each with why it is needed and how to install it."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

from .errors import CeilError


@dataclass(frozen=True)
class Tool:
    name: str
    why: str
    debian: str
    brew: str
    # "bake", "test", "flash", "operate" (day-to-day commands against the cluster) or "app"
    # (bake.py app: one builder of several, and helm)
    needed_for: str
    # Where Debian has no package (or one too old), how to get it on Linux instead.
    elsewhere: str = ""
    # Needed on Linux only (doctor leaves it out on macOS).
    linux_only: bool = False


TOOLS = [
    Tool("mcopy", "writes the seed and payload into the boot (FAT) partition", "mtools", "mtools", "bake"),
    Tool("mtype", "reads cmdline.txt from the boot partition", "mtools", "mtools", "bake"),
    Tool("mmd", "creates folders on the boot partition", "mtools", "mtools", "bake"),
    Tool("mdel", "replaces files on the boot partition", "mtools", "mtools", "bake"),
    Tool("mdir", "lists the boot partition's folders (slots, the scrubbed seed)", "mtools", "mtools", "bake"),
    # Homebrew's e2fsprogs is keg-only: installed, debugfs is still not on PATH.
    Tool("debugfs", "reads and writes the root (ext4) partition without mounting it", "e2fsprogs",
         "e2fsprogs, then put $(brew --prefix e2fsprogs)/sbin on PATH (the formula is keg-only)", "bake"),
    Tool("fsck.vfat", "checks baked boot partitions (image tests)", "dosfstools", "dosfstools", "test"),
    Tool("mkfs.vfat", "builds synthetic base images (image tests)", "dosfstools", "dosfstools", "test"),
    Tool("e2fsck", "checks root partitions (image tests)", "e2fsprogs", "e2fsprogs", "test"),
    Tool("mkfs.ext4", "builds synthetic base images (image tests)", "e2fsprogs", "e2fsprogs", "test"),
    Tool("sfdisk", "writes partition tables of synthetic images (image tests)", "fdisk", "util-linux", "test"),
    Tool("cloud-init", "validates rendered user-data (`cloud-init schema`)", "cloud-init", "(Linux only)", "test"),
    Tool("dnsmasq", "validates the router's DHCP/DNS config (`dnsmasq --test`)", "dnsmasq-base", "dnsmasq", "test"),
    Tool("nft", "validates the router's firewall (`nft -c`)", "nftables", "(Linux only)", "test"),
    Tool("wg", "checks WireGuard keys", "wireguard-tools", "wireguard-tools", "test"),
    Tool("openssl", "verifies the k3s certificate chains", "openssl", "openssl", "test"),
    Tool("qemu-system-aarch64", "boots arm64 test beds (e2e)", "qemu-system-arm", "qemu", "test"),
    Tool("mmdebstrap", "builds the test-bed root file system (e2e)", "mmdebstrap", "(Linux only)", "test"),
    Tool("ssh", "reaches the machines (bake.py ssh, run, make verify)", "openssh-client", "(built in)", "operate"),
    Tool("wg-quick", "brings the VPN client up (sudo wg-quick up laptop.conf; or import the file in WireGuard's app)",
         "wireguard-tools", "wireguard-tools", "operate"),
    # wg-quick hands the client file's DNS= line to resolvconf; without it, `up` fails on Linux.
    Tool("resolvconf", "lets wg-quick set the cluster's DNS server from the VPN client file", "openresolv",
         "", "operate", "or systemd-resolved, whose resolvconf serves too",
         linux_only=True),
    Tool("buildah", "builds your app's multi-arch image without a daemon (bake.py app; or podman, or docker buildx)",
         "buildah", "(Linux only: use podman)", "app"),
    Tool("podman", "builds your app's multi-arch image (bake.py app; or buildah, or docker buildx)", "podman",
         "podman", "app"),
    Tool("helm", "lints and packages your app's chart (bake.py app chart)", "", "helm", "app",
         "Helm's own apt repository or release (helm.sh/docs/intro/install)"),
    Tool("git", "commits your app's deployment into your GitOps repository (bake.py app deploy --git)", "git", "git",
         "app"),
    Tool("stern", "tails the logs of every pod at once (bake.py logs, make logs, without a selector)", "",
         "stern", "operate", "its release binary (github.com/stern/stern/releases)"),
    # Debian's kubernetes-client is 1.20, and kubectl talks to a server one minor version either way.
    Tool("kubectl", "talks to the cluster with the baked kubeconfig (make nodes-show, pods-show)", "",
         "kubectl", "operate", "Kubernetes' own apt repository (pkgs.k8s.io: kubernetes.io/docs/tasks/tools/"
         "install-kubectl-linux), one minor version of the cluster's either way; Debian's kubernetes-client is too old"),
]


def install_hint(tool: Tool) -> str:
    if platform.system() == "Darwin":
        return f"brew install {tool.brew}"
    if not tool.debian:  # not packaged by Debian (or too old there)
        return tool.elsewhere or "the publisher's instructions"
    return f"sudo apt install {tool.debian}" + (f" ({tool.elsewhere})" if tool.elsewhere else "")


def kubectl_skew(cluster_minor: int, version_json: str) -> str | None:
    """What is wrong with the kubectl whose `kubectl version --client -o json` is `version_json`
    for a cluster of Kubernetes 1.`cluster_minor` (kubectl's version skew policy: one minor version
    either way), or None."""
    import json

    try:
        client = json.loads(version_json)["clientVersion"]
        major, minor = int(client["major"]), int(str(client["minor"]).rstrip("+"))
    except (ValueError, KeyError, TypeError):
        return "its version could not be read (kubectl version --client -o json)"
    if major != 1 or abs(minor - cluster_minor) > 1:
        return (f"it is {major}.{minor}, and the cluster runs Kubernetes 1.{cluster_minor}: kubectl supports one minor"
                f" version either way of its own; install 1.{cluster_minor} ({next(t for t in TOOLS if t.name == 'kubectl').elsewhere})")
    return None


def check_tools(purpose: str = "bake") -> None:
    """Fail before any work if a tool `purpose` needs is missing, saying why and how to install."""
    missing = [t for t in TOOLS if t.needed_for == purpose and shutil.which(t.name) is None]
    if missing:
        lines = [_not_found(t) for t in missing]
        raise CeilError("missing host tools:\n  " + "\n  ".join(lines) + "\n  (`python bake.py doctor` lists all)")


def _not_found(tool: Tool, more: str = "") -> str:
    return f"{tool.name} not found: it {tool.why} ({install_hint(tool)}{more})"


def require(name: str) -> None:
    """The one tool a command is about to run, refused by name, why and how to install before it
    runs (a missing ssh client ended `bake.py ssh`, `run`, ... in a FileNotFoundError traceback)."""
    if shutil.which(name) is None:
        tool = next(t for t in TOOLS if t.name == name)
        raise CeilError(_not_found(tool, "; `python bake.py doctor` lists all"))


def doctor_rows() -> list[tuple[str, bool, str, str, str]]:
    mac = platform.system() == "Darwin"
    return [(t.name, shutil.which(t.name) is not None, t.needed_for, t.why, install_hint(t)) for t in TOOLS
            if not (mac and t.linux_only)]
