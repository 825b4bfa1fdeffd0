"""Sentry DSNs: `{scheme}://{public_key}[:{secret}]@{host}[:{port}]{/path_prefix}/{project_id}`.

`InvalidDsn` messages never quote the DSN: it may carry a secret key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from relay.protocol.url import InvalidUrl, ascii_host


class InvalidDsn(ValueError):
    """The string is not a DSN."""


@dataclass(frozen=True)
class Dsn:
    scheme: str
    public_key: str
    secret_key: str | None = field(repr=False)  # kept out of logs and tracebacks
    host: str
    port: int | None
    path_prefix: str
    project_id: str

    @classmethod
    def parse(cls, text: str) -> Dsn:
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:
            # urlsplit's messages quote parts of the URL, the secret key among them.
            raise InvalidDsn("not a valid DSN: invalid host or port") from None
        if parts.scheme not in ("http", "https"):
            raise InvalidDsn("not a valid DSN: scheme must be http or https")
        if not parts.username:
            raise InvalidDsn(
                "not a valid DSN: missing public key (https://<key>@host/<project_id>)"
            )
        if not parts.hostname:
            raise InvalidDsn("not a valid DSN: missing host")
        try:
            ascii_host(parts.hostname)
        except InvalidUrl as exc:
            raise InvalidDsn(f"not a valid DSN: {exc}") from None
        path = parts.path.rstrip("/")
        prefix, _, project_id = path.rpartition("/")
        if not project_id.isdigit():
            raise InvalidDsn("not a valid DSN: the path must end with a numeric project id")
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return cls(
            scheme=parts.scheme,
            public_key=parts.username,
            secret_key=parts.password or None,
            host=host,
            port=port,
            path_prefix=prefix,
            project_id=project_id,
        )

    @property
    def origin(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}"

    def api_url(self, endpoint: str = "envelope") -> str:
        """The ingest URL for `endpoint` (envelope, store, security, minidump)."""
        return f"{self.origin}{self.path_prefix}/api/{self.project_id}/{endpoint}/"

    def __str__(self) -> str:
        secret = f":{self.secret_key}" if self.secret_key else ""
        return self._with_userinfo(f"{self.public_key}{secret}")

    def redacted(self) -> str:
        """For logs: the key is shortened, a secret is never shown."""
        return self._with_userinfo(f"{self.public_key[:6]}…")

    def masked(self) -> str:
        """For a config's `repr`: `https://***@host/42`, neither key shown."""
        return self._with_userinfo("***")

    def _with_userinfo(self, userinfo: str) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{userinfo}@{self.host}{port}{self.path_prefix}/{self.project_id}"
