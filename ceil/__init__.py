"""ceil: bake self-provisioning Raspberry Pi Kubernetes cluster images from one cluster.yaml."""

__version__ = "0.1.0"
