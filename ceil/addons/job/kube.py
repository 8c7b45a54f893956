"""The few Kubernetes API calls the add-on job makes, with retries.

The `kubernetes` client loads the kubeconfig and builds the TLS connection pool (CA, client
certificate or bearer token); requests go through that pool directly because the client's
own body handling for `application/apply-patch+yaml` differs between releases (22.x, the
Debian/Ubuntu package, sends only pre-serialised strings; 33.x JSON-encodes whatever it is
given). Only the standard library and the `kubernetes` package are imported: this file is
shipped to the k3s server as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlencode

FIELD_MANAGER = "ceil"
APPLY_PATCH = "application/apply-patch+yaml"
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class ApiError(Exception):
    def __init__(self, message: str, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class NotServed(ApiError):
    """The API group/version or kind is not (yet) served: its CRD is missing or not established."""


class Transport(Protocol):
    def request(self, method: str, path: str, query: dict | None = None,
                body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]: ...


class KubeconfigTransport:
    """HTTP(S) to the API server named in a kubeconfig, through the kubernetes client's pool."""

    def __init__(self, kubeconfig: str, timeout: float = 30.0, connect_timeout: float | None = None,
                 retry_unanswered: bool = True):
        """`connect_timeout` (default `timeout`): how long the first TCP connection may wait for
        the server's address to answer at all. `retry_unanswered`: whether such a wait running
        out is worth a retry (the server job's, where the API comes up in its time) or not (a
        person at the workstation, where it means the cluster LAN is not reachable from here: no
        VPN, no route).

        The short wait is a TCP probe of its own, made once: urllib3 also counts the TLS
        handshake against its connect timeout (and reports it as a read timeout), and a busy
        API server (a Pi 3, or one rebooting its k3s during an upgrade) takes seconds to
        answer a handshake it has accepted. Requests then get `timeout` for everything."""
        import urllib3
        from kubernetes import client, config
        from kubernetes.client import rest

        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg, persist_config=False)
        self.host = cfg.host.rstrip("/")
        self.pool = rest.RESTClientObject(cfg).pool_manager
        self.headers = {"Accept": "application/json", "User-Agent": "ceil-addons"}
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                self.headers[setting["key"]] = setting["value"]
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self.probe_timeout = connect_timeout if connect_timeout and connect_timeout < timeout else None
        self.retry_unanswered = retry_unanswered

    def _probe(self, method: str, path: str) -> None:
        """Until the address has answered once: a TCP connection within `probe_timeout`."""
        import socket
        from urllib.parse import urlsplit

        url = urlsplit(self.host)
        address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
        try:
            socket.create_connection(address, timeout=self.probe_timeout).close()
        except socket.timeout:
            # Silence, not a refusal: packets dropped on the way (a VPN that is down, no route).
            raise self._unreachable(method, path, f"no answer within {self.probe_timeout:g} s",
                                    transient=self.retry_unanswered) from None
        except OSError as e:
            # Refused, unreachable, a name that does not resolve: the API may be restarting.
            raise self._unreachable(method, path, str(e.strerror or e)) from None
        self.probe_timeout = None

    def _unreachable(self, method: str, path: str, why: str, transient: bool = True) -> ApiError:
        return ApiError(f"{method} {self.host}{path}: cannot reach the API server: {why}", transient=transient)

    def request(self, method, path, query=None, body=None, content_type=None):
        import urllib3

        if self.probe_timeout:
            self._probe(method, path)
        url = self.host + path + ("?" + urlencode(query) if query else "")
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        try:
            r = self.pool.request(method, url, body=body, headers=headers,
                                  timeout=self.timeout, retries=False)
        except urllib3.exceptions.SSLError as e:
            # Not worth a retry: something answers, but not with the certificate this kubeconfig
            # trusts (another cluster at that address, or a kubeconfig from an older set of keys).
            raise ApiError(f"{method} {self.host}{path}: the server's TLS certificate is not the one this"
                           f" kubeconfig trusts ({e.__class__.__name__}: {_reason(e)})") from None
        except urllib3.exceptions.NewConnectionError as e:
            # Refused, unreachable, a name that does not resolve (urllib3 files these under
            # ConnectTimeoutError too): the API may be restarting; worth the retries.
            raise self._unreachable(method, path, _reason(e)) from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise self._unreachable(method, path, f"no answer within {self.timeout.connect_timeout:g} s") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(method, path, _reason(e)) from None
        return r.status, r.data


def _reason(e: Exception) -> str:
    """The innermost cause urllib3 wraps (a refused connection, a timeout), in one line."""
    inner = getattr(e, "reason", None) or e
    return str(getattr(inner, "reason", None) or inner).splitlines()[0][:300]


@dataclass
class Backoff:
    """Exponential backoff for transient failures: 1, 2, 4 ... capped, `attempts` tries in all."""

    attempts: int = 8
    first: float = 1.0
    cap: float = 30.0
    sleep: Callable[[float], None] = field(default=lambda seconds: time.sleep(seconds))

    def delays(self):
        delay = self.first
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.cap)


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool


class KubeApi:
    def __init__(self, transport: Transport, backoff: Backoff | None = None,
                 field_manager: str = FIELD_MANAGER, log: Callable[[str], None] = print):
        self.transport = transport
        self.backoff = backoff or Backoff()
        self.field_manager = field_manager
        self.log = log
        self._discovery: dict[str, dict[str, Resource]] = {}

    # ---- transport with retries --------------------------------------------------------

    def call(self, method: str, path: str, *, query: dict | None = None, body: bytes | None = None,
             content_type: str | None = None) -> dict | None:
        """The decoded JSON answer; None for 404. Retries connection errors, 429 and 5xx."""
        delays = self.backoff.delays()
        while True:
            try:
                status, data = self.transport.request(method, path, query, body, content_type)
                if status == 404:
                    return None
                if status < 400:
                    return json.loads(data) if data else {}
                raise ApiError(f"{method} {path}: HTTP {status}: {_status_message(data)}",
                               status, transient=status in TRANSIENT_STATUS)
            except ApiError as e:
                delay = next(delays, None) if e.transient else None
                if delay is None:
                    raise
                self.log(f"retrying in {delay:g}s: {e}")
                self.backoff.sleep(delay)

    # ---- discovery ---------------------------------------------------------------------

    def resource(self, api_version: str, kind: str) -> Resource:
        kinds = self._discovery.get(api_version)
        if kinds is None or kind not in kinds:
            kinds = self._discover(api_version)  # a CRD may have appeared since the last look
        if kind not in kinds:
            raise NotServed(f"{kind} ({api_version}) is not served by the API server (CRD missing?)")
        return kinds[kind]

    def _discover(self, api_version: str) -> dict[str, Resource]:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        answer = self.call("GET", path)
        if answer is None:
            raise NotServed(f"API {api_version} is not served by the API server (CRD missing?)")
        kinds = {
            r["kind"]: Resource(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
            for r in answer.get("resources", [])
            if "/" not in r["name"]  # skip subresources such as deployments/status
        }
        self._discovery[api_version] = kinds
        return kinds

    def path(self, api_version: str, kind: str, name: str | None = None,
             namespace: str | None = None) -> str:
        res = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if res.namespaced:
            base += f"/namespaces/{quote(namespace or 'default')}"
        base += f"/{res.plural}"
        return f"{base}/{quote(name)}" if name else base

    # ---- verbs -------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        return self.call("GET", self.path(api_version, kind, name, namespace))

    def apply(self, obj: dict[str, Any]) -> dict:
        """Server-side apply: this manager owns the fields it sets; `force` takes them over
        from whoever set them before (kubectl, an earlier ceil), so re-runs converge."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        # JSON is YAML, so the body is sent as JSON text under the apply-patch+yaml type.
        body = json.dumps(obj).encode()
        query = {"fieldManager": self.field_manager, "force": "true"}
        answer = self.call("PATCH", path, query=query, body=body, content_type=APPLY_PATCH)
        if answer is None:
            raise ApiError(f"apply {obj['kind']}/{meta['name']}: 404 (namespace missing?)", 404)
        return answer

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             field_selector: str | None = None) -> list[dict]:
        """Objects of `kind` in `namespace`, or in every namespace when None (not "default": a
        drain that listed only "default" left every other namespace's pods on the node)."""
        query = {"fieldSelector": field_selector} if field_selector else None
        path = self.path(api_version, kind, None, namespace)
        if namespace is None and self.resource(api_version, kind).namespaced:
            path = path.replace("/namespaces/default/", "/", 1)
        answer = self.call("GET", path, query=query)
        return (answer or {}).get("items", [])

    def merge_patch(self, api_version: str, kind: str, name: str, patch: dict, namespace: str | None = None) -> dict | None:
        return self.call("PATCH", self.path(api_version, kind, name, namespace),
                         body=json.dumps(patch).encode(), content_type="application/merge-patch+json")

    def evict(self, namespace: str, pod: str) -> bool:
        """The Eviction API (respects PodDisruptionBudgets); False when the pod is already gone."""
        body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                           "metadata": {"name": pod, "namespace": namespace}}).encode()
        path = self.path("v1", "Pod", pod, namespace) + "/eviction"
        return self.call("POST", path, body=body, content_type="application/json") is not None

    def delete_named(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.delete({"apiVersion": api_version, "kind": kind,
                            "metadata": {"name": name, **({"namespace": namespace} if namespace else {})}})

    def request_token(self, namespace: str, service_account: str, seconds: int) -> dict:
        """A TokenRequest for the service account: the token and when it expires (`status`)."""
        path = self.path("v1", "ServiceAccount", service_account, namespace) + "/token"
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": seconds}}).encode()
        answer = self.call("POST", path, body=body, content_type="application/json")
        if answer is None:
            raise ApiError(f"service account {namespace}/{service_account} not found", 404)
        return answer["status"]

    def delete(self, obj: dict[str, Any]) -> bool:
        """True if something was deleted; False if it was already gone."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1",
                           "propagationPolicy": "Background"}).encode()
        return self.call("DELETE", path, body=body, content_type="application/json") is not None


def _status_message(data: bytes) -> str:
    try:
        return json.loads(data).get("message") or data.decode(errors="replace")[:300]
    except (ValueError, AttributeError):
        return data.decode(errors="replace")[:300]
