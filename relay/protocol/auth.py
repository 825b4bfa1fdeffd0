"""Who is sending: the Sentry public key (and client, version) of an ingest request.

Sources, in the order Sentry reads them:

1. `X-Sentry-Auth: Sentry sentry_key=<key>, sentry_version=7, sentry_client=<sdk>`
2. `Authorization: Sentry ...` (same syntax), or `Authorization: Basic base64(<key>:)`;
   other schemes (`Bearer`, ...) are not Sentry auth and are ignored
3. the query string: `?sentry_key=<key>&sentry_version=7&sentry_client=<sdk>`
4. only where the caller allows it (envelope endpoint, tunnel mode): the `dsn`
   in the envelope header

Sentry only takes a header as auth when its value starts with `Sentry `
(case-insensitive); a header without that prefix counts as absent. Field names
may omit the `sentry_` prefix and values may be double-quoted.

    AuthError(ValueError)   .status: 401 missing, invalid, malformed or conflicting (as
                            Sentry answers them); 400 an envelope `dsn` that is not a DSN
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from relay.protocol.dsn import Dsn, InvalidDsn

__all__ = [
    "Auth",
    "AuthError",
    "dsn_project_id",
    "extract_auth",
    "is_valid_public_key",
    "parse_auth_header",
]

#: Sentry keys are 32 hex digits; GlitchTip and Bugsink use the same shape, some
#: self-hosted setups use UUIDs with dashes. Anything else is not a key.
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_VERSION_RE = re.compile(r"[0-9]{1,5}")
_SENTRY_PREFIX = "sentry "


class AuthError(ValueError):
    """Authentication is missing, malformed or contradictory; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Auth:
    """The authentication of one request. `source`: header | authorization | query | envelope."""

    public_key: str
    version: str | None
    client: str | None
    secret_key: str | None
    source: str


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _normalize_name(name: str) -> str:
    name = name.strip().lower()
    return name if name.startswith("sentry_") else f"sentry_{name}"


def parse_auth_header(value: str) -> dict[str, str]:
    """Fields of a `Sentry k=v, k=v` header value, keyed with the `sentry_` prefix.

    The `Sentry` scheme is case-insensitive and required: AuthError(401) without it. A
    field without `=` or without a name is skipped, as Sentry skips it.
    """
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if scheme.lower() != "sentry":
        raise AuthError(401, "bad x-sentry-auth header: not Sentry authentication")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        name, eq, raw = part.partition("=")
        if eq and name.strip():
            fields[_normalize_name(name)] = _unquote(raw)
    return fields


def is_valid_public_key(key: str) -> bool:
    return _KEY_RE.fullmatch(key) is not None


def _from_fields(fields: Mapping[str, str], source: str) -> Auth:
    key = fields.get("sentry_key", "").strip()
    if not key:
        raise AuthError(401, "missing authorization information: no sentry_key")
    if not is_valid_public_key(key):
        raise AuthError(401, "invalid sentry_key")
    version = fields.get("sentry_version")
    if version is not None:
        # Sentry reads the version up to its first dot (`2.0` is 2).
        version = version.strip().partition(".")[0]
        if not _VERSION_RE.fullmatch(version):
            raise AuthError(401, "bad x-sentry-auth header: invalid sentry_version")
    client = fields.get("sentry_client")
    secret = fields.get("sentry_secret")
    return Auth(
        public_key=key,
        version=version,
        client=client.strip() or None if client is not None else None,
        secret_key=secret.strip() or None if secret is not None else None,
        source=source,
    )


@functools.lru_cache(maxsize=1024)
def _sentry_auth(value: str, source: str) -> Auth:
    """A `Sentry k=v, ...` header value as `Auth`. An SDK sends the same value with every
    request, so answers are memoized (errors are not: they raise every time)."""
    return _from_fields(parse_auth_header(value), source)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        # A plain dict is case-sensitive; request headers (a CIMultiDict) are not.
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                found: str = val
                return found
    return value


def _is_sentry_scheme(value: str) -> bool:
    return value[: len(_SENTRY_PREFIX)].lower() == _SENTRY_PREFIX


def _basic_auth(value: str) -> Auth | None:
    """`Authorization: Basic base64(<key>:<anything>)`, which Sentry also accepts."""
    if value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text, not UTF-8 bytes
        return None
    key, colon, _ = decoded.partition(":")
    if not colon:
        return None
    return _from_fields({"sentry_key": key}, "authorization")


def dsn_project_id(envelope_dsn: str | None) -> str | None:
    """The project id of an envelope header `dsn`, or None when absent or not a DSN."""
    if not envelope_dsn:
        return None
    try:
        return Dsn.parse(envelope_dsn).project_id
    except InvalidDsn:
        return None


def extract_auth(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    envelope_dsn: str | None = None,
    *,
    allow_envelope: bool = False,
) -> Auth:
    """The request's authentication, from the first source present (see module docstring).

    `headers` and `query` are the request's (header names case-insensitive);
    `envelope_dsn` is the envelope header `dsn`, consulted only with
    `allow_envelope`. Sources that name different keys: AuthError(401,
    "conflicting authentication"); none: AuthError(401, "missing authorization
    information"); a key that is not a key: AuthError(401, "invalid sentry_key").
    """
    found: list[Auth] = []

    x_sentry = _header(headers, "X-Sentry-Auth")
    if x_sentry is not None and _is_sentry_scheme(x_sentry.lstrip()):
        found.append(_sentry_auth(x_sentry, "header"))

    authorization = _header(headers, "Authorization")
    if authorization is not None:
        stripped = authorization.strip()
        if _is_sentry_scheme(stripped):
            found.append(_sentry_auth(stripped, "authorization"))
        else:
            basic = _basic_auth(stripped)
            if basic is not None:
                found.append(basic)

    if "sentry_key" in query:
        found.append(
            _from_fields(
                {
                    name: query[name]
                    for name in ("sentry_key", "sentry_version", "sentry_client", "sentry_secret")
                    if name in query
                },
                "query",
            )
        )

    if allow_envelope and envelope_dsn:
        try:
            dsn = Dsn.parse(envelope_dsn)
        except InvalidDsn as exc:
            raise AuthError(400, f"invalid dsn in envelope header: {exc}") from None
        found.append(
            _from_fields(
                {"sentry_key": dsn.public_key, "sentry_secret": dsn.secret_key or ""}, "envelope"
            )
        )

    if not found:
        raise AuthError(401, "missing authorization information")
    first = found[0]
    for other in found[1:]:
        if other.public_key != first.public_key:
            raise AuthError(401, "conflicting authentication")
    if first.version is None or first.client is None:
        # The SDK version and client may come from a later source (e.g. the query).
        version = first.version or next((a.version for a in found if a.version), None)
        client = first.client or next((a.client for a in found if a.client), None)
        first = Auth(first.public_key, version, client, first.secret_key, first.source)
    return first
