#!/usr/bin/env bash
# Installs the host (Debian/Ubuntu) packages that baking and the tests need.
# Idempotent: packages already present are skipped, so a warm machine pays nothing.
# Why each package is needed is listed by `python bake.py doctor`.
set -euo pipefail

# Baking: partition/filesystem tools used by the image writers and image tests.
BAKE_PKGS="mtools dosfstools e2fsprogs fdisk xz-utils unzip openssl"
# Tests: independent checkers (cloud-init schema, dnsmasq --test, nft -c, wg, chronyd -p),
# the QEMU test bed (qemu, mmdebstrap, qemu-user for arm64 chroots) and ssh for testinfra;
# wireguard-go for the VPN handshake test where the kernel lacks the wireguard module, and
# docker-registry to serve the rendered registry configs in the unit tests; xfsprogs for a
# loop-mounted XFS with reflinks, where the bake clones its base instead of copying it;
# avahi-daemon answers the router's mDNS name in the trusted-network lab (run there, not here);
# buildah and podman are the builders `bake.py app build` drives (a FROM-scratch image, no
# download), skopeo the independent client that reads what it pushed back by digest; php-cli
# runs the demo app's own page; sudo's visudo checks the rule the server's snapshot account gets;
# wpasupplicant's configuration reader reads back what netplan writes for the router's WiFi;
# zstd packs the QEMU nodes' k3s stand-in; its runc links libseccomp (pkg-config finds it), and
# gcc-aarch64-linux-gnu compiles its CGO pieces for arm64 guests (libseccomp-dev:arm64 below),
# with the C library's headers from libc6-dev-arm64-cross (only recommended by the compiler);
# git serves the gitops tests' repository to Flux (its http-backend).
TEST_PKGS="cloud-init dnsmasq-base nftables wireguard-tools chrony openssh-client
  qemu-system-arm qemu-system-x86 qemu-utils qemu-efi-aarch64 mmdebstrap arch-test libcap2-bin qemu-user-static binfmt-support
  apt-utils dpkg-dev iproute2 ovmf chromium chromium-driver curl procps socat
  wireguard-go docker-registry isc-dhcp-client gcc xfsprogs avahi-daemon buildah podman skopeo php-cli sudo wpasupplicant
  zstd pkg-config libseccomp-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross git"

# Not from Debian's archive: the control-plane layer builds from Go modules with Go >= 1.26
# (Debian 12 ships 1.19), and its tests drive the API server with kubectl.
if [ "${1:-}" = "--test" ]; then
  gover=$(go env GOVERSION 2>/dev/null || true)
  case "$gover" in
    go1.2[6-9]*|go1.[3-9][0-9]*) ;;
    *) echo "Go >= 1.26 not found (found: ${gover:-none}): make apiserver builds kube-apiserver with it;" \
            "install it from https://go.dev/dl/ and put it on PATH" >&2; exit 1 ;;
  esac
  command -v kubectl >/dev/null || { echo "kubectl not found: the control-plane tests use it;" \
      "see https://kubernetes.io/docs/tasks/tools/" >&2; exit 1; }
fi

want="$BAKE_PKGS"
[ "${1:-}" = "--test" ] && want="$BAKE_PKGS $TEST_PKGS"

# The suites boot arm64 guests by default (ARCH=arm64), and their k3s stand-in's runc links the
# guests' libseccomp: on another host arch that is Debian's multiarch package, which needs the
# arch added to dpkg first (apt then fetches its package lists beside the host's). Debian's
# mirrors carry every arch; Ubuntu's amd64 archive does not (arm64 is on ports.ubuntu.com), so
# there the build names the package when ARCH=arm64 asks for it, and nothing else changes.
host_arch=$(dpkg --print-architecture)
foreign_arch=""
if [ "${1:-}" = "--test" ] && [ "$host_arch" != arm64 ] && grep -qx 'ID=debian' /etc/os-release; then
  foreign_arch=arm64
  want="$want libseccomp-dev:arm64"
fi

missing=()
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing host packages: ${missing[*]}" >&2
  add_arch=""
  if [ -n "$foreign_arch" ] && ! dpkg --print-foreign-architectures | grep -qx "$foreign_arch"; then
    add_arch="sudo dpkg --add-architecture $foreign_arch && sudo apt-get update && "
  fi
  echo "install them with: ${add_arch}sudo apt-get install ${missing[*]}  (macOS: brew install mtools e2fsprogs xz)" >&2
  exit 1
fi
echo "installing host packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [ -n "$foreign_arch" ] && ! dpkg --print-foreign-architectures | grep -qx "$foreign_arch"; then
  dpkg --add-architecture "$foreign_arch"
fi
# A container or CI machine may have no package lists yet (nor the foreign arch's).
apt-get update -qq
# policy-rc.d keeps packages such as dnsmasq or chrony from starting services on the host.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.ceil
chmod +x /usr/sbin/policy-rc.d.ceil
if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.ceil /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
