"""Queued envelopes follow the current config's routing, not the one they were queued under.

An envelope is routed when it is accepted (`route_to`: upstream URL, auth, the `dsn`
and `trace.public_key` headers). A spool keeps envelopes across restarts and a
SIGHUP may change `upstream` meanwhile: without this, a backlog would keep going to an
upstream that is no longer configured (and, during an outage there, hold every
forwarder). Before each delivery the forwarder asks `Retarget` for the entry's target
under the current config; when it changed, the envelope's routing headers are
rewritten for the new one.
"""

from __future__ import annotations

import logging
import zlib

from relay.policy.registry import Denied, RegistryRef
from relay.policy.targets import Target
from relay.protocol.envelope import Envelope, EnvelopeError, parse_envelope
from relay.services.ingest import route_to
from relay.services.outbox import OutboxEntry

log = logging.getLogger("relay.forwarder")


def reroute(envelope: Envelope, old: Target, new: Target, app_key: str) -> None:
    """Undo `route_to(envelope, old, app_key)` where it changed the trace key, then route
    to `new`. (A `dsn` header is set or removed by `route_to` itself.)"""
    trace = envelope.headers.get("trace")
    if (
        old.dsn is not None
        and isinstance(trace, dict)
        and trace.get("public_key") == old.dsn.public_key
    ):
        envelope.set_header("trace", {**trace, "public_key": app_key})
    route_to(envelope, new, app_key)


class Retarget:
    """`retarget(entry)`: point `entry` at its project's current upstream, in place.

    Entries without an app key (shadow copies) and entries whose project or key is no
    longer configured keep their target.
    """

    def __init__(self, registry: RegistryRef) -> None:
        self.registry = registry

    def __call__(self, entry: OutboxEntry) -> None:
        if not entry.app_key:
            return
        found = self.registry.current.resolve(entry.project_id, entry.app_key)
        if isinstance(found, Denied):
            return
        new = found.target(entry.app_key)
        old = entry.target
        if new is old or new == old:
            return
        body = entry.body
        if entry.encoding == "gzip":
            body = zlib.decompress(body, wbits=31)
        if entry.endpoint == "envelope":
            try:
                envelope = parse_envelope(body)
            except EnvelopeError:  # it was serialized by this relay: never expected
                log.error("queued envelope does not parse; sent to its original upstream")
                return
            reroute(envelope, old, new, entry.app_key)
            body = envelope.serialize()
        log.info(
            "queued envelope rerouted to the configured upstream",
            extra={"project": entry.project_id},
        )
        entry.body, entry.encoding, entry.target = body, "", new
