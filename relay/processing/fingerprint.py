"""Server-side fingerprint rules (Sentry's syntax), and message-template fingerprints.

One rule per line; `#` starts a comment line:

    error.type:DatabaseUnavailable -> system-down
    error.type:ConnectionError error.value:"*connection refused*" -> connection-refused, {{ transaction }}
    error.value:"*connection pool*exhausted*" -> pool-exhausted title="Connection pool exhausted"
    !error.type:CancelledError stack.module:"app.payments.*" -> payments, {{ stack.function }}
    logger:celery.* -> celery, {{ error.type }} override=true

- Matchers (see `relay.processing.matchers`, fingerprint semantics) are `key:value`
  with an optional `!` negation; values are globs, quoted with `"..."` when they
  contain spaces; keys may be quoted too (`"error.type":X`). Quoted values unescape
  standard escapes (`\\"`, `\\\\`, `\\n`, ...) and keep unknown ones, so
  `"div\\*"` is a literal `*` for the glob. All matchers of a line must hold.
  Sentry's `thread.*` matchers and caller/callee forms (`[ function:a ] |`,
  `| [ function:b ]`) are refused with an error naming them.
- After `->`: fingerprint values separated by commas or spaces (a trailing comma is
  fine), bare or quoted. A value that is wholly `{{ variable }}` is replaced by the
  event's value (`{{ default }}` is kept for the upstream to expand, `{{ message }}`
  is templated like Sentry's message parameterization, an unknown name gives
  `<unrecognized-variable-name>`); text around a variable stays literal, and a bare
  `svc-{{ level }}` is two values, as in Sentry.
- Attributes after the values: `title="..."` (variables anywhere in it) sets the
  event's title; `override=true` replaces a fingerprint the SDK sent, which is
  otherwise kept (a relay extension: without it the SDK's own grouping wins).
- The first matching rule wins; org rules come before project rules. Rules apply to
  error and message events, not to transactions.

With `normalize_messages`, a message event (no exception) that no rule matched and
that has no SDK fingerprint gets `[message_template(message)]` as fingerprint.

`validate_fingerprinting(text)` reports each bad line with its line and column.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, Final

from relay.config.base import Problem
from relay.processing.matchers import (
    Condition,
    EventView,
    Matcher,
    validate_matcher,
)
from relay.processing.normalize import message_template

__all__ = [
    "FingerprintResult",
    "FingerprintRule",
    "FingerprintSyntaxError",
    "Fingerprinter",
    "compile_fingerprinting",
    "parse_fingerprinting",
    "validate_fingerprinting",
]

DEFAULT_VARIABLE: Final = "{{ default }}"

_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")
_QUOTED_KEY_RE: Final = re.compile(r'"([A-Za-z0-9_.:\-]+)"')
_ATTRIBUTE_RE: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
# Sentry's FINGERPRINT_VARIABLE_REGEX and its `unquoted_no_comma` token.
_VAR_RE: Final = re.compile(r"\{\{\s*(\S+)\s*\}\}")
_BARE_RE: Final = re.compile(r"\{\{\s*\S+\s*\}\}|[^\s{,]+")
_DEFAULT_RE: Final = re.compile(r"^\{\{\s*default\s*\}\}$")
# The escapes Python's `unicode-escape` (Sentry's `unescape_string`) knows; others stay.
_ESCAPE_RE: Final = re.compile(
    r"\\(?:u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{1,3}|N\{[^}]*\}|[\\'\"abfnrtv\n])"
)
_THREAD_MATCHERS: Final = (
    "thread.id",
    "thread.name",
    "thread.state",
    "thread.crashed",
    "thread.current",
)
_TRUE: Final = ("true", "yes", "1", "on")
_FALSE: Final = ("false", "no", "0", "off")


class FingerprintSyntaxError(ValueError):
    """A rule does not parse; `line` and `column` are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


# A fingerprint value or title: literal text and variable names, in order.
Template = tuple[tuple[bool, str], ...]  # (is_variable, text)


def _unescape(text: str) -> str:
    """Sentry's `unescape_string`: standard escapes decoded, unknown ones (`\\*`) kept."""
    if "\\" not in text:
        return text

    def decode(m: re.Match[str]) -> str:
        try:
            return codecs.decode(m.group(), "unicode-escape")
        except UnicodeDecodeError:  # an unknown \\N{name}
            return m.group()

    return _ESCAPE_RE.sub(decode, text)


def _render(template: Template, view: EventView) -> str:
    """A title: variables anywhere in the text."""
    return "".join(view.variable(text) if is_var else text for is_var, text in template)


def _render_value(template: Template, view: EventView) -> str:
    """A fingerprint value: one literal, or one variable (`{{ message }}` templated)."""
    is_var, text = template[0]
    if not is_var:
        return text
    value = view.variable(text)
    if text == "message" and value != "<no-message>":
        return message_template(value)
    return value


@dataclass(frozen=True, slots=True)
class FingerprintRule:
    """One parsed rule: `text` is the source line, `line` its 1-based number."""

    text: str
    line: int
    condition: Condition
    fingerprint: tuple[Template, ...]
    title: Template | None
    override: bool


@dataclass(frozen=True, slots=True)
class FingerprintResult:
    """What `Fingerprinter.apply` did to an event.

    `rule` is the matching rule's source text (None for a message template);
    `source` is `"rule"` or `"message_template"`.
    """

    fingerprint: list[str]
    title: str | None
    rule: str | None
    source: str


class _LineParser:
    def __init__(self, text: str, line: int) -> None:
        self.s = text
        self.i = 0
        self.line = line

    def error(self, message: str, at: int | None = None) -> FingerprintSyntaxError:
        return FingerprintSyntaxError(message, self.line, (self.i if at is None else at) + 1)

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def quoted(self) -> str:
        start = self.i
        self.i += 1
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\" and self.i + 1 < len(self.s):
                self.i += 2
                continue
            if ch == '"':
                self.i += 1
                return _unescape(self.s[start + 1 : self.i - 1])
            self.i += 1
        raise self.error("unterminated quoted string", start)

    def matcher(self) -> tuple[Matcher, int]:
        start = self.i
        if self.s[self.i] in "[|":
            raise self.error(
                "caller/callee matchers ('[ ... ] |' and '| [ ... ]') are not supported"
                " by the relay"
            )
        negated = False
        if self.s[self.i] == "!":
            negated = True
            self.i += 1
        key_at = self.i
        m = _QUOTED_KEY_RE.match(self.s, self.i) or _KEY_RE.match(self.s, self.i)
        if m is None:
            raise self.error("expected a matcher such as error.type:Name, or '->'")
        key = m.group(1) if m.re is _QUOTED_KEY_RE else m.group(0)
        self.i = m.end()
        if key in _THREAD_MATCHERS:
            raise self.error(f"thread matchers ({key}) are not supported by the relay", key_at)
        if self.at_end() or self.s[self.i] != ":":
            raise self.error(f"expected ':' after matcher '{key}'")
        self.i += 1
        value_at = self.i
        if self.at_end() or self.s[self.i] in " \t":
            raise self.error(f"expected a value after '{key}:'")
        if self.s[self.i] == '"':
            value = self.quoted()
        else:
            end = self.i
            while end < len(self.s) and self.s[end] not in " \t":
                end += 1
            value = self.s[self.i : end]
            self.i = end
        problem = validate_matcher(key, value, fingerprint=True)
        if problem is not None:
            at = key_at if problem.startswith("unknown matcher") else value_at
            raise self.error(problem, at)
        return Matcher(key, [value], negated, fingerprint=True), start

    @staticmethod
    def title(text: str) -> Template:
        parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _VAR_RE.finditer(text):
            if m.start() > pos:
                parts.append((False, text[pos : m.start()]))
            parts.append((True, m.group(1)))
            pos = m.end()
        if pos < len(text):
            parts.append((False, text[pos:]))
        return tuple(parts)

    @staticmethod
    def value(text: str) -> Template:
        """A fingerprint value: a variable only when it is wholly `{{ name }}`."""
        m = _VAR_RE.match(text)
        if m is None or m.end() != len(text):
            return ((False, text),)
        if m.group(1) == "default":
            return ((False, DEFAULT_VARIABLE),)
        return ((True, m.group(1)),)

    def bare_value(self) -> str:
        """Sentry's bare token: `{{ ... }}` (may hold spaces), or text up to a space,
        comma or `{`."""
        m = _BARE_RE.match(self.s, self.i)
        if m is None:
            if self.s.startswith("{{", self.i):
                raise self.error("'{{' is never closed")
            raise self.error("unexpected '{' (a variable is written {{ name }})")
        self.i = m.end()
        return m.group()

    def bare_attribute(self) -> str:
        """An unquoted attribute value (a relay extension): up to whitespace or a comma;
        `{{ ... }}` may contain spaces."""
        start = self.i
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "{" and self.s.startswith("{{", self.i):
                close = self.s.find("}}", self.i)
                if close < 0:
                    raise self.error("'{{' is never closed", self.i)
                self.i = close + 2
                continue
            if ch in " \t,":
                break
            self.i += 1
        return self.s[start : self.i]

    def rule(self) -> FingerprintRule:
        matchers: list[Matcher] = []
        while True:
            self.skip_ws()
            if self.at_end():
                if not matchers:
                    raise self.error("expected a matcher such as error.type:Name")
                raise self.error("expected '->' followed by a fingerprint")
            if self.s.startswith("->", self.i):
                break
            matcher, _ = self.matcher()
            matchers.append(matcher)
        if not matchers:
            raise self.error("a rule needs at least one matcher before '->'")
        self.i += 2
        fingerprint: list[Template] = []
        title: Template | None = None
        override = False
        while True:
            self.skip_ws()
            if self.at_end():
                break
            at = self.i
            attr = _ATTRIBUTE_RE.match(self.s, self.i)
            if attr is not None:
                name = attr.group(1)
                self.i = attr.end()
                if self.at_end() or self.s[self.i] in " \t,":
                    raise self.error(f"expected a value after '{name}='")
                value_at = self.i
                is_quoted = self.s[self.i] == '"'
                raw = self.quoted() if is_quoted else self.bare_attribute()
                if name == "title":
                    title = self.title(raw)
                elif name == "override":
                    if raw.lower() in _TRUE:
                        override = True
                    elif raw.lower() in _FALSE:
                        override = False
                    else:
                        raise self.error("override takes true or false", value_at)
                else:
                    raise self.error(f"unknown attribute '{name}' (known: title, override)", at)
            else:
                if self.s[self.i] == ",":
                    raise self.error("empty fingerprint value")
                value = self.quoted() if self.s[self.i] == '"' else self.bare_value()
                fingerprint.append(self.value(value))
            self.skip_ws()
            if not self.at_end() and self.s[self.i] == ",":
                self.i += 1
        if not fingerprint:
            raise self.error("expected a fingerprint after '->'")
        return FingerprintRule(
            text=self.s.strip(),
            line=self.line,
            condition=Condition(matchers, fingerprint=True),
            fingerprint=tuple(fingerprint),
            title=title,
            override=override,
        )


def _parse(text: str) -> tuple[list[FingerprintRule], list[FingerprintSyntaxError]]:
    rules: list[FingerprintRule] = []
    errors: list[FingerprintSyntaxError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            rules.append(_LineParser(line, number).rule())
        except FingerprintSyntaxError as exc:
            errors.append(exc)
    return rules, errors


def parse_fingerprinting(text: str) -> list[FingerprintRule]:
    """Parse rules text; raises the first FingerprintSyntaxError."""
    rules, errors = _parse(text)
    if errors:
        raise errors[0]
    return rules


def validate_fingerprinting(text: str) -> list[Problem]:
    """Every syntax error of `policy.fingerprinting` (path "", message with line and column)."""
    if not isinstance(text, str):
        return [Problem("", "must be a string of rules, one per line")]
    _, errors = _parse(text)
    return [Problem("", str(exc)) for exc in errors]


def _has_client_fingerprint(event: dict[str, Any]) -> bool:
    fp = event.get("fingerprint")
    if not isinstance(fp, list) or not fp:
        return False
    return not (len(fp) == 1 and isinstance(fp[0], str) and _DEFAULT_RE.match(fp[0].strip()))


class Fingerprinter:
    """Compiled fingerprint rules plus the message-template fallback.

    Parameters:
        rules: parsed rules, org rules first.
        normalize_messages: fingerprint message events by their template when nothing
            else did.
    """

    __slots__ = ("normalize_messages", "rules")

    def __init__(self, rules: list[FingerprintRule], normalize_messages: bool = False) -> None:
        self.rules = tuple(rules)
        self.normalize_messages = normalize_messages

    def __bool__(self) -> bool:
        return bool(self.rules) or self.normalize_messages

    def match(self, event: dict[str, Any]) -> FingerprintRule | None:
        """The first rule that matches `event`, without changing it."""
        view = EventView(event)
        for rule in self.rules:
            if rule.condition.matches(view):
                return rule
        return None

    def apply(self, event: dict[str, Any]) -> FingerprintResult | None:
        """Set `fingerprint` (and `title`) on an error or message event; None if unchanged."""
        if not self or event.get("type") == "transaction":
            return None
        view = EventView(event)
        has_client = _has_client_fingerprint(event)
        for rule in self.rules:
            if not rule.condition.matches(view):
                continue
            if has_client and not rule.override:
                return None
            fingerprint = [_render_value(part, view) for part in rule.fingerprint]
            title = _render(rule.title, view) if rule.title is not None else None
            event["fingerprint"] = fingerprint
            if title is not None:
                event["title"] = title
            return FingerprintResult(fingerprint, title, rule.text, "rule")
        if not self.normalize_messages or has_client or view.exceptions:
            return None
        message = view.message_template
        if not message:
            return None
        fingerprint = [message_template(message)]
        event["fingerprint"] = fingerprint
        return FingerprintResult(fingerprint, None, None, "message_template")


def compile_fingerprinting(
    org_text: str, project_text: str = "", normalize_messages: bool = False
) -> Fingerprinter:
    """Compile org rules, then project rules (validated text; raises FingerprintSyntaxError)."""
    rules = parse_fingerprinting(org_text or "") + parse_fingerprinting(project_text or "")
    return Fingerprinter(rules, bool(normalize_messages))
