"""What the ingest endpoints read of a request.

aiohttp's `web.Request` has all of it; so has the fast path's `LeanRequest`
(`relay.web.lean`), for the requests it answers without aiohttp's layers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping


class BodyStream(Protocol):
    """The request body as it arrives (aiohttp's `StreamReader` and `WholeBody`)."""

    def is_eof(self) -> bool: ...

    def read_nowait(self, n: int = -1) -> bytes: ...

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]: ...


class IngestRequest(Protocol):
    @property
    def app(self) -> web.Application: ...

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def query(self) -> MultiMapping[str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> BodyStream: ...
