"""Event field matchers shared by fingerprint rules and sampling rules.

A matcher is `key:glob`, optionally negated with a leading `!`. Keys (aliases in
parentheses) and what they look at:

    error.type (type)         type of an exception in the chain              case-sensitive
    error.value (value)       value of an exception in the chain             case-insensitive
    message                   the log message, or any exception value        case-insensitive
    logger, level             `logger` / `level`                             level: insensitive
    stack.abs_path (path)     a frame's `abs_path` or `filename`; `**` crosses `/`
    stack.module (module)     a frame's `module`                             case-sensitive
    stack.function (function) a frame's `function`                           case-sensitive
    stack.package (package)   a frame's `package` (path-like, like abs_path)
    app                       a frame's `in_app` (yes/no)
    family                    platform family: javascript, native or other (comma list, `all`)
    sdk                       `sdk.name` (comma list of globs, `all`)
    release, environment, transaction, tags.<name>, event.type (error|default|transaction)

Matchers about exceptions must all hold for the same exception, and matchers about
frames for the same frame (`error.type:A error.value:"*b*"` means one exception
of type A whose value contains b). A negated matcher holds when its pattern does
not match; a group made only of negated matchers holds when no exception (or
frame) matches any of them, so `!error.type:CancelledError` means "no
CancelledError anywhere in the chain".

Fingerprint rules (`Matcher(..., fingerprint=True)`, `Condition(..., fingerprint=True)`)
follow Sentry's fingerprinting instead: a rule holds when, for each kind, some single
exception (frame, message) satisfies all its matchers of that kind, a negated one by
not matching, so `!error.type:CancelledError` means "some exception is not a
CancelledError" and never holds without exceptions. Frames are the exceptions'
frames, else the event stacktrace, else the crashing thread's; `message` looks at the
log message and each exception value in turn; values, the message, tags and release
are stripped; a missing `level` is `error`; `sdk` is Sentry's normalized SDK name
(`sentry.python.django` -> `sentry.python`) compared by name, as is `family`; `path`,
`package` and `release` are path globs (case-insensitive, `\\` read as `/` in value and
pattern, a relative value also tried with a leading `/`); `[^a]` negates like `[!a]`,
and a negated class matches `/` in path globs too.

`EventView` reads an event dict once, tolerating every shape SDKs send (tags as a
mapping or as pairs, `exception` as `{values: [...]}` or a bare list, ...).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from relay.processing.glob import GlobSet, validate_glob

__all__ = [
    "MATCHER_KEYS",
    "VARIABLES",
    "Condition",
    "EventView",
    "Matcher",
    "canonical_key",
    "compile_condition",
    "normalize_sdk_name",
    "platform_family",
    "validate_matcher",
]

# key -> (canonical key, group)
_KEYS: Final[dict[str, tuple[str, str]]] = {
    "error.type": ("error.type", "exception"),
    "type": ("error.type", "exception"),
    "error.value": ("error.value", "exception"),
    "value": ("error.value", "exception"),
    "message": ("message", "event"),
    "logger": ("logger", "event"),
    "level": ("level", "event"),
    "stack.abs_path": ("stack.abs_path", "frame"),
    "path": ("stack.abs_path", "frame"),
    "stack.module": ("stack.module", "frame"),
    "module": ("stack.module", "frame"),
    "stack.function": ("stack.function", "frame"),
    "function": ("stack.function", "frame"),
    "stack.package": ("stack.package", "frame"),
    "package": ("stack.package", "frame"),
    "app": ("app", "frame"),
    "family": ("family", "event"),
    "sdk": ("sdk", "event"),
    "release": ("release", "event"),
    "environment": ("environment", "event"),
    "transaction": ("transaction", "event"),
    "event.type": ("event.type", "event"),
}

#: Every accepted matcher key (plus `tags.<name>`).
MATCHER_KEYS: Final = (*_KEYS, "tags.<name>")

#: Variables of fingerprints and titles, `{{ name }}` -> canonical name (plus `tags.<name>`).
#: Any other name renders as `<unrecognized-variable-name>`, as in Sentry.
VARIABLES: Final[dict[str, str]] = {
    "default": "default",
    "transaction": "transaction",
    "message": "message",
    "raw_message": "raw_message",
    "error.type": "error.type",
    "type": "error.type",
    "error.value": "error.value",
    "value": "error.value",
    "error.raw_value": "error.value",
    "raw_value": "error.value",
    "stack.function": "stack.function",
    "function": "stack.function",
    "stack.module": "stack.module",
    "module": "stack.module",
    "stack.abs_path": "stack.abs_path",
    "path": "stack.abs_path",
    "stack.filename": "stack.filename",
    "stack.package": "stack.package",
    "package": "stack.package",
    "level": "level",
    "logger": "logger",
}

_CASE_INSENSITIVE = frozenset({"error.value", "message", "level", "release", "event.type"})
_PATH_LIKE = frozenset({"stack.abs_path", "stack.package"})
# Fingerprint rules match these as paths, as Sentry does (`\\` is `/` in value and pattern).
_FINGERPRINT_PATH_LIKE = _PATH_LIKE | {"release"}
_FLAG_LISTS = frozenset({"family", "sdk"})
_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off"})

_NATIVE_PLATFORMS = frozenset({"objc", "cocoa", "swift", "native", "c"})
_JS_PLATFORMS = frozenset({"javascript", "node"})


def platform_family(platform: object) -> str:
    """Sentry's behaviour family of a platform: `javascript`, `native` or `other`."""
    if platform in _JS_PLATFORMS:
        return "javascript"
    if platform in _NATIVE_PLATFORMS:
        return "native"
    return "other"


_KNOWN_SDKS: Final = frozenset(
    {
        "sentry.cocoa",
        "sentry.dart",
        "sentry.dotnet",
        "sentry.elixir",
        "sentry.go",
        "sentry.java",
        "sentry.javascript.angular",
        "sentry.javascript.browser",
        "sentry.javascript.capacitor",
        "sentry.javascript.cordova",
        "sentry.javascript.deno",
        "sentry.javascript.electron",
        "sentry.javascript.ember",
        "sentry.javascript.gatsby",
        "sentry.javascript.miniapp",
        "sentry.javascript.nextjs",
        "sentry.javascript.node",
        "sentry.javascript.node.experimental",
        "sentry.javascript.node.hapi",
        "sentry.javascript.raycast",
        "sentry.javascript.react",
        "sentry.javascript.react.native",
        "sentry.javascript.remix",
        "sentry.javascript.serverless",
        "sentry.javascript.sfcc",
        "sentry.javascript.svelte",
        "sentry.javascript.sveltekit",
        "sentry.javascript.vue",
        "sentry.kubernetes",
        "sentry.lua",
        "sentry.native.android",
        "sentry.native.dotnet",
        "sentry.native.unity",
        "sentry.native.unreal",
        "sentry.objc",
        "sentry.perl",
        "sentry.php",
        "sentry.python",
        "sentry.ruby",
        "sentry.rust",
        "sentry.swift",
    }
)
_SDK_SYNONYMS: Final = {
    "sentry.android": "sentry.native.android",
    "sentry.cordova": "sentery.javascript.cordova",  # sic: Sentry's table, so `other`
    "sentry.electron": "sentry.javascript.electron",
    "sentry.javascript.angular.ivy": "sentry.javascript.angular",
    "sentry.javascript.react.expo": "sentry.javascript.react",
    "sentry.javascript.react.native.expo": "sentry.javascript.react.native",
    "sentry.laravel": "sentry.php.laravel",
    "sentry.react": "sentry.javascript.react",
    "sentry.symfony": "sentry.php.symfony",
    "sentry.unity": "sentry.native.unity",
    "sentrydotnet": "sentry.dotnet",
}
_NON_WORD_RE: Final = re.compile(r"[\W_]+")


@functools.lru_cache(maxsize=300)
def normalize_sdk_name(name: str) -> str:
    """Sentry's normalized SDK tag: frameworks fold into their SDK (`sentry.python.django`
    -> `sentry.python`, `sentry.java.android` -> `sentry.java`; JavaScript and native keep
    one more level), unknown SDKs become `other`."""
    if not name.startswith("sentry"):
        return "other"
    tag = _NON_WORD_RE.sub(".", name)
    tag = _SDK_SYNONYMS.get(tag, tag)
    if not tag.startswith("sentry."):
        return "other"
    parts = tag.split(".")
    if parts[1] not in ("javascript", "native"):
        tag = ".".join(parts[:2])
    elif parts[1] == "native":
        tag = ".".join(parts[:3])
    return tag if tag in _KNOWN_SDKS else "other"


def canonical_key(key: str) -> tuple[str, str] | None:
    """(canonical key, group) of a matcher key, or None if unknown."""
    if key.startswith("tags.") and len(key) > 5:
        return key, "event"
    return _KEYS.get(key)


def validate_matcher(key: str, pattern: str, *, fingerprint: bool = False) -> str | None:
    """What is wrong with matcher `key:pattern` (without `!`), or None."""
    found = canonical_key(key)
    if found is None:
        return f"unknown matcher '{key}' (known: {', '.join(MATCHER_KEYS)})"
    canonical, _ = found
    if fingerprint and canonical in _FINGERPRINT_PATH_LIKE:
        pattern = pattern.replace("\\", "/")
    if canonical == "app":
        if pattern.lower() not in _TRUE | _FALSE:
            return "app takes yes or no"
        return None
    parts = pattern.split(",") if canonical in _FLAG_LISTS else [pattern]
    for part in parts:
        problem = validate_glob(part.strip(), path=canonical in _PATH_LIKE, fingerprint=fingerprint)
        if problem is not None:
            return problem
    return None


# --- reading events -----------------------------------------------------------------------


def _str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def _values(container: object) -> list[Any]:
    """`{values: [...]}` or `[...]` -> the list (non-dicts dropped)."""
    if isinstance(container, Mapping):
        container = container.get("values")
    if isinstance(container, list):
        return [v for v in container if isinstance(v, Mapping)]
    return []


def _pairs(value: object) -> Iterator[tuple[str, object]]:
    """A mapping or a list of `[key, value]` pairs, as pairs."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str):
                yield k, v
    elif isinstance(value, list):
        for pair in value:
            if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str):
                yield pair[0], pair[1]


@dataclass(frozen=True, slots=True)
class Exc:
    type: str | None
    value: str | None
    module: str | None
    frames: tuple[Mapping[str, Any], ...]


def _frames(stacktrace: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(stacktrace, Mapping):
        return ()
    frames = stacktrace.get("frames")
    if not isinstance(frames, list):
        return ()
    return tuple(f for f in frames if isinstance(f, Mapping))


class EventView:
    """Read-only accessors over an event dict, each computed at most once."""

    __slots__ = ("_cache", "event", "item_type")

    def __init__(self, event: Mapping[str, Any], item_type: str = "event") -> None:
        self.event = event
        self.item_type = item_type
        self._cache: dict[str, Any] = {}

    def get_str(self, key: str) -> str | None:
        return _str(self.event.get(key))

    @property
    def is_transaction(self) -> bool:
        return self.item_type == "transaction" or self.event.get("type") == "transaction"

    @property
    def exceptions(self) -> list[Exc]:
        """Exceptions in event order: the last one is the outermost (raised last)."""
        cached = self._cache.get("exceptions")
        if cached is None:
            cached = [
                Exc(
                    type=_str(e.get("type")),
                    value=_str(e.get("value")),
                    module=_str(e.get("module")),
                    frames=_frames(e.get("stacktrace")),
                )
                for e in _values(self.event.get("exception"))
            ]
            self._cache["exceptions"] = cached
        return cached

    @property
    def frames(self) -> list[Mapping[str, Any]]:
        """Every frame: exception stacktraces, the event stacktrace, thread stacktraces."""
        cached = self._cache.get("frames")
        if cached is None:
            cached = []
            for exc in self.exceptions:
                cached.extend(exc.frames)
            cached.extend(_frames(self.event.get("stacktrace")))
            for thread in _values(self.event.get("threads")):
                cached.extend(_frames(thread.get("stacktrace")))
            self._cache["frames"] = cached
        return cached

    @property
    def crash_frame(self) -> Mapping[str, Any] | None:
        """The frame an error was raised in: the last in-app frame of the outermost
        exception (else its last frame); falls back to the event or crashed thread."""
        if "crash_frame" not in self._cache:
            frames: Sequence[Mapping[str, Any]] = ()
            if self.exceptions:
                frames = self.exceptions[-1].frames
            if not frames:
                frames = _frames(self.event.get("stacktrace"))
            if not frames:
                for thread in _values(self.event.get("threads")):
                    if thread.get("crashed") or thread.get("current"):
                        frames = _frames(thread.get("stacktrace"))
                        if frames:
                            break
            found = None
            for frame in reversed(frames):
                if frame.get("in_app") is True:
                    found = frame
                    break
            if found is None and frames:
                found = frames[-1]
            self._cache["crash_frame"] = found
        crash: Mapping[str, Any] | None = self._cache["crash_frame"]
        return crash

    @property
    def messages(self) -> list[str]:
        """The log message: `logentry.formatted`, `logentry.message`, `message`."""
        cached = self._cache.get("messages")
        if cached is None:
            cached = []
            for container in (self.event.get("logentry"), self.event.get("message")):
                if isinstance(container, Mapping):
                    for key in ("formatted", "message"):
                        text = _str(container.get(key))
                        if text and text not in cached:
                            cached.append(text)
                else:
                    text = _str(container)
                    if text and text not in cached:
                        cached.append(text)
            self._cache["messages"] = cached
        return cached

    @property
    def message_template(self) -> str | None:
        """The unformatted message when the SDK sent one (`logentry.message`), else the text."""
        for container in (self.event.get("logentry"), self.event.get("message")):
            if isinstance(container, Mapping):
                for key in ("message", "formatted"):
                    text = _str(container.get(key))
                    if text:
                        return text
            else:
                text = _str(container)
                if text:
                    return text
        return None

    @property
    def tags(self) -> dict[str, str]:
        cached = self._cache.get("tags")
        if cached is None:
            cached = {}
            for key, value in _pairs(self.event.get("tags")):
                text = _str(value)
                if text is not None:
                    cached.setdefault(key, text)
            self._cache["tags"] = cached
        return cached

    @property
    def sdk_name(self) -> str | None:
        sdk = self.event.get("sdk")
        return _str(sdk.get("name")) if isinstance(sdk, Mapping) else None

    @property
    def event_type(self) -> str:
        if self.is_transaction:
            return "transaction"
        declared = _str(self.event.get("type"))
        if declared:
            return declared
        return "error" if self.exceptions else "default"

    def request(self) -> Mapping[str, Any]:
        request = self.event.get("request")
        return request if isinstance(request, Mapping) else {}

    def header(self, name: str) -> str | None:
        """A request header of the event (case-insensitive name)."""
        lowered = name.lower()
        for key, value in _pairs(self.request().get("headers")):
            if key.lower() == lowered:
                return _str(value)
        return None

    @property
    def user_agent(self) -> str | None:
        return self.header("User-Agent")

    def user_ip(self) -> str | None:
        user = self.event.get("user")
        return _str(user.get("ip_address")) if isinstance(user, Mapping) else None

    def event_field(self, key: str) -> list[str | None]:
        """The event-level value(s) a matcher key looks at."""
        if key == "message":
            return [*self.messages, *(e.value for e in self.exceptions)]
        if key in ("logger", "level", "release", "environment", "transaction"):
            return [self.get_str(key)]
        if key == "family":
            return [platform_family(self.event.get("platform"))]
        if key == "sdk":
            return [self.sdk_name]
        if key == "event.type":
            return [self.event_type]
        if key.startswith("tags."):
            return [self.tags.get(key[5:])]
        return [None]

    # --- the fingerprint side (Sentry's EventDatastore) ---------------------------------

    @property
    def log_message(self) -> str | None:
        """The log message as Sentry sees it after normalization: `logentry.formatted`,
        else `logentry.message`, else the legacy `message`."""
        if "log_message" not in self._cache:
            found: str | None = None
            for container in (self.event.get("logentry"), self.event.get("message")):
                if isinstance(container, Mapping):
                    found = _str(container.get("formatted")) or _str(container.get("message"))
                else:
                    found = _str(container)
                if found:
                    break
            self._cache["log_message"] = found or None
        message: str | None = self._cache["log_message"]
        return message

    @property
    def stripped_exceptions(self) -> list[Exc]:
        """`exceptions` with their values stripped of surrounding whitespace."""
        cached = self._cache.get("stripped_exceptions")
        if cached is None:
            cached = []
            for exc in self.exceptions:
                value = exc.value.strip() if exc.value else exc.value
                cached.append(
                    exc if value == exc.value else Exc(exc.type, value, exc.module, exc.frames)
                )
            self._cache["stripped_exceptions"] = cached
        return cached

    @property
    def toplevel(self) -> list[str | None]:
        """What a fingerprint `message:` looks at, one element each: the stripped log
        message, then each exception's stripped value (None when it has none)."""
        cached = self._cache.get("toplevel")
        if cached is None:
            message = self.log_message
            cached = [message.strip()] if message else []
            cached.extend(e.value for e in self.stripped_exceptions)
            self._cache["toplevel"] = cached
        return cached

    @property
    def stack_frames(self) -> list[Mapping[str, Any]]:
        """The frames fingerprint rules look at (Sentry's `find_stack_frames`): every
        exception's frames; if none, the event stacktrace; if none, the crashing thread's
        (the only thread, else the one `crashed`, else the one `current`)."""
        cached = self._cache.get("stack_frames")
        if cached is None:
            cached = []
            for exc in self.exceptions:
                cached.extend(exc.frames)
            if not cached:
                cached.extend(_frames(self.event.get("stacktrace")))
            if not cached:
                thread = _crashing_thread(_values(self.event.get("threads")))
                if thread is not None:
                    cached.extend(_frames(thread.get("stacktrace")))
            self._cache["stack_frames"] = cached
        return cached

    @property
    def level(self) -> str:
        """`level`, defaulting as Sentry's normalization does (`error`, transactions `info`)."""
        return self.get_str("level") or ("info" if self.is_transaction else "error")

    def fingerprint_field(self, key: str) -> str | None:
        """The event-level value a fingerprint matcher key looks at (not `message`)."""
        if key == "level":
            return self.level
        if key == "sdk":
            name = self.sdk_name
            return normalize_sdk_name(name) if name else "other"
        if key == "release":
            release = self.get_str("release")
            return release.strip() if release else None
        if key.startswith("tags."):
            tag = self.tags.get(key[5:])
            return tag.strip() if tag else tag
        return self.event_field(key)[0]

    def variable(self, name: str) -> str:
        """The value of fingerprint variable `name`, as Sentry's
        `resolve_fingerprint_variable` gives it (without `{{ message }}`'s templating)."""
        canonical = VARIABLES.get(name)
        if canonical is None:
            if name.startswith("tags."):
                tag = name[5:]
                return self.tags.get(tag) or f"<no-value-for-tag-{tag}>"
            return f"<unrecognized-variable-{name}>"
        if canonical == "default":
            return "{{ default }}"
        if canonical in ("transaction", "logger"):
            return self.get_str(canonical) or f"<no-{canonical}>"
        if canonical == "level":
            return self.level
        if canonical in ("message", "raw_message"):
            last = self.exceptions[-1].value if self.exceptions else None
            return self.log_message or last or "<no-message>"
        if canonical in ("error.type", "error.value"):
            exc = self.exceptions[-1] if self.exceptions else None
            if canonical == "error.type":
                return (exc.type if exc else None) or "<no-type>"
            return (exc.value if exc else None) or "<no-value>"
        frame = self.crash_frame or {}
        if canonical == "stack.function":
            return _str(frame.get("function")) or "<no-function>"
        if canonical == "stack.module":
            return _str(frame.get("module")) or "<no-module>"
        if canonical == "stack.abs_path":
            return _str(frame.get("abs_path")) or _str(frame.get("filename")) or "<no-abs-path>"
        if canonical == "stack.filename":
            return _str(frame.get("filename")) or _str(frame.get("abs_path")) or "<no-filename>"
        package = _str(frame.get("package"))
        if package:
            # The last segment of a POSIX or Windows path.
            package = package.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        return package or "<no-package>"


def _crashing_thread(threads: list[Any]) -> Mapping[str, Any] | None:
    if len(threads) == 1:
        found: Mapping[str, Any] = threads[0]
        return found
    for flag in ("crashed", "current"):
        flagged = [t for t in threads if t.get(flag)]
        if len(flagged) == 1:
            return flagged[0]  # type: ignore[no-any-return]
    return None


# --- compiled matchers ----------------------------------------------------------------------


class Matcher:
    """One compiled `[!]key:pattern` (a pattern list means: any of them).

    With `fingerprint=True` the matcher follows Sentry's fingerprinting semantics (see
    the module docstring): `message` becomes a group of its own, `path`, `package` and
    `release` are case-insensitive path globs, `sdk` and `family` compare names, and
    event-level values come from `EventView.fingerprint_field`.
    """

    __slots__ = (
        "_app",
        "_fingerprint",
        "_flags",
        "_globs",
        "_names",
        "group",
        "key",
        "negated",
        "source",
    )

    def __init__(
        self, key: str, patterns: Sequence[str], negated: bool = False, *, fingerprint: bool = False
    ) -> None:
        found = canonical_key(key)
        if found is None:
            raise ValueError(f"unknown matcher '{key}'")
        self.key, self.group = found
        if fingerprint and self.key == "message":
            self.group = "toplevel"
        self.negated = negated
        self._fingerprint = fingerprint
        self.source = f"{'!' if negated else ''}{key}:{','.join(patterns)}"
        self._app: bool | None = None
        self._flags = False
        self._names: frozenset[str] = frozenset()
        if self.key == "app":
            self._app = patterns[0].lower() in _TRUE if patterns else False
            self._globs = GlobSet(())
            return
        if self.key in _FLAG_LISTS:
            flat = [p.strip() for pattern in patterns for p in pattern.split(",")]
            self._flags = "all" in flat
            self._names = frozenset(flat)
            patterns = flat
        path = self.key in (_FINGERPRINT_PATH_LIKE if fingerprint else _PATH_LIKE)
        if fingerprint and path:
            patterns = [p.replace("\\", "/") for p in patterns]
        self._globs = GlobSet(
            patterns,
            case_sensitive=self.key not in _CASE_INSENSITIVE and not (fingerprint and path),
            path=path,
            fingerprint=fingerprint,
        )

    def _positive(self, element: object) -> bool:
        key = self.key
        if self.group == "toplevel":
            assert element is None or isinstance(element, str)
            return self._globs.matches(element)
        if self.group == "exception":
            assert isinstance(element, Exc)
            return self._globs.matches(element.type if key == "error.type" else element.value)
        if self.group == "frame":
            assert isinstance(element, Mapping)
            if key == "app":
                in_app = element.get("in_app")
                if self._fingerprint and not isinstance(in_app, bool):
                    return False  # Sentry: an unknown in_app matches neither yes nor no
                return (in_app is True) == self._app
            if key == "stack.abs_path":
                return any(
                    self._path_match(_str(element.get(field))) for field in ("abs_path", "filename")
                )
            if key == "stack.package":
                return self._path_match(_str(element.get("package")))
            field = "module" if key == "stack.module" else "function"
            return self._globs.matches(_str(element.get(field)))
        assert isinstance(element, EventView)
        if self._fingerprint:
            value = element.fingerprint_field(key)
            if key in _FLAG_LISTS:  # names, not globs, in Sentry's fingerprinting
                return value is not None and (self._flags or value in self._names)
            if key == "release":
                return self._path_match(value)
            return self._globs.matches(value)
        values = element.event_field(key)
        if self._flags:
            return any(v is not None for v in values)
        return any(self._globs.matches(v) for v in values)

    def _path_match(self, value: str | None) -> bool:
        if not value:
            return False
        value = value.replace("\\", "/")
        if self._globs.matches(value):
            return True
        return not value.startswith("/") and self._globs.matches("/" + value)

    def test(self, element: object) -> bool:
        return self._positive(element) != self.negated


_GROUP_ORDER: Final = {"event": 0, "toplevel": 1, "exception": 2, "frame": 3}


class Condition:
    """All matchers of a rule; `matches(view)` applies the grouping semantics above.

    With `fingerprint=True` (and matchers built with `fingerprint=True`), Sentry's
    fingerprinting semantics: for each group some single element satisfies all of the
    group's matchers, and a group without elements never holds.
    """

    __slots__ = ("_fingerprint", "_groups", "matchers")

    def __init__(self, matchers: Sequence[Matcher], *, fingerprint: bool = False) -> None:
        self.matchers = tuple(matchers)
        self._fingerprint = fingerprint
        groups: dict[str, list[Matcher]] = {}
        for m in self.matchers:
            groups.setdefault(m.group, []).append(m)
        # Cheap event-level checks first, frames last.
        self._groups = sorted(
            ((g, tuple(ms)) for g, ms in groups.items()), key=lambda gm: _GROUP_ORDER[gm[0]]
        )

    def matches(self, view: EventView) -> bool:
        if self._fingerprint:
            return self._matches_fingerprint(view)
        for group, matchers in self._groups:
            elements: Sequence[object]
            if group == "event":
                elements = (view,)
            elif group == "exception":
                elements = view.exceptions
            else:
                elements = view.frames
            if all(m.negated for m in matchers):
                ok = all(not m._positive(e) for e in elements for m in matchers)
            else:
                ok = any(all(m.test(e) for m in matchers) for e in elements)
            if not ok:
                return False
        return True

    def _matches_fingerprint(self, view: EventView) -> bool:
        for group, matchers in self._groups:
            elements: Sequence[object]
            if group == "event":
                elements = (view,)
            elif group == "toplevel":
                elements = view.toplevel
            elif group == "exception":
                elements = view.stripped_exceptions
            else:
                elements = view.stack_frames
            if not any(all(m.test(e) for m in matchers) for e in elements):
                return False
        return True


def compile_condition(matchers: Sequence[tuple[str, Sequence[str], bool]]) -> Condition:
    """Compile `(key, patterns, negated)` triples (validated) into a Condition."""
    return Condition([Matcher(key, patterns, negated) for key, patterns, negated in matchers])
