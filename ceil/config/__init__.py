"""cluster.yaml: the one typed schema, checked at load.

Everything a bake needs is read from here; every error names the dotted key, the value found,
and what is expected (`nodes[2].name: 'Two_' is not a valid hostname ...`). Secrets are
`SecretStr` and may be written as `${ENV_VAR}` so cluster.yaml can be shared without them.

Layout:
  schema.py   the section models (SSH, WiFi, Router, Network, Node, ...) and their validators
  cluster.py  `Cluster`: the whole file, cross-section checks, derived facts for renderers
  loading.py  `${ENV}` resolution, YAML parsing, errors with dotted key and YAML line,
              `parse_cluster`, `load_cluster`, `config_hash`

Import from `ceil.config`, not from the modules: the names below are the package's interface.
"""

from ..errors import ConfigError
from .cluster import Cluster
from .loading import ENV_REF_RE, PATH_IN_MSG_RE, config_hash, load_cluster, parse_cluster
from .schema import (
    DDNS,
    DEFAULT_NODES,
    HOSTNAME_RE,
    IFACE_RE,
    SSH,
    VPN,
    Addons,
    AptMirror,
    Domain,
    Iface,
    Kubernetes,
    Label,
    Model,
    Network,
    Node,
    PiWatch,
    PublicKey,
    Registry,
    Router,
    Uplink,
    WiFi,
)

__all__ = [
    "DDNS",
    "DEFAULT_NODES",
    "ENV_REF_RE",
    "HOSTNAME_RE",
    "IFACE_RE",
    "PATH_IN_MSG_RE",
    "SSH",
    "VPN",
    "Addons",
    "AptMirror",
    "Cluster",
    "ConfigError",
    "Domain",
    "Iface",
    "Kubernetes",
    "Label",
    "Model",
    "Network",
    "Node",
    "PiWatch",
    "PublicKey",
    "Registry",
    "Router",
    "Uplink",
    "WiFi",
    "config_hash",
    "load_cluster",
    "parse_cluster",
]
