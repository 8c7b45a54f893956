"""Kubernetes add-ons: the catalog under addons/, rendering from cluster.yaml, the post-join
job (`job/`, also shipped to the k3s server) and the workstation commands."""
