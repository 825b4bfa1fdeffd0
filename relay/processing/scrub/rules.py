"""Sentry's Advanced Data Scrubbing rules: built-ins, validation, compilation, redaction.

A PII config is `{"rules": {name: spec}, "applications": {selector: [rule, ...]},
"vars": {"hashKey": ...}}`. A rule spec has a `type` (pattern, redact_pair, anything,
email, ip, creditcard, iban, mac, uuid, imei, pemkey, urlauth, usssn, userpath,
password, bearer, multiple, alias) and a `redaction` (`{"method": "remove" | "replace"
| "mask" | "hash", "text": ...}`). Built-in rules are named `@type:method` as in
Sentry (`@ip:replace`, `@email:mask`, `@creditcard:filter`, `@anything:remove`,
`@common`, ...).

`compile_pii_config` resolves aliases and `multiple` rules into flat `Rule`s, compiles
user regexes with re2 (linear time, no catastrophic patterns), and parses selectors.
`Rule.apply_string` / `Rule.applies_to_key` implement Sentry's semantics: value
patterns replace matches; key patterns (redact_pair, password) redact the whole value;
`remove` on a whole value deletes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import re2

from relay.config.base import Problem
from relay.processing.scrub import detectors as det
from relay.processing.scrub.selectors import Selector, SelectorError, parse_selector

METHODS = ("remove", "replace", "mask", "hash")
VALUE_TYPES = (
    "anything",
    "email",
    "ip",
    "creditcard",
    "iban",
    "mac",
    "uuid",
    "imei",
    "pemkey",
    "urlauth",
    "usssn",
    "userpath",
    "password",
    "bearer",
)
RULE_TYPES = (*VALUE_TYPES, "pattern", "redact_pair", "multiple", "alias")

#: Sentry's replacement text per type for `@type:replace`.
REPLACE_TEXT = {
    "ip": "[ip]",
    "imei": "[imei]",
    "mac": "[mac]",
    "uuid": "[uuid]",
    "email": "[email]",
    "iban": "[iban]",
    "creditcard": "[creditcard]",
    "pemkey": "[pemkey]",
    "urlauth": "[auth]",
    "usssn": "[us-ssn]",
    "userpath": "[user]",
    "password": "[password]",
    "bearer": "Bearer [token]",
    "anything": "[Filtered]",
}
#: The method of the bare `@type` alias.
DEFAULT_METHOD = {
    "mac": "mask",
    "uuid": "mask",
    "usssn": "mask",
    "password": "remove",
}
#: Remark type letters in `_meta` (`rem`), per method.
REMARK = {"remove": "x", "replace": "s", "mask": "m", "hash": "p"}


def _builtin_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for ty in VALUE_TYPES:
        for method in METHODS:
            red: dict[str, Any] = {"method": method}
            if method == "replace":
                red["text"] = REPLACE_TEXT[ty]
            rules[f"@{ty}:{method}"] = {"type": ty, "redaction": red}
        rules[f"@{ty}:filter"] = {
            "type": ty,
            "redaction": {"method": "replace", "text": det.FILTERED},
        }
        rules[f"@{ty}"] = {
            "type": "alias",
            "rule": f"@{ty}:{DEFAULT_METHOD.get(ty, 'replace')}",
            "hideInner": True,
        }
    # Sentry's legacy pattern, with the user optional (`redis://:password@host`).
    rules["@urlauth:legacy"] = {
        "type": "pattern",
        "pattern": r"\b((?:[a-z0-9]+:)?//[a-zA-Z0-9%_.-]*:)([a-zA-Z0-9%_.-]+)@",
        "replaceGroups": [2],
        "redaction": {"method": "replace", "text": det.FILTERED},
    }
    rules["@common"] = {
        "type": "multiple",
        "rules": [
            "@iban",
            "@ip",
            "@email",
            "@creditcard",
            "@pemkey",
            "@urlauth",
            "@userpath",
            "@password",
            "@usssn",
        ],
    }
    rules["@common:filter"] = {
        "type": "multiple",
        "rules": [
            "@creditcard:filter",
            "@iban:filter",
            "@pemkey:filter",
            "@urlauth:legacy",
            "@userpath:filter",
            "@password:filter",
            "@usssn:filter",
        ],
    }
    return rules


BUILTIN_RULES: dict[str, dict[str, Any]] = _builtin_rules()


# --- redaction -------------------------------------------------------------------------------


def hash_value(value: str, key: bytes) -> str:
    """Sentry's `hash` redaction: HMAC-SHA1, upper-case hex."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha1).hexdigest().upper()


@dataclass(frozen=True)
class Method:
    """How to redact: `method` is remove, replace, mask or hash."""

    method: str
    text: str = det.FILTERED
    hash_key: bytes = b""

    def substitute(self, value: str) -> str:
        method = self.method
        if method == "replace":
            return self.text
        if method == "mask":
            return "*" * len(value)
        if method == "hash":
            return hash_value(value, self.hash_key)
        return ""


# --- compiled rules ---------------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 64 << 20

_TOKEN_KEY = re2.compile(r"(?i)token", _RE2_OPTIONS)
_PASSWORD_KEY = re2.compile(
    r"(?i)(password|secret|passwd|api[-_]key|apikey|auth|credentials|mysql_pwd|privatekey"
    r"|private[-_]key|token[^\s]*[:=]|^otp$|^two[-_]factor$)",
    _RE2_OPTIONS,
)


def compile_regex(pattern: str) -> Any:
    """Compile a user pattern with re2 (linear time); raise ValueError if it is not valid."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except Exception as exc:  # re2.error, TypeError on odd input
        raise ValueError(f"invalid regular expression: {exc}") from None


@dataclass(frozen=True)
class Rule:
    """A resolved rule: one type, one redaction, reported as `origin`."""

    origin: str
    type: str
    redaction: Method
    #: Value detectors (built-in types).
    detectors: tuple[det.Detector, ...] = ()
    #: `pattern` rules: re2 regex and the groups to replace (None: whole match).
    pattern: Any = None
    groups: frozenset[int] | None = None
    #: Regexes on the key (`redact_pair`, `password`): a match redacts the whole value.
    key_patterns: tuple[Any, ...] = ()
    #: Regexes whose match anywhere in the value redacts the whole value (`password`,
    #: `redact_pair`).
    value_whole: tuple[Any, ...] = ()

    @property
    def method(self) -> str:
        return self.redaction.method

    @cached_property
    def keyed(self) -> bool:
        """Can the key select the whole value (`anything`, or patterns on the key)?"""
        return self.type == "anything" or bool(self.key_patterns)

    def applies_to_key(self, key: str | None) -> bool:
        """Does the key alone select the whole value?"""
        if key is None:
            return False
        return any(p.search(key) for p in self.key_patterns)

    def removes_non_string(self, key: str | None) -> bool:
        """Sentry deletes a container or number when the rule selects it as a whole."""
        return self.type == "anything" or self.applies_to_key(key)

    def spans(self, value: str) -> list[tuple[int, int]]:
        """Spans of `value` to redact (a span covering everything redacts the whole)."""
        if self.type == "anything":
            return [(0, len(value))] if value else []
        if any(p.search(value) for p in self.value_whole):
            return [(0, len(value))]
        if self.pattern is not None:
            out: list[tuple[int, int]] = []
            for m in self.pattern.finditer(value):
                if self.groups is None:
                    span = m.span()
                    if span[0] < span[1]:
                        out.append(span)
                    continue
                for g in sorted(self.groups):
                    if g <= m.re.groups:
                        s, e = m.span(g)
                        if 0 <= s < e:
                            out.append((s, e))
            return out
        if self.detectors:
            return [(h.start, h.end) for h in det.scan([(d, None) for d in self.detectors], value)]
        return []


# --- validation -------------------------------------------------------------------------------


def _p(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _q(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key)}]"


def _check_redaction(red: Any, path: str, out: list[Problem]) -> None:
    if red is None:
        return
    if not isinstance(red, dict):
        out.append(Problem(path, "expected a mapping with 'method'"))
        return
    method = red.get("method")
    if method not in (*METHODS, "default"):
        out.append(
            Problem(
                _p(path, "method"), f"unknown method {method!r}; use one of {', '.join(METHODS)}"
            )
        )
    allowed = {"method", "text", "algorithm", "key", "mask_char", "chars_to_ignore", "range"}
    for k in red:
        if k not in allowed:
            out.append(Problem(_p(path, str(k)), "unknown key"))
    if "text" in red and not isinstance(red["text"], str):
        out.append(Problem(_p(path, "text"), "expected a string"))


def _check_rule(name: str, spec: Any, path: str, known: set[str], out: list[Problem]) -> None:
    if not isinstance(spec, dict):
        out.append(Problem(path, "expected a mapping with 'type'"))
        return
    ty = spec.get("type")
    if ty not in RULE_TYPES:
        out.append(Problem(_p(path, "type"), f"unknown rule type {ty!r}"))
        return
    allowed = {"type", "redaction"}
    if ty == "pattern":
        allowed |= {"pattern", "replaceGroups"}
        pattern = spec.get("pattern")
        if not isinstance(pattern, str):
            out.append(Problem(_p(path, "pattern"), "required: a regular expression"))
        else:
            try:
                compiled = compile_regex(pattern)
            except ValueError as exc:
                out.append(Problem(_p(path, "pattern"), str(exc)))
            else:
                groups = spec.get("replaceGroups")
                if groups is not None:
                    if not isinstance(groups, list) or not all(
                        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups
                    ):
                        out.append(
                            Problem(_p(path, "replaceGroups"), "expected a list of group numbers")
                        )
                    elif any(g > compiled.groups for g in groups):
                        out.append(
                            Problem(
                                _p(path, "replaceGroups"),
                                f"the pattern has {compiled.groups} groups",
                            )
                        )
    elif ty == "redact_pair":
        allowed.add("keyPattern")
        pattern = spec.get("keyPattern")
        if not isinstance(pattern, str):
            out.append(Problem(_p(path, "keyPattern"), "required: a regular expression"))
        else:
            try:
                compile_regex(pattern)
            except ValueError as exc:
                out.append(Problem(_p(path, "keyPattern"), str(exc)))
    elif ty == "multiple":
        allowed |= {"rules", "hideInner"}
        refs = spec.get("rules")
        if not isinstance(refs, list) or not refs:
            out.append(Problem(_p(path, "rules"), "expected a non-empty list of rule names"))
        else:
            for i, ref in enumerate(refs):
                if not isinstance(ref, str) or ref not in known:
                    out.append(Problem(f"{_p(path, 'rules')}[{i}]", f"undefined rule {ref!r}"))
    elif ty == "alias":
        allowed |= {"rule", "hideInner"}
        ref = spec.get("rule")
        if not isinstance(ref, str) or ref not in known:
            out.append(Problem(_p(path, "rule"), f"undefined rule {ref!r}"))
    for k in spec:
        if k not in allowed:
            out.append(Problem(_p(path, str(k)), "unknown key"))
    _check_redaction(spec.get("redaction"), _p(path, "redaction"), out)


def _cycles(rules: dict[str, Any]) -> list[str]:
    def refs(name: str) -> list[str]:
        spec = rules.get(name) or BUILTIN_RULES.get(name) or {}
        if spec.get("type") == "multiple":
            return [r for r in spec.get("rules", []) if isinstance(r, str)]
        if spec.get("type") == "alias" and isinstance(spec.get("rule"), str):
            return [spec["rule"]]
        return []

    bad: list[str] = []
    for start in rules:
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        seen: set[str] = set()
        while stack:
            name, trail = stack.pop()
            for ref in refs(name):
                if ref == start:
                    bad.append(start)
                    stack.clear()
                    break
                if ref not in seen and ref in rules:
                    seen.add(ref)
                    stack.append((ref, (*trail, ref)))
    return bad


def validate_pii_config(cfg: Any, path: str = "pii_config") -> list[Problem]:
    """Every problem in a PII config, with paths such as `pii_config.rules.r1.pattern`."""
    out: list[Problem] = []
    if not isinstance(cfg, dict):
        return [Problem(path, "expected a mapping with 'rules' and 'applications'")]
    for k in cfg:
        if k not in ("rules", "applications", "vars"):
            out.append(Problem(_p(path, str(k)), "unknown key"))
    rules = cfg.get("rules") or {}
    apps = cfg.get("applications") or {}
    vars_ = cfg.get("vars") or {}
    if not isinstance(rules, dict):
        out.append(Problem(_p(path, "rules"), "expected a mapping of rule names to rules"))
        rules = {}
    if not isinstance(apps, dict):
        out.append(
            Problem(_p(path, "applications"), "expected a mapping of selectors to rule lists")
        )
        apps = {}
    if not isinstance(vars_, dict) or any(k != "hashKey" for k in vars_):
        out.append(Problem(_p(path, "vars"), "only 'hashKey' is supported"))
    elif "hashKey" in vars_ and not isinstance(vars_["hashKey"], str):
        out.append(Problem(_p(path, "vars.hashKey"), "expected a string"))
    known = set(rules) | set(BUILTIN_RULES)
    for name, spec in rules.items():
        _check_rule(str(name), spec, _p(_p(path, "rules"), str(name)), known, out)
    for name in _cycles(rules):
        out.append(Problem(_p(_p(path, "rules"), name), "rule refers to itself"))
    for sel, names in apps.items():
        sel_path = _q(_p(path, "applications"), str(sel))
        try:
            parse_selector(str(sel))
        except SelectorError as exc:
            out.append(Problem(sel_path, f"invalid selector: {exc}"))
        if not isinstance(names, list):
            out.append(Problem(sel_path, "expected a list of rule names"))
            continue
        for i, name in enumerate(names):
            if not isinstance(name, str) or name not in known:
                out.append(Problem(f"{sel_path}[{i}]", f"undefined rule {name!r}"))
    return out


# --- compilation ------------------------------------------------------------------------------


def _redaction(spec: Any, ty: str, hash_key: bytes) -> Method | None:
    if not isinstance(spec, dict) or spec.get("method") in (None, "default"):
        return None
    method = spec["method"]
    if method == "replace":
        text = spec.get("text")
        return Method("replace", text if isinstance(text, str) else det.FILTERED)
    if method == "hash":
        key = spec.get("key")
        return Method("hash", hash_key=key.encode() if isinstance(key, str) else hash_key)
    return Method(method)


def _leaf(name: str, origin: str, spec: dict[str, Any], red: Method) -> Rule:
    ty = spec["type"]
    if ty == "pattern":
        groups = spec.get("replaceGroups")
        return Rule(
            origin,
            ty,
            red,
            pattern=compile_regex(spec["pattern"]),
            groups=frozenset(groups) if groups else None,
        )
    if ty == "redact_pair":
        # As in Sentry, the key pattern also reads the value: a match anywhere in it (or in
        # an attachment's content) redacts the whole.
        key_pattern = compile_regex(spec["keyPattern"])
        return Rule(origin, ty, red, key_patterns=(key_pattern,), value_whole=(key_pattern,))
    if ty == "password":
        return Rule(
            origin,
            ty,
            red,
            detectors=(det.BEARER,),
            key_patterns=(_TOKEN_KEY, _PASSWORD_KEY),
            value_whole=(_PASSWORD_KEY,),
        )
    if ty == "anything":
        return Rule(origin, ty, red)
    return Rule(origin, ty, red, detectors=det.BY_TYPE[ty])


def resolve_rule(
    name: str,
    rules: dict[str, Any],
    hash_key: bytes,
    origin: str | None = None,
    override: Method | None = None,
    depth: int = 0,
) -> list[Rule]:
    """Flatten `name` (alias/multiple included) into leaf rules."""
    spec = rules.get(name) if name in rules else BUILTIN_RULES.get(name)
    if spec is None or depth > 32:
        raise ValueError(f"undefined rule {name!r}")
    ty = spec["type"]
    own = _redaction(spec.get("redaction"), ty, hash_key)
    red = override or own
    if ty in ("multiple", "alias"):
        hide = bool(spec.get("hideInner", ty == "alias"))
        inner_origin = origin or (name if hide else None)
        targets = spec["rules"] if ty == "multiple" else [spec["rule"]]
        out: list[Rule] = []
        for target in targets:
            out += resolve_rule(target, rules, hash_key, inner_origin, red, depth + 1)
        return out
    if red is None:
        red = Method("remove")
    return [_leaf(name, origin or name, spec, red)]


@dataclass(frozen=True)
class Application:
    """A selector, its source text, and the rules it applies."""

    selector_text: str
    selector: Selector
    rules: tuple[Rule, ...]


def compile_pii_config(cfg: dict[str, Any] | None) -> list[Application]:
    """Compile a validated PII config; raise ValueError on anything invalid."""
    if not cfg:
        return []
    problems = validate_pii_config(cfg)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    rules = cfg.get("rules") or {}
    hash_key = str((cfg.get("vars") or {}).get("hashKey", "")).encode()
    out = []
    for sel, names in (cfg.get("applications") or {}).items():
        flat: list[Rule] = []
        for name in names:
            flat += resolve_rule(name, rules, hash_key)
        out.append(Application(sel, parse_selector(sel), tuple(flat)))
    return out


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping spans (earlier start wins)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            continue
        out.append((s, e))
    return out


def rewrite(
    value: str,
    spans: Sequence[tuple[int, int]],
    substitute: Callable[[str], str],
) -> tuple[str, list[tuple[int, int]]]:
    """Replace each span; return the new string and the spans' ranges in it."""
    parts: list[str] = []
    ranges: list[tuple[int, int]] = []
    pos = 0
    out_len = 0
    for s, e in spans:
        chunk = value[pos:s]
        parts.append(chunk)
        out_len += len(chunk)
        rep = substitute(value[s:e])
        parts.append(rep)
        ranges.append((out_len, out_len + len(rep)))
        out_len += len(rep)
        pos = e
    parts.append(value[pos:])
    return "".join(parts), ranges
