"""The fast helpers of the value detectors give the same answers as plain references.

Checksums, the shape translation, the card and e-mail verification and the overlap
resolution of `scan` are written for speed; each is compared here with a direct,
character-by-character version on random and on detector-shaped inputs.
"""

from __future__ import annotations

import re
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.processing.scrub import detectors as det

_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_CARD_PREFIX = re.compile(r"3[47]|4|5[1-5]|2[2-7]|6011|65")
_EMAIL_LOCAL = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.!#$%&*+^~-"
)


def ref_luhn(digits: str) -> bool:
    rev = "".join(ch for ch in digits if "0" <= ch <= "9")[::-1]
    total = sum(int(c) for c in rev[0::2]) + sum(_LUHN_DOUBLE[int(c)] for c in rev[1::2])
    return total % 10 == 0


def ref_iban(text: str) -> bool:
    s = "".join(text.split()).upper()
    if not 15 <= len(s) <= 34:
        return False
    num = 0
    for ch in s[4:] + s[:4]:
        if "0" <= ch <= "9":
            num = (num * 10 + ord(ch) - 48) % 97
        elif "A" <= ch <= "Z":
            num = (num * 100 + ord(ch) - 55) % 97
        else:
            return False
    return num == 1


def ref_shape(text: str) -> str:
    out = []
    for ch in text:
        if "0" <= ch <= "9":
            out.append("0")
        elif "A" <= ch <= "Z":
            out.append("A")
        elif "a" <= ch <= "z":
            out.append("a")
        else:
            out.append(ch)
    return "".join(out)


def ref_card(text: str, m: re.Match[str]) -> det.Span | None:
    s, e = m.span()
    if (s > 0 and text[s - 1] in det._WORD_DASH) or not _CARD_PREFIX.match(text, s):
        return None
    digits = text[s:e].replace(" ", "").replace("-", "")
    if len(digits) <= 19 and ref_luhn(digits):
        return s, e
    for end in range(e - 1, s, -1):
        if not text[end - 1].isdigit() or text[end].isdigit():
            continue
        digits = text[s:end].replace(" ", "").replace("-", "")
        if len(digits) < 13:
            break
        if len(digits) <= 19 and ref_luhn(digits):
            return s, end
    return None


def ref_email(text: str, m: re.Match[str]) -> det.Span | None:
    at = m.start()
    i = at
    limit = max(0, at - 256)
    while i > limit and text[i - 1] in _EMAIL_LOCAL:
        i -= 1
    return None if i == at else (i, m.end())


def _spans_with(d: det.Detector, verify: det.Verify, text: str) -> list[det.Span]:
    hay = det.shape_of(text) if d.shape else text
    out = []
    for m in d.regex.finditer(hay):
        span = verify(text, m)
        if span is not None and span[0] < span[1]:
            out.append(span)
    return out


_DIGITY = st.text(alphabet="0123456789 -x.\u0663", max_size=40)
_ANY = st.text(max_size=60)
_GROUPS = st.lists(
    st.tuples(st.text(alphabet="0123456789", min_size=1, max_size=6), st.sampled_from(" -")),
    min_size=1,
    max_size=8,
).map(lambda gs: "".join(d + sep for d, sep in gs).rstrip(" -"))
_IBANISH = st.builds(
    lambda cc, rest, spaced: (
        cc + (" ".join(rest[i : i + 4] for i in range(0, len(rest), 4)) if spaced else rest)
    ),
    st.sampled_from(["DE", "GB", "FR", "de", "XX", "\u0131", "\u00df"]),
    st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabc\u017f", min_size=2, max_size=34),
    st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_DIGITY, _ANY, _GROUPS))
def test_luhn_matches_reference(text: str) -> None:
    assert det.luhn_ok(text) == ref_luhn(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_IBANISH, _ANY, _DIGITY))
def test_iban_matches_reference(text: str) -> None:
    assert det.iban_ok(text) == ref_iban(text)


@settings(max_examples=300, deadline=None)
@given(_ANY)
def test_shape_matches_reference(text: str) -> None:
    assert det.shape_of(text) == ref_shape(text)
    assert det.shape_of(text.encode("ascii", "ignore").decode()) == ref_shape(
        text.encode("ascii", "ignore").decode()
    )


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["", "a", "-", " ", "(", "x4"]),
    st.sampled_from(["4", "5", "37", "6011", "2", "65", "1", ""]),
    _GROUPS,
    st.sampled_from(["", " ", "-", "a", ".", " 12", "-3"]),
)
def test_card_spans_match_reference(before: str, lead: str, body: str, after: str) -> None:
    text = before + lead + body + after
    assert det.CREDITCARD.spans(text, None) == _spans_with(det.CREDITCARD, ref_card, text)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["@", "@example.com", "a.b@c.de", " ", "!", "日", "x" * 300]),
            st.text(alphabet="ab.-_+@ \x00é", max_size=8),
        ),
        max_size=8,
    ).map("".join)
)
def test_email_spans_match_reference(text: str) -> None:
    assert det.EMAIL.spans(text, None) == _spans_with(det.EMAIL, ref_email, text)


def ref_scan(entries: list[tuple[det.Detector, int]], text: str) -> list[tuple[int, int, int]]:
    """Every detector's spans; by entry order then start, keep those overlapping none kept."""
    low = text.lower() if len(text.lower()) == len(text) else None
    found = [
        (prio, s, e, what)
        for prio, (d, what) in enumerate(entries)
        for s, e in d.spans(text, low, det.shape_of(text))
    ]
    found.sort(key=lambda f: (f[0], f[1]))
    kept: list[tuple[int, int, int]] = []
    for _, s, e, what in found:
        if all(e <= ks or ke <= s for ks, ke, _ in kept):
            kept.append((s, e, what))
    return sorted(kept)


_PIECES = st.sampled_from(
    [
        "4111 1111 1111 1111",
        "alice@example.com",
        "https://user:pa55@host.example.com/x",
        "token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "10.0.0.1",
        "2001:db8::1",
        "password=hunter2",
        "Bearer abcdef1234",
        "DE89 3704 0044 0532 0130 00",
        "/home/bob/x",
        " ",
        "\x00",
        "a@b.co@c.de",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=8).map("".join))
def test_scan_resolves_overlaps_like_reference(text: str) -> None:
    entries = [
        (d, i)
        for i, d in enumerate(
            [
                det.URL_PASSWORD,
                det.JWT,
                *det.assignment_detectors(),
                det.BEARER,
                det.EMAIL,
                det.IBAN,
                det.CREDITCARD,
                det.IPV4,
                det.IPV6,
                det.IPV6_FULL,
                *det.USERPATHS,
            ]
        )
    ]
    want = ref_scan(entries, text)
    # Both ways of resolving overlaps: inserting hits one by one, and merging (many hits).
    for merge_at in (det._MERGE_AT, 0):
        with mock.patch.object(det, "_MERGE_AT", merge_at):
            got = [(h.start, h.end, h.what) for h in det.scan(entries, text)]
        assert got == want or len(text) < 3
