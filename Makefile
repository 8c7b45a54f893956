# ceil: one entry point for people. `make help` lists every target.
# Targets that talk to the cluster read cluster.yaml and secrets/ next to it.
SHELL := /bin/bash
PY ?= .venv/bin/python
# Set by `make test` for the builds it runs beside the unit tests.
NICE ?=
CONFIG ?= cluster.yaml
OUT ?= out
ARCH ?= arm64
FLAVOR ?= testbed-ubuntu
TESTBEDS = testbed-ubuntu testbed-ubuntu-slots testbed-raspios
# The flavors CI's QEMU suite boots (the cluster on one, the other bare); the boot-slot twin is e2e-full's.
CI_TESTBEDS = testbed-ubuntu testbed-raspios
DOMAIN ?= $(shell [ -f $(CONFIG) ] && $(PY) -c "from ceil.config import load_cluster; from pathlib import Path; print(load_cluster(Path('$(CONFIG)'), env_optional=True).domain)" 2>/dev/null || echo ceil.internal)

.DEFAULT_GOAL := help
.PHONY: help setup setup-host setup-test venv app route route-add logs k8s-remove k8s-reset k3s-upgrade datastore-backup datastore-from-router k8s-proxy teardown all-delete uptime df check-ip router-check-ip k8s-check-ip nodes-show pods-show router-reboot reboot-all test test-unit test-apiserver apiserver helm addon-controllers kubenode test-image e2e e2e-full testbed testbed-ci $(TESTBEDS) verify bake bench clean doctor

help: ## List every target with a one-line description
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'
	@printf "  \033[36m%-22s\033[0m %s\n" "<addon>-deploy" "Apply one add-on: $(ADDONS)" "<addon>-delete" "Delete one add-on, e.g. make demo-delete" \
		"<test bed>" "Build (or reuse) one test-bed flavor: $(TESTBEDS) (ARCH=arm64|amd64)"

setup: setup-host venv ## Install the host packages baking needs (Debian/Ubuntu, as root) and the Python venv
setup-host: ## Install the Debian packages baking needs (idempotent)
	bash scripts/setup-host.sh
setup-test: venv ## Install the Debian packages baking and the tests need (idempotent; the tests also need Go >= 1.26 and kubectl)
	bash scripts/setup-host.sh --test
venv: .venv/.done ## Create .venv with ceil and its test dependencies
.venv/.done: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -U pip
	.venv/bin/pip install -q -e '.[test,piwatch,cluster]'
	touch $@

doctor: venv ## Which host tools are present, what each is for, how to install
	$(PY) bake.py doctor --config $(CONFIG)

bake: venv ## Bake every role of CONFIG (default cluster.yaml) into OUT/ (default out/; BASE=path to use a local base image; ANY_BASE=1 for one that is not the flavor's pinned file)
	$(PY) bake.py --all --config $(CONFIG) --out $(OUT) $(if $(BASE),--base-image $(BASE)) $(if $(ANY_BASE),--any-base-image)
%-bake: venv ## Bake one role, e.g. make router-bake (BASE=, ANY_BASE=1 as for bake)
	$(PY) bake.py --role $* --config $(CONFIG) --out $(OUT) $(if $(BASE),--base-image $(BASE)) $(if $(ANY_BASE),--any-base-image)
%-ssh: venv ## SSH into one machine as the baked admin, e.g. make one-ssh (VIA=router's uplink address to jump through it)
	$(PY) bake.py ssh --config $(CONFIG) $(if $(VIA),--via $(VIA)) $*
route: venv ## Print the workstation's route to the cluster LAN through the router (route-add applies it)
	$(PY) bake.py route --config $(CONFIG) $(if $(VIA),--via $(VIA))
route-add: venv ## Add that route (sudo; Linux and macOS), like the seed's workstation-route-add
	$(PY) bake.py route --config $(CONFIG) --add $(if $(VIA),--via $(VIA))
%-flash: venv ## Flash one role's image to DEVICE, e.g. make router-flash DEVICE=/dev/sdb (through sudo: writing a card needs root)
	@[ -n "$(DEVICE)" ] || { echo "usage: make $@ DEVICE=/dev/sdX (see lsblk; macOS: diskutil list)"; exit 2; }
	$(if $(filter 0,$(shell id -u)),,sudo) $(PY) bake.py flash --role $* --out $(OUT) --device $(DEVICE) $(FLASH_FLAGS)

test: setup-test ## Set up and run every test CI runs: unit, image, config and browser tests, the fast control-plane layer, then the QEMU e2e suite (amd64)
	@# With cold caches the Go builds (~13 min) and the test beds (~2 min) run beside the unit tests,
	@# niced so the tests' own timeouts keep the CPU; with warm caches each build is a cache hit.
	$(MAKE) --no-print-directory -j4 -Oline ARCH=amd64 NICE="nice -n 15" test-unit apiserver helm addon-controllers kubenode testbed-ci
	$(MAKE) test-apiserver
	$(MAKE) e2e ARCH=amd64
test-unit: venv ## Fast unit and image tests only (what `make test` runs first; builds nothing)
	$(PY) -m pytest -m "not e2e and not apiserver"
apiserver: venv ## Build (or reuse from cache) the fast layer's control plane from Go modules: kube-apiserver, kube-controller-manager, kine, helm-controller
	$(NICE) $(PY) -m testbed.apiserver
# After apiserver: the Kubernetes packages both build are compiled once (Go's build cache).
kubenode: venv apiserver ## Build (or reuse) the QEMU nodes' k3s stand-in from Go modules: upstream Kubernetes, kine, containerd, runc, CNI plugins (ARCH=)
	$(NICE) $(PY) -m testbed.kubenode --arch $(ARCH)
helm: venv ## Build (or reuse from cache) the Helm CLI the app-delivery tests use, from its Go module
	$(NICE) $(PY) -m testbed.helm
# After apiserver, like kubenode: the KEDA operator's link alone peaks at 2.7 GiB, too much beside kube-apiserver's
# on a small CI machine (kubenode's build, mostly Go cache hits by then, may still overlap it).
addon-controllers: venv apiserver ## Build (or reuse from cache) the add-on controllers the fast layer runs (Flux's source and kustomize controllers, prometheus-adapter, KEDA's operator, the HTTP add-on's interceptor and scaler), from their Go modules
	$(NICE) $(PY) -m testbed.addon_controllers
test-apiserver: apiserver helm addon-controllers ## The fast layer (no QEMU): baked PKI, kubeconfig and the add-on job against a real control plane (root)
	@# The k3s stand-in's server part runs here too: built for this machine, whatever ARCH says.
	$(NICE) $(PY) -m testbed.kubenode --arch host
	$(PY) -m pytest -m apiserver --durations=5 tests/apiserver
# The flavors build side by side: one build is mostly a single (emulated) dpkg process, so on 2
# cores two arm64 builds took 32 and 33 min together. -Oline keeps their log lines whole.
testbed: venv ## Build (or reuse from cache) the QEMU test-bed base images, every flavor at once (ARCH=arm64|amd64)
	@$(MAKE) --no-print-directory -j$(words $(TESTBEDS)) -Oline $(TESTBEDS)
$(TESTBEDS): venv
	$(NICE) $(PY) -m testbed.build --flavor $@ --arch $(ARCH)
testbed-ci: venv ## Build (or reuse) only the test beds CI's QEMU suite boots (CI_TESTBEDS: the cluster's flavor and the bare one)
	@$(MAKE) --no-print-directory -j$(words $(CI_TESTBEDS)) -Oline $(CI_TESTBEDS)
e2e: venv testbed-ci kubenode ## CI's QEMU suite: boot baked images and run the testinfra checks over SSH, without the tests marked `full` (ARCH=amd64 is faster; FLAVOR=testbed-raspios for the Pi OS twin)
	CEIL_E2E_ARCH=$(ARCH) CEIL_E2E_FLAVOR=$(FLAVOR) $(PY) -m pytest -m "e2e and not full" --durations=15 tests/e2e tests/infra
e2e-full: venv testbed test-apiserver kubenode ## More than CI runs: every QEMU test (power cuts, reboots, boot slots, broken image, k3s upgrade) with the cluster on each test-bed flavor (ARCH=arm64 default)
	CEIL_E2E_ARCH=$(ARCH) CEIL_E2E_FLAVOR=testbed-ubuntu $(PY) -m pytest -m e2e --durations=15 tests/e2e tests/infra
	CEIL_E2E_ARCH=$(ARCH) CEIL_E2E_FLAVOR=testbed-raspios $(PY) -m pytest -m e2e --durations=15 tests/e2e tests/infra
app: venv ## Build, push and deploy your app through the router's registry (APP=apps/piphp, the demo; see docs/apps.md)
	$(PY) bake.py app --config $(CONFIG) ship $(or $(APP),apps/piphp)
verify: venv ## Run the testinfra checks against the real cluster described by CONFIG (default cluster.yaml; VIA=the router's address where only its SSH answers: the SSH checks, not the Kubernetes API's)
	$(PY) -m pytest tests/infra --cluster-config $(CONFIG) $(if $(VIA),--router-host $(VIA)) -p no:cacheprovider
bench: venv ## Benchmarks: bake vs cp --sparse, flash vs full write
	$(PY) bench/bake.py
	$(PY) bench/flash.py
piwatch-dev: venv ## Run PiWatch on this machine with mock GPIO pins (http://127.0.0.1:8080)
	PIWATCH_MOCK_PINS=1 $(PY) -m piwatch
piwatch-test: venv ## PiWatch unit, API and browser tests
	$(PY) -m pytest tests/piwatch
status: venv ## First-boot progress of every machine, collected by the router
	$(PY) bake.py status --config $(CONFIG)
kubeconfig: venv ## Write the admin kubeconfig signed by the baked client CA
	$(PY) bake.py kubeconfig --config $(CONFIG)
k8s-proxy: venv ## The Kubernetes API on https://127.0.0.1:6443 through an SSH tunnel via the router (VIA=its address); kubeconfig: out/kubeconfig-tunnel next to CONFIG
	$(PY) bake.py kubeconfig --config $(CONFIG) --tunnel-port 6443
	$(PY) bake.py k8s-proxy --config $(CONFIG) --port 6443 $(if $(VIA),--via $(VIA))
vpn-client-%: venv ## WireGuard client config for NAME, e.g. make vpn-client-laptop
	$(PY) bake.py vpn-client $* --config $(CONFIG)
# With VIA (only the router's SSH answers), the tunnel's kubeconfig: `make k8s-proxy VIA=...` in
# another shell holds the tunnel open.
# `bake.py kubeconfig` writes it into out/ next to the config, wherever CONFIG is.
KUBECONFIG_DIR = $(dir $(CONFIG))out
KUBECTL ?= kubectl --kubeconfig $(if $(VIA),$(KUBECONFIG_DIR)/kubeconfig-tunnel,$(KUBECONFIG_DIR)/kubeconfig)
# A URL in the browser: `open` on macOS (on Linux `open` is openvt), xdg-open elsewhere; printed if
# neither can (no desktop session).
BROWSE = sh -c 'if [ "$$(uname)" = Darwin ]; then open "$$1"; else xdg-open "$$1" 2>/dev/null || echo "open $$1 in a browser"; fi' browse
# Every add-on of the catalog (addons/<name>/addon.yaml), so a new one gets its targets without an edit here.
ADDONS := $(patsubst addons/%/addon.yaml,%,$(wildcard addons/*/addon.yaml))
addons-list: venv ## Every add-on and whether this cluster gets it
	$(PY) bake.py addons --config $(CONFIG) list
addons-render: venv ## Render and validate the add-on manifests offline
	$(PY) bake.py addons --config $(CONFIG) render --check
$(addsuffix -deploy,$(ADDONS)): %-deploy: venv
	$(PY) bake.py addons --config $(CONFIG) apply $*
$(addsuffix -delete,$(ADDONS)): %-delete: venv
	$(PY) bake.py addons --config $(CONFIG) delete $*
all-deploy: venv ## Apply every enabled add-on
	$(PY) bake.py addons --config $(CONFIG) apply --all
all-delete: venv ## Delete every add-on
	$(PY) bake.py addons --config $(CONFIG) delete --all
k8s-remove: venv ## Take k3s off every node: datastore, pods, state (keeps what the cards were baked with)
	$(PY) bake.py k3s reset --config $(CONFIG) --remove $(if $(VIA),--via $(VIA))
k8s-reset: venv ## Delete the cluster and let the nodes form it afresh (same CA and token: the kubeconfig still works)
	$(PY) bake.py k3s reset --config $(CONFIG) $(if $(VIA),--via $(VIA))
k3s-upgrade: venv ## Bring every node's k3s to kubernetes.k3s_version, one at a time (release files in ~/.cache/ceil/k3s/<version>/)
	$(PY) bake.py k3s upgrade --config $(CONFIG) $(if $(VIA),--via $(VIA))
datastore-backup: venv ## Copy the only server's k3s datastore into secrets/backups/ (restore: python bake.py datastore restore FILE)
	$(PY) bake.py datastore backup --config $(CONFIG) $(if $(VIA),--via $(VIA))

datastore-from-router: venv ## Fetch the newest datastore snapshot the router pulled (the server's card may be dead)
	$(PY) bake.py datastore backup --from-router --config $(CONFIG) $(if $(VIA),--via $(VIA))
teardown: all-delete k8s-remove ## The seed's teardown: every add-on deleted, then k3s removed
uptime: venv ## uptime of every machine, each answer labelled (bake.py run; VIA= as for <name>-ssh)
	$(PY) bake.py run --config $(CONFIG) $(if $(VIA),--via $(VIA)) uptime
# The kubelet's mounts go too: each Longhorn volume is mounted twice under /var/lib/kubelet (the CSI
# staging path and the pod's), and its bytes are on the drive df already lists.
df: venv ## Disk use of every machine's file systems (root, boot and USB drives; not k3s's tmpfs, overlay and volume mounts)
	$(PY) bake.py run --config $(CONFIG) $(if $(VIA),--via $(VIA)) -- sh -c 'df -h -x tmpfs -x devtmpfs -x overlay -x squashfs | grep -v " /var/lib/kubelet/"'
check-ip: venv ## Which address each machine got (the seed's router-check-ip / k8s-check-ip)
	$(PY) bake.py run --config $(CONFIG) $(if $(VIA),--via $(VIA)) -- ip -4 -brief address
router-check-ip: venv ## The router's addresses (uplink, LAN, VPN)
	$(PY) bake.py run --config $(CONFIG) $(if $(VIA),--via $(VIA)) --on router -- ip -4 -brief address
k8s-check-ip: venv ## Which address each node got
	$(PY) bake.py run --config $(CONFIG) $(if $(VIA),--via $(VIA)) --nodes -- ip -4 -brief address
router-reboot: venv ## Reboot the router and wait until it is back (a new boot id)
	$(PY) bake.py reboot --config $(CONFIG) $(if $(VIA),--via $(VIA)) --on router
reboot-all: venv ## Reboot every machine, the nodes first, then the router, each confirmed back
	$(PY) bake.py reboot --config $(CONFIG) $(if $(VIA),--via $(VIA))
httpd-open: ## Open the demo httpd (the seed's first app)
	$(BROWSE) http://httpd.$(DOMAIN)/
prometheus-open: ui-password ## Print the UI login and open Prometheus
	$(BROWSE) https://prometheus.$(DOMAIN)/
logs: venv ## Follow the logs of many pods (Q=a label selector, e.g. app.kubernetes.io/name=podinfo; with stern also a name pattern; NS=namespace)
	$(PY) bake.py logs --config $(CONFIG) $(if $(NS),-n $(NS)) $(if $(Q),'$(Q)')
nodes-show: $(if $(VIA),,kubeconfig) ## kubectl get nodes (with the baked admin kubeconfig; VIA=: through make k8s-proxy's tunnel)
	$(KUBECTL) get nodes -o wide
pods-show: $(if $(VIA),,kubeconfig) ## kubectl get pods in every namespace
	$(KUBECTL) get pods -A -o wide
dashboard-token: venv ## Print a Kubernetes Dashboard login token
	$(PY) bake.py addons --config $(CONFIG) dashboard-token
grafana-open: venv ## Print Grafana's admin password and open Grafana
	$(PY) bake.py addons --config $(CONFIG) grafana-password
	$(BROWSE) https://grafana.$(DOMAIN)/
ui-password: venv ## Print the add-on UI login's password (user admin: Longhorn, Prometheus, Traefik dashboard)
	$(PY) bake.py addons --config $(CONFIG) ui-password
traefik-open: ui-password ## Print the UI login and open the Traefik dashboard
	$(BROWSE) https://traefik.$(DOMAIN)/dashboard/
dashboard-open: ## Open the Kubernetes Dashboard
	$(BROWSE) https://dashboard.$(DOMAIN)/
clean: ## Remove baked images (keeps secrets/ and the download cache)
	rm -rf $(OUT)
