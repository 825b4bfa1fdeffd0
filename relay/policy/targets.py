"""Where a project's envelopes go: resolved from config only, never from the request.

- `projects[].upstream_dsn`: that DSN's host, project id and key.
- otherwise `upstream.url` (http/https): the app's own project id and key on that host.
- `file://DIR`: envelopes are written to DIR (the embedded default).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.protocol.dsn import Dsn

CLIENT_NAME = "sentry-relay-proxy/0.1"


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream destination for envelopes."""

    #: `https://host/api/<id>/envelope/`, or a directory for file targets.
    url: str
    #: The DSN the upstream knows (written into the envelope `dsn` header); None for files.
    dsn: Dsn | None
    #: Cache key for upstream rate limits (the upstream public key).
    key: str
    is_file: bool = False

    def url_for(self, endpoint: str) -> str:
        """The upstream URL of another endpoint (`minidump`) of the same project."""
        if self.dsn is None:
            return self.url
        return self.dsn.api_url(endpoint)

    def auth_header(self, client: str = "") -> str:
        """`X-Sentry-Auth` for this target, naming `client` (the SDK's `sentry_client`, as
        Sentry's Relay forwards it) where it is one a header can carry, else the relay."""
        assert self.dsn is not None
        return _auth_header(self.dsn.public_key, self.dsn.secret_key, client)


#: A `sentry_client` forwarded as it came: printable ASCII, no separator of the header.
_CLIENT = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,200}")


@functools.lru_cache(maxsize=4096)
def _auth_header(public_key: str, secret_key: str | None, client: str = "") -> str:
    if not _CLIENT.fullmatch(client):
        client = CLIENT_NAME
    parts = [f"Sentry sentry_key={public_key}", "sentry_version=7", f"sentry_client={client}"]
    if secret_key:
        parts.append(f"sentry_secret={secret_key}")
    return ", ".join(parts)


def resolve_target(
    upstream_url: str, upstream_dsn: str | None, project_id: int, public_key: str
) -> Target:
    """Target for one project and app key."""
    if upstream_dsn:
        dsn = Dsn.parse(upstream_dsn)
        return Target(url=dsn.api_url("envelope"), dsn=dsn, key=f"{dsn.origin}|{dsn.public_key}")
    if upstream_url.startswith("file://"):
        path = upstream_url[len("file://") :] or "."
        return Target(url=path, dsn=None, key=f"file|{project_id}", is_file=True)
    parts = urlsplit(upstream_url)
    prefix = parts.path.rstrip("/")
    dsn = Dsn(
        scheme=parts.scheme,
        public_key=public_key,
        secret_key=None,
        host=parts.hostname or "",
        port=parts.port,
        path_prefix=prefix,
        project_id=str(project_id),
    )
    return Target(url=dsn.api_url("envelope"), dsn=dsn, key=f"{dsn.origin}|{public_key}")
