"""Event attachments uploaded as a form, as an envelope.

`POST /api/{project_id}/events/{event_id}/attachments/` is how some native SDKs and
crash reporters send files for an event already sent (Sentry's legacy attachment
upload): a `multipart/form-data` body whose file parts are the attachments. Each file
part becomes an `attachment` item (its filename and content type kept, attachment type
`event.attachment`, as Sentry files them) in an envelope with the event's id, so that it
goes through the pipeline as an SDK's attachment does. Plain form fields carry nothing
Sentry keeps beside a stand-alone attachment, and are not forwarded.

    MultipartError(ValueError)   not a form, no file in it, or too many (answer 400)
"""

from __future__ import annotations

import re
import urllib.parse

from relay.protocol.envelope import Envelope, make_envelope
from relay.protocol.multipart import MultipartError, Part, boundary_of, split

__all__ = ["attachments_envelope"]

_DISPOSITION = re.compile(rb"^content-disposition:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
#: `filename="..."` or `filename=token`, and RFC 5987's `filename*=charset'lang'encoded`.
_FILENAME = re.compile(rb'(?:^|;)[ \t]*filename[ \t]*=[ \t]*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_FILENAME_EXT = re.compile(rb"(?:^|;)[ \t]*filename\*[ \t]*=[ \t]*([^';\s]*)'[^']*'([^;\s]*)", re.I)


def _filename(part: Part) -> str | None:
    """A file part's name (RFC 5987's form preferred), or None for a plain field."""
    found = _DISPOSITION.search(part.headers)
    if found is None:
        return None
    disposition = found.group(1)
    extended = _FILENAME_EXT.search(disposition)
    if extended is not None:
        charset = extended.group(1).decode("ascii", "replace") or "utf-8"
        try:
            return urllib.parse.unquote(
                extended.group(2).decode("ascii", "replace"), encoding=charset, errors="replace"
            )
        except LookupError:  # a charset Python does not know
            return urllib.parse.unquote(extended.group(2).decode("ascii", "replace"))
    plain = _FILENAME.search(disposition)
    if plain is None:
        return None
    raw = plain.group(1) if plain.group(1) is not None else plain.group(2)
    return raw.decode("utf-8", "replace")


def _content_type(part: Part) -> str:
    found = _CONTENT_TYPE.search(part.headers)
    value = found.group(1).strip().decode("latin-1") if found is not None else ""
    return value or "application/octet-stream"


def attachments_envelope(
    body: bytes, content_type: str | None, event_id: str, *, max_items: int
) -> Envelope:
    """An envelope for event `event_id` (32 hex digits) with one `attachment` item per
    file part of the form `body`. Raises MultipartError."""
    parts = split(body, boundary_of(content_type))
    items = []
    for part in parts:
        name = _filename(part)
        if name is None:
            continue
        headers = {
            "type": "attachment",
            "filename": name,
            "content_type": _content_type(part),
            "attachment_type": "event.attachment",
        }
        items.append((headers, part.body))
    if not items:
        raise MultipartError("the upload holds no file")
    if len(items) > max_items:
        raise MultipartError(f"more than {max_items} files in one upload")
    return make_envelope({"event_id": event_id}, items)
