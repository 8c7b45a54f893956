"""The token kubewatch's webhook URL carries, derived from PiWatch's own token.

kubewatch logs the whole URL after every event it sends ("Message successfully sent to <url>",
robusta-dev/kubewatch pkg/handlers/webhook/webhook.go) and sets no header, so whatever token its
URL holds ends up in the pod's log. That token is therefore a narrower one: it lets its holder
post events (the webhook routes), never acknowledge an alarm or run the self-test. It is an HMAC
of the full token, so the workstation and the router derive the same one with nothing new to keep.

Plain standard library: ceil imports this on the workstation.
"""

from __future__ import annotations

import hashlib
import hmac

PURPOSE = b"ceil piwatch: kubewatch event ingest v1"


def ingest_token(token: str) -> str:
    return hmac.new(token.encode(), PURPOSE, hashlib.sha256).hexdigest()
