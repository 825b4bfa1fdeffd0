"""`multipart/form-data` bodies (minidump uploads): split into parts and join again.

Only what the relay must look at is parsed: each part's headers and its form
field name. Part bodies are kept as bytes, and a body that cannot be parsed is
refused rather than forwarded unread, as is one of more than `MAX_PARTS` parts or
with a part's headers over `MAX_PART_HEADER_BYTES` (work and memory per part do not
grow with what a tiny compressed body can unfold into).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOUNDARY_RE = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
#: The `name` parameter of a Content-Disposition (not the `name` inside `filename=`).
_NAME_RE = re.compile(rb'(?:^|;)[ \t]*name="([^"]*)"', re.IGNORECASE)
_FILENAME_RE = re.compile(rb"(?:^|;)[ \t]*filename\*?=", re.IGNORECASE)
#: The characters of a boundary (RFC 2046 `bchars`); it does not end with a space.
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")


#: Parts one body may hold (each is an object, scrubbed on its own).
MAX_PARTS = 10_000
#: Bytes of one part's headers (a Content-Disposition, a Content-Type: a few hundred).
MAX_PART_HEADER_BYTES = 16 * 1024
_DISPOSITION = b"content-disposition:"


class MultipartError(ValueError):
    """Not a multipart body the relay can read."""


@dataclass
class Part:
    headers: bytes
    body: bytes

    def _disposition(self) -> bytes | None:
        """The Content-Disposition's parameters (after `form-data`), or None: of the first
        header line that starts with it (found without splitting the headers into lines)."""
        headers = self.headers
        lowered = headers.lower()
        if lowered.startswith(_DISPOSITION):
            start = 0
        else:
            found = lowered.find(b"\r\n" + _DISPOSITION)
            if found < 0:
                return None
            start = found + 2
        end = headers.find(b"\r\n", start)
        line = headers[start:] if end < 0 else headers[start:end]
        _, _, params = line.partition(b";")
        return b";" + params

    @property
    def name(self) -> str | None:
        params = self._disposition()
        m = _NAME_RE.search(params) if params is not None else None
        return m.group(1).decode("utf-8", "replace") if m else None

    @property
    def filename(self) -> bool:
        """Whether the part is a file (`filename=`, or RFC 5987's `filename*=`)."""
        params = self._disposition()
        return params is not None and _FILENAME_RE.search(params) is not None


def boundary_of(content_type: str | None) -> str:
    if not content_type or not content_type.lower().startswith("multipart/"):
        raise MultipartError("expected a multipart/form-data body")
    m = _BOUNDARY_RE.search(content_type)
    if not m:
        raise MultipartError("the multipart Content-Type has no boundary")
    boundary = m.group(1) or m.group(2)
    if len(boundary) > 200 or not _BCHARS.fullmatch(boundary):
        raise MultipartError("invalid multipart boundary")
    return boundary


def split(body: bytes, boundary: str) -> list[Part]:
    delimiter = b"--" + boundary.encode("latin-1")
    if body.count(delimiter) > MAX_PARTS + 1:  # counted before anything is built
        raise MultipartError(f"more than {MAX_PARTS} parts")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise MultipartError("the multipart body is truncated or malformed")
    parts = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise MultipartError("malformed multipart part")
        end = chunk.find(b"\r\n\r\n", 2, len(chunk) - 2)
        if end < 0:
            raise MultipartError("a multipart part has no header end")
        if end - 2 > MAX_PART_HEADER_BYTES:
            raise MultipartError(
                f"a multipart part's headers are over {MAX_PART_HEADER_BYTES} bytes"
            )
        parts.append(Part(chunk[2:end], chunk[end + 4 : -2]))
    return parts


def join(parts: list[Part], boundary: str) -> bytes:
    delimiter = b"--" + boundary.encode("latin-1")
    out = [delimiter + b"\r\n" + p.headers + b"\r\n\r\n" + p.body + b"\r\n" for p in parts]
    return b"".join(out) + delimiter + b"--\r\n"
