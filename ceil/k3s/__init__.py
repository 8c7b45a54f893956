"""Everything ceil knows about k3s, in one package.

- `pki`: the cluster CAs and the admin client certificate, made once on the workstation.
- `token`: join tokens (`K10<ca-hash>::<user>:<secret>`) and node passwords, as k3s computes them.
- `node_config`: what each node's k3s is told (`/etc/rancher/k3s/config.yaml` and its secrets).
- `kubeconfig`: `bake.py kubeconfig`, the admin kubeconfig signed by the baked client CA.
- `prep`, `install`, `cache`, `server`, `agent`: the hooks of the first-boot features
  `k3s-prep`, `k3s-install`, `k3s-cache`, `k3s-server` and `k3s-agent`.
"""
