"""What the pipeline knows about the request an envelope came in with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: `{{auto}}` in an IP address field: "the address this was sent from", for Sentry to fill.
AUTO_IP = "{{auto}}"
#: Platforms whose events Sentry gives the sender's address when they name none.
INFER_IP_PLATFORMS = frozenset({"javascript", "cocoa", "objc"})


@dataclass(frozen=True, slots=True)
class RequestContext:
    project_id: int
    public_key: str
    #: The client's address (first X-Forwarded-For hop from a trusted proxy, else the peer).
    client_ip: str | None = None
    user_agent: str | None = None
    #: The SDK's name and version (`sentry_client` of its auth), forwarded upstream.
    sdk_client: str | None = None
    received_at: float = field(default_factory=time.time)
