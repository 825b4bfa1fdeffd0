"""Message templating: replace the variable parts of a log message with placeholders.

`"user 123 failed"` and `"user 456 failed"` both become `"user <int> failed"`, so
upstreams that group messages by their literal text (GlitchTip, Bugsink) put them
in one issue. Placeholders follow Sentry's parameterization names:

    <quoted_str>  'bob', "bob" (a quote that starts and ends outside a word)
    <email>       alice@example.com
    <uuid>        123e4567-e89b-12d3-a456-426614174000 (with or without dashes)
    <date>        2024-05-01, 2024-05-01T12:30:00Z, 12:30:45
    <ip>          192.0.2.10, 192.0.2.10:8080, 2001:db8::1, ::1
    <hex>         0x7f4bce429620, and hex ids of 8+ digits mixing letters and digits
    <float>       3.14, 2.5e10, 1.2.3
    <int>         42, 30s, 1500ms (digits after a letter stay: `utf8`, `sha256`, `v2`)

Only the first `MAX_TEMPLATE_INPUT` characters are looked at.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_TEMPLATE_INPUT", "message_template"]

MAX_TEMPLATE_INPUT: Final = 4096

_PATTERNS: Final[list[tuple[str, str]]] = [
    ("quoted_str", r"""(?<![\w'"])'[^'\n]{1,200}'(?![\w'])|(?<![\w"'])"[^"\n]{1,200}"(?![\w"])"""),
    ("email", r"\b[\w.%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    (
        "uuid",
        r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b",
    ),
    (
        "date",
        r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
        r"|\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b",
    ),
    (
        "ip",
        r"(?<![\w.:])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}"
        r"(?::\d{1,5})?(?![\w.])"
        r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
        r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?::"
        r"(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?(?![\w:])",
    ),
    (
        "hex",
        r"\b0[xX][0-9a-fA-F]+\b"
        r"|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b",
    ),
    ("number", r"(?<![A-Za-z\d.])\d+(?:\.\d+)*(?:[eE][-+]?\d+)?"),
]

_RE: Final = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in _PATTERNS))


def _replace(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "number":
        return "<float>" if any(c in match.group() for c in ".eE") else "<int>"
    return f"<{kind}>"


def message_template(message: str) -> str:
    """The message with its variable parts replaced by `<placeholder>`s."""
    return _RE.sub(_replace, message[:MAX_TEMPLATE_INPUT])
