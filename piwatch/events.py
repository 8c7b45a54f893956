"""The kubewatch webhook payload, and the event record PiWatch keeps for display.

kubewatch's webhook handler posts `{"eventmeta": {"kind", "name", "namespace", "reason"},
"text": ..., "time": ...}` (pkg/handlers/webhook in kubewatch). For ordinary resources the
reason is "created"/"updated"/"deleted"; for its special events kubewatch puts the condition in
`kind` (e.g. "NodeNotReady", "Backoff"), so reactions match on both fields.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field

# Generous limits: they only stop a misbehaving client from filling the history with megabytes.
_SHORT = 253  # the longest Kubernetes object name


class EventMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: str = Field(min_length=1, max_length=_SHORT, examples=["pod"])
    name: str = Field(default="", max_length=_SHORT, examples=["web-7d4b9c"])
    namespace: str = Field(default="", max_length=_SHORT, examples=["default"])
    reason: str = Field(default="", max_length=_SHORT, examples=["created"])


class KubewatchPayload(BaseModel):
    """What kubewatch's webhook handler sends; unknown extra keys are ignored for forward compat."""

    model_config = ConfigDict(extra="ignore")

    eventmeta: EventMeta
    text: str = Field(default="", max_length=4096)
    time: datetime | None = None


_ids = itertools.count(1)


@dataclass
class Event:
    kind: str
    reason: str
    namespace: str = ""
    name: str = ""
    text: str = ""
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    id: int = field(default_factory=lambda: next(_ids))
    # Filled in when the event is matched, so the page can say what the lights did.
    direction: str = ""
    colour: str = ""
    alarm: bool = False

    @classmethod
    def from_payload(cls, payload: KubewatchPayload) -> "Event":
        meta = payload.eventmeta
        when = payload.time or datetime.now(timezone.utc)
        return cls(kind=meta.kind, reason=meta.reason, namespace=meta.namespace,
                   name=meta.name, text=payload.text, time=when.isoformat())

    def as_dict(self) -> dict:
        return asdict(self)
