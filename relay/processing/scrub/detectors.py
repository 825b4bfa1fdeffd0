"""Value detectors: find PII and secrets inside strings.

A `Detector` is a regex that starts with a literal (its `anchor`) or a narrow
character class, plus a `verify` step in Python that checks the character before
the match (instead of a lookbehind, which would stop the regex engine from skipping
ahead), validates checksums (Luhn for cards, mod-97 for IBANs) and picks the span to
replace. Starting with a literal lets `re` jump from candidate to candidate, and the
anchor lets a whole detector be skipped when its literal does not occur at all.

`scan(entries, text)` runs many detectors over one text, usually all scannable
strings of an event joined with NUL, so an event costs one pass per detector whose
anchor is present instead of one regex call per string and rule. Overlaps are
resolved by entry order (earlier wins).

All patterns are linear: repetitions are bounded or followed by no choice point.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Generic, NamedTuple, TypeVar

import re2

#: Joins strings for one scan; no detector matches across it.
SEPARATOR = "\x00"
#: Text put in place of a redacted span, as Sentry writes it.
FILTERED = "[Filtered]"

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_WORD_DASH = _WORD | {"-"}
_WORD_DOT = _WORD | {"."}
_EMAIL_LOCAL = _WORD | frozenset(".!#$%&*+^~-")
_NOTHING: frozenset[str] = frozenset()
_PATH_BEFORE = frozenset(" \t\r\n\"'`=:([,$\x00")

Span = tuple[int, int]
Verify = Callable[[str, "re.Match[str]"], Span | None]


#: Each digit of an even position from the right, doubled, digits summed.
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")
_NOT_DIGIT = re.compile(r"[^0-9]+")


def luhn_ok(digits: str) -> bool:
    """Luhn checksum over the digits of `digits` (separators ignored)."""
    return _luhn_digits(_NOT_DIGIT.sub("", digits))


def _luhn_digits(digits: str) -> bool:
    """`luhn_ok` of a string of ASCII digits only."""
    rev = digits[::-1]
    # The byte values sum to the digit sum plus 48 per digit.
    total = sum((rev[0::2] + rev[1::2].translate(_LUHN_DOUBLE)).encode()) - 48 * len(rev)
    return total % 10 == 0


#: IBAN letters as the numbers ISO 13616 reads them (A = 10 ... Z = 35).
_IBAN_NUMBERS = str.maketrans({chr(65 + i): str(10 + i) for i in range(26)})


def iban_ok(text: str) -> bool:
    """ISO 13616 check: length 15..34 and mod-97 of the rearranged number is 1."""
    s = "".join(text.split()).upper()
    if not 15 <= len(s) <= 34 or not s.isascii() or not s.isalnum():
        return False
    return int((s[4:] + s[:4]).translate(_IBAN_NUMBERS)) % 97 == 1


def _prev(text: str, i: int) -> str:
    return text[i - 1] if i > 0 else SEPARATOR


def _next(text: str, i: int) -> str:
    return text[i] if i < len(text) else SEPARATOR


#: Per pattern: the numbers of the target groups it has, of `T`, `T2`, `T3` in this
#: order (see `_target`); bounded, as policies compile patterns of their own.
_TARGET_GROUPS: dict[re.Pattern[str], tuple[int, ...]] = {}


def _target_groups(pattern: re.Pattern[str]) -> tuple[int, ...]:
    groups = _TARGET_GROUPS.get(pattern)
    if groups is None:
        if len(_TARGET_GROUPS) > 4096:
            _TARGET_GROUPS.clear()
        index = pattern.groupindex
        groups = _TARGET_GROUPS[pattern] = tuple(index[n] for n in ("T", "T2", "T3") if n in index)
    return groups


def _target(m: re.Match[str]) -> Span:
    """The span of group `T` (or `T2`, `T3`) when it matched, else the whole match."""
    groups = _TARGET_GROUPS.get(m.re)
    if groups is None:
        groups = _target_groups(m.re)
    for group in groups:
        s, e = m.span(group)
        if s >= 0:
            return s, e
    return m.span()


class _NotAfter:
    """Verify: no match right after one of `chars`; the span is `_target`'s."""

    __slots__ = ("chars",)

    def __init__(self, chars: frozenset[str]) -> None:
        self.chars = chars

    def __call__(self, text: str, m: re.Match[str]) -> Span | None:
        s = m.start()
        if s and text[s - 1] in self.chars:
            return None
        return _target(m)


def _not_after(chars: frozenset[str]) -> Verify:
    return _NotAfter(chars)


def _whole(text: str, m: re.Match[str]) -> Span | None:
    return _target(m)


@dataclass(frozen=True)
class Detector:
    """One kind of value (`kind` is Sentry's rule type name where one exists).

    Parameters:
        kind: `email`, `ip`, `creditcard`, ... (rule type, used in reports).
        regex: compiled pattern, led by a literal or a narrow character class.
        verify: `(text, match) -> (start, end) | None`: the span to replace, or None.
        anchor: a literal that must occur in the text for the regex to possibly match.
        fold: the anchor is lowercase and the regex runs on the lowercased text.
        shape: the regex runs on `shape_of(text)` (digits as `0`, letters as `A`/`a`), so
            that digit patterns can start with a literal such as `0000`.
    """

    kind: str
    regex: re.Pattern[str]
    verify: Verify = _whole
    anchor: str | None = None
    fold: bool = False
    shape: bool = False
    anchor_count: int = 1
    #: re2 pattern that must match somewhere for the detector to possibly match (prefilter).
    trigger: str | None = None

    def trigger_pattern(self) -> str:
        if self.trigger is not None:
            return self.trigger
        if self.anchor is not None:
            escaped = re2.escape(self.anchor)
            return f"(?i){escaped}" if self.fold else escaped
        return "(?s)."

    def spans(self, text: str, low: str | None, shape: str | None = None) -> list[Span]:
        """Spans to replace in `text`.

        `low` is `text.lower()` when it has the same length, `shape` is `shape_of(text)`.
        """
        hay = text
        if self.shape:
            hay = shape if shape is not None else shape_of(text)
        elif self.fold:
            if low is None:
                return self._spans_unfolded(text)
            hay = low
        anchor = self.anchor
        if anchor is not None:
            if self.anchor_count > 1:
                if hay.count(anchor) < self.anchor_count:
                    return []
            elif anchor not in hay:
                return []
        out: list[Span] = []
        verify = self.verify
        # `_whole` and `_NotAfter` inlined (one call per match less).
        if verify is _whole or type(verify) is _NotAfter:
            after = verify.chars if type(verify) is _NotAfter else _NOTHING
            groups = _target_groups(self.regex)
            for m in self.regex.finditer(hay):
                s = m.start()
                if s and text[s - 1] in after:
                    continue
                for group in groups:
                    s, e = m.span(group)
                    if s >= 0:
                        break
                else:
                    s, e = m.span()
                if s < e:
                    out.append((s, e))
            return out
        for m in self.regex.finditer(hay):
            span = verify(text, m)
            if span is not None and span[0] < span[1]:
                out.append(span)
        return out

    def _spans_unfolded(self, text: str) -> list[Span]:
        regex = re.compile(self.regex.pattern, re.IGNORECASE)
        out: list[Span] = []
        for m in regex.finditer(text):
            span = self.verify(text, m)
            if span is not None and span[0] < span[1]:
                out.append(span)
        return out


def _d(
    kind: str,
    pattern: str,
    verify: Verify = _whole,
    anchor: str | None = None,
    fold: bool = False,
    shape: bool = False,
    trigger: str | None = None,
) -> Detector:
    return Detector(kind, re.compile(pattern), verify, anchor, fold, shape, trigger=trigger)


_SHAPE_TABLE = str.maketrans(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "0" * 10 + "A" * 26 + "a" * 26,
)


_SHAPE_BYTES = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"0" * 10 + b"A" * 26 + b"a" * 26,
)


def shape_of(text: str) -> str:
    """`text` with every ASCII digit as `0`, upper-case letter as `A`, lower-case as `a`."""
    if text.isascii():
        # The same mapping, through a byte table (much faster than a str table).
        return text.encode("ascii").translate(_SHAPE_BYTES).decode("ascii")
    return text.translate(_SHAPE_TABLE)


def _expand_digits_left(text: str, s: int, most: int) -> int:
    i = s
    while i > s - most and i > 0 and text[i - 1].isdigit() and text[i - 1].isascii():
        i -= 1
    return i


# --- e-mail ----------------------------------------------------------------------------------

_EMAIL_DOMAIN = re.compile(r"@[a-zA-Z0-9-]{1,63}(?:\.[a-zA-Z0-9-]{1,63}){0,8}\.[a-zA-Z]{2,24}\b")


#: The local part of an address, read backwards from the `@` (`_EMAIL_LOCAL`).
_EMAIL_LOCAL_RUN = re.compile(r"[A-Za-z0-9_.!#$%&*+^~-]*")


def _verify_email(text: str, m: re.Match[str]) -> Span | None:
    at = m.start()
    if not at or text[at - 1] not in _EMAIL_LOCAL:
        return None
    limit = max(0, at - 256)
    run = _EMAIL_LOCAL_RUN.match(text[limit:at][::-1])
    assert run is not None  # `*` matches the empty string
    return at - run.end(), m.end()


EMAIL = Detector(
    "email", _EMAIL_DOMAIN, _verify_email, anchor="@", trigger=r"@[a-zA-Z0-9-]+\.[a-zA-Z]{2}"
)
#: An address with its `@` percent-encoded (`alice%40example.com`), as query strings and
#: form bodies carry it; the local part is read back from `%40` as for `EMAIL`.
EMAIL_ENCODED = Detector(
    "email",
    re.compile(r"%40[a-zA-Z0-9-]{1,63}(?:\.[a-zA-Z0-9-]{1,63}){0,8}\.[a-zA-Z]{2,24}\b"),
    _verify_email,
    anchor="%40",
    trigger=r"%40[a-zA-Z0-9-]+\.[a-zA-Z]{2}",
)

# --- IP addresses ------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV4_RE = re.compile(_IPV4)


def _verify_ipv4(text: str, m: re.Match[str]) -> Span | None:
    s = _expand_digits_left(text, m.start(), 2)
    e = m.end()
    if _prev(text, s) in _WORD_DOT or not _IPV4_RE.fullmatch(text, s, e):
        return None
    nxt = _next(text, e)
    if nxt in _WORD or (nxt == "." and _next(text, e + 1).isdigit()):
        return None
    return s, e


IPV4 = _d(
    "ip",
    r"0\.0{1,3}\.0{1,3}\.0{1,3}",
    _verify_ipv4,
    anchor="0.0",
    shape=True,
    trigger=r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
)

_H = r"[0-9a-fA-F]{1,4}"
_IPV6_FULL = re.compile(
    rf"(?:{_H}:){{7}}{_H}"
    rf"|(?:{_H}:){{1,6}}:(?:{_H}(?::{_H}){{0,5}})?"
    rf"|::(?:ffff:(?:0{{1,4}}:)?)?{_IPV4}"
    rf"|::{_H}(?::{_H}){{0,6}}"
    rf"|(?:{_H}:){{1,4}}:?{_IPV4}"
)
_HEX = frozenset("0123456789abcdefABCDEF")


def _verify_ipv6(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    left = s
    while left > s - 40 and left > 0 and (text[left - 1] in _HEX or text[left - 1] == ":"):
        left -= 1
    if _prev(text, left) in _WORD_DOT or _prev(text, left) == ":":
        return None
    while e > s:
        cand = text[left:e]
        nxt = _next(text, e)
        if (
            nxt not in _WORD
            and (nxt != ":" or _next(text, e + 1) not in _HEX)
            and _IPV6_FULL.fullmatch(cand)
        ):
            if (
                cand.count(":") >= 2
                and ("::" in cand or cand.count(":") == 7 or "." in cand)
                and any(ch.isdigit() for ch in cand)
            ):
                return left, e
            return None
        if text[e - 1] in ".:":
            e -= 1
            continue
        return None
    return None


IPV6 = _d("ip", r"::[0-9a-fA-F:.]{0,43}", _verify_ipv6, anchor="::")
IPV6_FULL = Detector(
    "ip",
    re.compile(
        r":[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:"
        r"[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}"
    ),
    _verify_ipv6,
    anchor=":",
    anchor_count=7,
    trigger=r"[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4}){7}",
)

# --- cards, IBANs, SSNs ----------------------------------------------------------------------------


_CARD_PREFIX = re.compile(r"3[47]|4|5[1-5]|2[2-7]|6011|65")


_DIGIT_RUN = re.compile(r"[0-9]+")


def _verify_card(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    if (s and text[s - 1] in _WORD_DASH) or not _CARD_PREFIX.match(text, s):
        return None
    # The match holds ASCII digits, spaces and dashes only (its shape is `0`, ` `, `-`).
    digits = text[s:e].replace(" ", "").replace("-", "")
    if len(digits) <= 19 and _luhn_digits(digits):
        return s, e
    # A card followed by more digit groups is still a card: try shorter runs that end
    # where a group ends, longest first.
    ends = [run.end() for run in _DIGIT_RUN.finditer(text, s, e)]
    for end in reversed(ends[:-1]):
        digits = text[s:end].replace(" ", "").replace("-", "")
        if len(digits) < 13:
            break
        if len(digits) <= 19 and _luhn_digits(digits):
            return s, end
    return None


CREDITCARD = _d(
    "creditcard",
    r"0000(?:[ -]?0){9,15}(?![\w-])",
    _verify_card,
    anchor="0000",
    shape=True,
    trigger=r"[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]",
)

_IBAN_COUNTRIES = (
    "AT|AD|AE|AL|AZ|BA|BE|BG|BH|BR|BY|CH|CR|CY|CZ|DE|DK|DO|EE|EG|ES|FI|FO|FR|GB|GE|GI|GL|GR|GT|"
    "HR|HU|IE|IL|IQ|IS|IT|JO|KW|KZ|LB|LC|LI|LT|LU|LV|LY|MC|MD|ME|MK|MR|MT|MU|NL|NO|PK|PL|PS|PT|"
    "QA|RO|RU|RS|SA|SC|SE|SI|SK|SM|ST|SV|TL|TN|TR|UA|VA|VG|XK|DZ|AO|BJ|BF|BI|CV|CM|CF|TD|KM|CG|"
    "CI|DJ|GQ|GA|GW|HN|IR|MG|ML|MA|MZ|NI|NE|SN|TG"
)


_IBAN_COUNTRY_SET = frozenset(_IBAN_COUNTRIES.split("|"))


def _verify_iban(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    if _prev(text, s) in _WORD or text[s : s + 2] not in _IBAN_COUNTRY_SET:
        return None
    if not iban_ok(text[s:e]):
        return None
    return s, e


IBAN = _d(
    "iban",
    r"AA00(?:[aA0]{11,30}|(?: [aA0]{4}){2,7}(?: [aA0]{1,3})?)(?!\w)",
    _verify_iban,
    anchor="AA00",
    shape=True,
    trigger=r"[A-Z]{2}[0-9]{2} ?[a-zA-Z0-9]{4}",
)
#: `ddd-dd-dddd` standing alone, whatever the area number: Sentry's `usssn` finds every
#: such number (ITINs start with 9; numbers never issued still look like one).
USSSN = _d(
    "usssn",
    r"000-00-0000(?![\w-])",
    _not_after(_WORD_DASH),
    anchor="000-00-0000",
    shape=True,
    trigger=r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
)

# --- keys, URLs, paths -----------------------------------------------------------------------------

_PEM_LABEL = r"[A-Z ]{1,40}(?:PRIVATE|PUBLIC) KEY(?: BLOCK)?-----"
#: The body of a PEM key or PGP key block. Without an END line (SDKs cut long strings)
#: the body runs to the end of its string: `(?![^\x00])` is the end or a separator.
PEMKEY = _d(
    "pemkey",
    rf"-----BEGIN{_PEM_LABEL}[\t ]*\r?\n?"
    rf"(?P<T>[^\x00]+?)(?:\r?\n?-----END{_PEM_LABEL}|(?![^\x00]))",
    anchor="-----BEGIN",
)
#: `//user:password@`: only the password (Sentry's legacy rule). The user may be empty
#: (`redis://:password@host`, as redis-py and Celery write it).
URL_PASSWORD = _d(
    "urlauth",
    r"//[^\s/@:?#\x00]{0,256}:(?P<T>[^\s/@?#\x00]{1,256})@",
    anchor="//",
    trigger=r"//[^\s/@:?#]*:[^\s/@?#]+@",
)
#: `//user[:password]@`: the whole credentials part (Sentry's `urlauth` type), also
#: `//:password@`.
URL_AUTH = _d(
    "urlauth",
    r"//(?P<T>[^\s/@:?#\x00]{0,256}(?::[^\s/@?#\x00]{1,256})?)@",
    anchor="//",
)


def _verify_userpath(text: str, m: re.Match[str]) -> Span | None:
    s = m.start()
    word = m.group("W")
    prev = _prev(text, s)
    if word == "profiles":
        if prev not in "/\\":
            return None
    elif prev in _PATH_BEFORE:
        pass
    elif prev in "/\\":
        i = s - 1
        before = _prev(text, i)
        if before == ":" and _prev(text, i - 1).isalpha():
            before = _prev(text, i - 2)
        if before not in _PATH_BEFORE:
            return None
    else:
        return None
    return _target(m)


USERPATHS: tuple[Detector, ...] = tuple(
    _d(
        "userpath",
        rf"(?P<W>{word})[\\/](?P<T>[^/\\\s\"'`\r\n\x00]{{1,256}})",
        _verify_userpath,
        anchor=word,
        fold=True,
        trigger=rf"(?i){word}[\\/]",
    )
    for word in ("users", "home", "documents and settings", "profiles")
)

# --- tokens ------------------------------------------------------------------------------------------


def _verify_stripe(text: str, m: re.Match[str]) -> Span | None:
    s = m.start() - 2
    if s < 0 or text[s : m.start()] not in ("sk", "rk") or _prev(text, s) in _WORD:
        return None
    return s, m.end()


BEARER = _d(
    "bearer", r"bearer\s{1,8}[^\s\"',;\x00]{4,}", _not_after(_WORD), anchor="bearer", fold=True
)
JWT = _d(
    "jwt",
    r"eyJ[\w-]{4,}\.eyJ[\w-]{2,}\.[\w-]*",
    _not_after(_WORD_DASH),
    anchor="eyJ",
    trigger=r"eyJ[\w-]+\.eyJ",
)
SECRET_TOKENS: tuple[Detector, ...] = (
    JWT,
    _d(
        "awskey",
        r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)[A-Z0-9]{16}(?![A-Z0-9])",
        _not_after(frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")),
        trigger=r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)[A-Z0-9]{16}",
    ),
    _d("githubtoken", r"gh[pousr]_[A-Za-z0-9]{36,255}(?!\w)", _not_after(_WORD), anchor="gh"),
    _d("githubtoken", r"github_pat_[A-Za-z0-9_]{22,255}", _not_after(_WORD), anchor="github_pat_"),
    _d(
        "gitlabtoken",
        r"gl(?:pat|dt|rt|ptt|ft|cbt|oas|soat|imt)-[\w-]{20,64}",
        _not_after(_WORD_DASH),
        anchor="gl",
    ),
    _d("slacktoken", r"xox[abposre]-[A-Za-z0-9-]{10,}", _not_after(_WORD_DASH), anchor="xox"),
    _d(
        "slacktoken",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{8,}",
        anchor="hooks.slack.com",
    ),
    *(
        _d("stripekey", rf"{mode}[A-Za-z0-9]{{10,}}(?!\w)", _verify_stripe, anchor=mode)
        for mode in ("_live_", "_test_")
    ),
    _d("stripekey", r"whsec_[A-Za-z0-9]{20,}", _not_after(_WORD), anchor="whsec_"),
    _d("googlekey", r"AIza[0-9A-Za-z_-]{35}(?![\w-])", _not_after(_WORD_DASH), anchor="AIza"),
    _d("googlekey", r"ya29\.[0-9A-Za-z_-]{20,}", _not_after(_WORD_DASH), anchor="ya29."),
    _d("googlekey", r"GOCSPX-[\w-]{20,}", _not_after(_WORD_DASH), anchor="GOCSPX-"),
    _d("apitoken", r"sntry[su]_[A-Za-z0-9+/=_]{20,}", _not_after(_WORD_DASH), anchor="sntry"),
    _d("apitoken", r"npm_[A-Za-z0-9]{36}", _not_after(_WORD_DASH), anchor="npm_"),
    _d("apitoken", r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}", _not_after(_WORD_DASH), anchor="sk-"),
    _d("apitoken", r"xapp-[0-9]-[A-Za-z0-9-]{20,}", _not_after(_WORD_DASH), anchor="xapp-"),
)

#: `pass=`, `pwd=`, `pin=` (and `passcode=`, `pincode=`) as a query-string parameter: the
#: value up to the next parameter. Only after `?` or `&`, so that words such as
#: `passenger=` or prose (`tests passed: 3`) are left alone.
QUERY_PASSWORD = _d(
    "password",
    r"[?&](?:pass(?:code)?|pwd|pin(?:code)?)=(?P<T>[^&#\s\"'<>\x00]{1,512})",
    fold=True,
    trigger=r"(?i)[?&](?:pass|pwd|pin)(?:code)?=[^&#\s]",
)
#: Session cookies in free text (a `Cookie:` header logged as a string): `session=`,
#: `<app>_session=` (Rails, Laravel, Sanic, aiohttp) and Express's `connect.sid=`.
#: `sessionid=` and `PHPSESSID=` are `ASSIGNMENT_KEYWORDS`' (`sess`).
SESSION_COOKIES: tuple[Detector, ...] = tuple(
    _d(
        "password",
        rf"{re.escape(name)}=(?P<T>[^\s\"',;&)<>\]}}\x00]{{1,512}})",
        anchor=f"{name}=",
        fold=True,
        trigger=rf"(?i){re2.escape(name)}=[^\s\"',;&)<>\]}}]",
    )
    for name in ("session", "connect.sid")
)

#: Key words (lowercase regex, led by a literal) that, followed by `=` or `:` in free
#: text, introduce a secret value.
ASSIGNMENT_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("pass", r"pass(?:w(?:or)?d|phrase)"),
    ("pwd", r"pwd"),
    ("secret", r"secret"),
    ("token", r"token"),
    ("key", r"key"),
    ("auth", r"auth(?:orization|[-_]?token)"),
    ("credential", r"credentials?"),
    ("sess", r"sess(?:ion[-_]?id|id)"),
)
_KEY_PREFIXES = ("api", "api_", "api-", "access_", "access-", "access", "private_", "private")

_ASSIGN_TAIL = (
    r"[\w.-]{0,24}[\"']?[ \t]{0,4}(?:=|:(?!//))[ \t]{0,4}"
    r"(?:\"(?P<T>[^\"\n\x00]{1,512})\"|'(?P<T2>[^'\n\x00]{1,512})'"
    r"|(?P<T3>(?:(?:bearer|basic|token|digest)[ \t]+)?[^\s\"',;&)<>\]}\x00]{1,512}))"
)


def _verify_key_assignment(text: str, m: re.Match[str]) -> Span | None:
    s = m.start()
    low = text[max(0, s - 8) : s].lower()
    if not low.endswith(_KEY_PREFIXES):
        return None
    return _target(m)


def assignment_detectors(extra_keywords: Sequence[str] = ()) -> list[Detector]:
    """`<...keyword...> = value` / `: value` in free text; the value is replaced.

    `extra_keywords` are literal field names (the policy's `sensitive_fields`).
    """
    out = []
    for anchor, word in ASSIGNMENT_KEYWORDS:
        verify = _verify_key_assignment if anchor == "key" else _whole
        trigger = rf"(?i){word}[\w.-]*[\"']?[ \t]*[:=]"
        out.append(
            _d("password", word + _ASSIGN_TAIL, verify, anchor=anchor, fold=True, trigger=trigger)
        )
    for extra in dict.fromkeys(w.strip().lower() for w in extra_keywords if w.strip()):
        trigger = rf"(?i){re2.escape(extra)}[\w.-]*[\"']?[ \t]*[:=]"
        out.append(
            _d(
                "password",
                re.escape(extra) + _ASSIGN_TAIL,
                anchor=extra,
                fold=True,
                trigger=trigger,
            )
        )
    return out


#: Detectors usable as Sentry rule types, by type name.
BY_TYPE: dict[str, tuple[Detector, ...]] = {
    "email": (EMAIL,),
    "ip": (IPV4, IPV6, IPV6_FULL),
    "creditcard": (CREDITCARD,),
    "iban": (IBAN,),
    "pemkey": (PEMKEY,),
    "urlauth": (URL_AUTH,),
    "usssn": (USSSN,),
    "userpath": USERPATHS,
    "bearer": (BEARER,),
    "mac": (
        _d(
            "mac",
            r"[0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5}(?![\w])",
            _not_after(_WORD),
        ),
    ),
    "uuid": (
        _d(
            "uuid",
            r"[a-zA-Z0-9]{8}-?[a-zA-Z0-9]{4}-?[a-zA-Z0-9]{4}-?[a-zA-Z0-9]{4}-?[a-zA-Z0-9]{12}(?!\w)",
            _not_after(_WORD),
        ),
    ),
    "imei": (_d("imei", r"[0-9]{2}-?[0-9]{6}-?[0-9]{6}-?[0-9]{1,2}(?!\w)", _not_after(_WORD)),),
}

# --- scanning --------------------------------------------------------------------------------------

P = TypeVar("P")


class Hit(NamedTuple, Generic[P]):
    """A span [start, end) of the scanned text and the payload of the entry that found it."""

    start: int
    end: int
    what: P


def scan(entries: Sequence[tuple[Detector, P]], text: str) -> list[Hit[P]]:
    """Run every detector over `text`; non-overlapping hits, left to right.

    Where two hits overlap the one from the earlier entry wins.
    """
    if not entries or len(text) < 3:
        return []
    low: str | None = None
    if any(d.fold for d, _ in entries):
        low = text.lower()
        if len(low) != len(text):
            low = None
    shape = shape_of(text) if any(d.shape for d, _ in entries) else None
    found: list[tuple[list[Span], P]] = []
    for det, what in entries:
        spans = det.spans(text, low, shape)
        if spans:
            found.append((spans, what))
    if not found:
        return []
    # Earlier entries first, each left to right (a stable sort: equal starts keep their
    # order); a span overlapping one already taken is dropped.
    for spans, _ in found:
        if len(spans) > 1:
            spans.sort(key=_START)
    if sum(len(spans) for spans, _ in found) > _MERGE_AT:
        return _merged(found)
    starts: list[int] = []
    ends: list[int] = []
    whats: list[P] = []
    for spans, what in found:
        for s, e in spans:
            i = bisect_right(starts, s)
            if i and ends[i - 1] > s:
                continue
            if i < len(starts) and starts[i] < e:
                continue
            starts.insert(i, s)
            ends.insert(i, e)
            whats.insert(i, what)
    return [_new_hit(Hit, hit) for hit in zip(starts, ends, whats, strict=True)]


#: Above this many hits in one text, `scan` merges each entry's sorted hits with those
#: taken in one pass (`_merged`) instead of inserting them one by one: inserting is
#: quadratic (a 20 MB log with a hit on every line took 22 s), merging costs more
#: Python steps per hit when there are few.
_MERGE_AT = 512


def _merged(found: list[tuple[list[Span], P]]) -> list[Hit[P]]:
    """`scan`'s overlap rule over many hits: each entry's spans (sorted) merged into
    those taken before in one pass over both."""
    taken: list[tuple[int, int, P]] = []
    for spans, what in found:
        merged: list[tuple[int, int, P]] = []
        j, n = 0, len(taken)
        for s, e in spans:
            while j < n and taken[j][0] <= s:
                merged.append(taken[j])
                j += 1
            if merged and merged[-1][1] > s:
                continue
            if j < n and taken[j][0] < e:
                continue
            merged.append((s, e, what))
        if j < n:
            merged.extend(taken[j:])
        taken = merged
    return [_new_hit(Hit, hit) for hit in taken]


_START = itemgetter(0)
#: Builds a `Hit` from a tuple without the Python-level `__new__` of named tuples.
_new_hit: Callable[[type[Hit[Any]], tuple[int, int, Any]], Hit[Any]] = tuple.__new__

_SET_OPTIONS = re2.Options()
_SET_OPTIONS.log_errors = False
_SET_OPTIONS.max_mem = 32 << 20


class Scanner(Generic[P]):
    """`scan` with a prefilter: one re2 set pass tells which detectors can match at all.

    Parameters:
        entries: (detector, payload) pairs in priority order, as for `scan`.
    """

    def __init__(self, entries: Sequence[tuple[Detector, P]]) -> None:
        self.entries = tuple(entries)
        self._set: Any = None
        if not self.entries:
            return
        rset = re2.Set.SearchSet(_SET_OPTIONS)
        for d, _ in self.entries:
            rset.Add(d.trigger_pattern())
        rset.Compile()
        self._set = rset

    def scan(self, text: str) -> list[Hit[P]]:
        if self._set is None or len(text) < 3:
            return []
        found = self._set.Match(text.encode("utf-8", "surrogatepass"))
        if not found:
            return []
        if len(found) == len(self.entries):
            return scan(self.entries, text)
        entries = self.entries
        return scan([entries[i] for i in sorted(found)], text)
