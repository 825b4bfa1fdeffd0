"""Logging set-up: plain text or one JSON object per line. Never event contents."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = (
                    value if isinstance(value, str | int | float | bool | None) else repr(value)
                )
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def log_unexpected(logger: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled as an error, without its message.

    For the last guards around handling payloads (requests, envelopes, shadow copies):
    an unexpected exception's message may quote what it failed on (a `KeyError` on an
    email address, a parser error quoting its input), which must never reach a log. The
    line names the exception's type and where it was raised, innermost frame first.
    String `args` (a request's path, decoded from `%0A` and the like) have their control
    characters escaped, so that they cannot start a log line of their own.
    """
    kind, _, tb = sys.exc_info()
    frames = traceback.extract_tb(tb)[-_FRAMES:]
    where = " < ".join(
        f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
    )
    name = kind.__name__ if kind is not None else "no exception"
    shown = [_printable(arg) for arg in args]
    logger.error(f"{message} [%s at %s]", *shown, name, where or "?")


def _printable(value: object) -> object:
    """`value`, a string with its unprintable characters (line breaks, escapes) escaped."""
    if isinstance(value, str) and not value.isprintable():
        return value.encode("unicode_escape").decode("ascii")
    return value


#: Frames of the traceback `log_unexpected` names.
_FRAMES = 6


class _QuietProtocolErrors(logging.Filter):
    """aiohttp logs every malformed HTTP request with a traceback: keep one short line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"bad HTTP request: {type(exc).__name__}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietProtocolErrors) for f in server.filters):
        server.addFilter(_QuietProtocolErrors())
