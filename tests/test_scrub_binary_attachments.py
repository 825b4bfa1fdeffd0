"""Binary attachments through the `pii_config` rules that select them, as Sentry's Relay
scrubs them (relay-pii `attachments.rs`): the bytes searched as they are and as UTF-16LE
text, every match overwritten in place, the length kept.

The vectors marked "Relay" are the byte inputs and outputs of Relay's own tests
(`test_ip_replace_padding`, `test_ip_hash_trunchating`, `test_selectors`,
`test_all_the_bytes`, `test_bytes_regexes`, `test_segments_*`, `test_swap_content_wstr`),
with Relay's padding character `*`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.dryrun import dry_run, print_reports
from relay.processing.scrub import binary, compile_scrubber, items
from relay.processing.scrub.binary import MIN_WIDE_CHARS, scrub_binary
from relay.processing.scrub.content import read_text
from relay.processing.scrub.items import Unread
from relay.processing.scrub.rules import Rule, compile_pii_config
from relay.protocol.envelope import Envelope, make_envelope, parse_envelope
from tests.processing.scrub.conftest import OFF, cfg
from tests.support.relay import RelayFactory, auth_header, make_config
from tests.support.upstream import RecordingUpstream

EVENT_ID = "fe4272fa94e54186acc6e75b1bb21a2c"
#: A PNG signature: 8 bytes, so UTF-16 text after it stays on even offsets.
PNG = b"\x89PNG\r\n\x1a\n"
EMAIL = "alice.smith@example.com"
CARD = "4111 1111 1111 1111"


def u16(text: str) -> bytes:
    return text.encode("utf-16-le")


def rules_of(selector: str, *names: str, **pii: Any) -> list[Rule]:
    apps = compile_pii_config({"applications": {selector: list(names)}, **pii})
    return list(apps[0].rules)


def pattern_rules(pattern: str, method: str = "remove", **redaction: Any) -> list[Rule]:
    rule = {"type": "pattern", "pattern": pattern, "redaction": {"method": method, **redaction}}
    return rules_of("$binary", "custom", rules={"custom": rule})


def run(rules: list[Rule], data: bytes, filename: str = "foo.txt") -> bytes:
    new, _ = scrub_binary(rules, data, filename)
    return data if new is None else new


def envelope(payload: bytes, filename: str = "screen.png", **headers: Any) -> Envelope:
    header = {"type": "attachment", "filename": filename, **headers}
    built = make_envelope({"event_id": EVENT_ID}, [(header, payload)])
    return parse_envelope(built.serialize())


#: An application naming another attachment: as in Sentry, binary attachments are
#: rewritten only when some application names an attachment.
GATE = {"$attachments.'other.log'": ["@ip:mask"]}


def scrub(
    payload: bytes,
    applications: dict[str, list[str]],
    filename: str = "screen.png",
    *,
    gate: bool = True,
    attachment_type: str | None = None,
    **pii: Any,
) -> tuple[bytes, Any, dict[int, Unread]]:
    """`payload` as a binary attachment (of `attachment_type`, if given) through a policy
    with only `applications` (and, with `gate`, `GATE`)."""
    assert read_text(payload) is None, "the payload must read as binary"
    typed = {} if attachment_type is None else {"attachment_type": attachment_type}
    env = envelope(payload, filename, **typed)
    if gate:
        applications = {**GATE, **applications}
    scrubber = compile_scrubber(cfg(**OFF, pii_config={"applications": applications, **pii}))
    notes: dict[int, Unread] = {}
    report = items.scrub_envelope(scrubber, env, notes=notes)
    out = env.items[0].payload
    assert len(out) == len(payload)
    return out, report, notes


# --- Relay's vectors -------------------------------------------------------------------------

BEFORE = "before 127.0.0.1 after"
IP_VECTORS = [
    # (rule, input, output); each also in UTF-16LE.
    ("@ip", BEFORE, "before [ip]***** after"),
    ("@ip:mask", BEFORE, "before ********* after"),
    ("@ip:remove", BEFORE, "before ********* after"),
]


@pytest.mark.parametrize(("rule", "given", "expected"), IP_VECTORS)
@pytest.mark.parametrize("encode", [str.encode, u16], ids=["utf8", "utf16le"])
def test_relay_ip_vectors(rule: str, given: str, expected: str, encode: Any) -> None:
    rules = rules_of("$binary", rule)
    assert run(rules, encode(given)) == encode(expected)
    # The same inside a binary attachment selected by `$binary`.
    out, _, _ = scrub(PNG + encode(given), {"$binary": [rule]})
    assert out == PNG + encode(expected)


def test_relay_hash_vectors_truncate_the_digest_to_the_match() -> None:
    """Relay: the HMAC-SHA1 of the matched bytes (UTF-16LE bytes in UTF-16 text), no key."""
    rules = rules_of("$binary", "@ip:hash")
    assert run(rules, BEFORE.encode()) == b"before AE12FE3B5 after"
    assert run(rules, u16(BEFORE)) == u16("before 3FA8F5A46 after")


def test_hash_uses_the_configured_key() -> None:
    rules = rules_of("$binary", "@ip:hash", vars={"hashKey": "org-salt"})
    digest = hmac.new(b"org-salt", b"127.0.0.1", hashlib.sha1).hexdigest().upper()
    assert run(rules, BEFORE.encode()) == f"before {digest[:9]} after".encode()


@pytest.mark.parametrize(
    "selector",
    ["$string", "$number", "$attachments.* && $string", "$attachments", "** && !$binary"],
)
def test_relay_selectors_that_do_not_select_an_attachment(selector: str) -> None:
    payload = PNG + BEFORE.encode()
    out, report, notes = scrub(payload, {selector: ["@ip:mask"]})
    assert out == payload
    assert report.changed_items == [] and report.redactions == []
    assert notes[0].why == "binary content (PNG image)"


@pytest.mark.parametrize(
    "selector",
    ["$binary", "**", "$attachments.**", "$attachments.*", "$attachments.'screen.png'"],
)
def test_selectors_that_select_an_attachment(selector: str) -> None:
    out, report, notes = scrub(PNG + BEFORE.encode(), {selector: ["@ip:mask"]})
    assert out == PNG + b"before ********* after"
    assert report.changed_items == [0] and notes == {}


@pytest.mark.parametrize("selector", ["$binary", "**", "$attachments.**", "$attachments.*"])
def test_without_an_application_naming_an_attachment_binaries_are_kept(selector: str) -> None:
    # Sentry's Relay rewrites plain binary attachments only for a policy that names one
    # (`$attachments.'x'`): broad selectors alone leave images and archives whole.
    payload = PNG + BEFORE.encode()
    out, report, notes = scrub(payload, {selector: ["@ip:mask"]}, gate=False)
    assert out == payload and report.changed_items == []
    assert notes[0].why == "binary content (PNG image)"
    # A text attachment is read by the same rules all the same.
    env = envelope(BEFORE.encode(), "app.log")
    scrubber = compile_scrubber(cfg(**OFF, pii_config={"applications": {selector: ["@ip:mask"]}}))
    items.scrub_envelope(scrubber, env)
    assert env.items[0].payload == b"before ********* after"


def test_a_rule_for_another_file_does_not_apply() -> None:
    payload = PNG + BEFORE.encode()
    out, _, notes = scrub(payload, {"$attachments.'other.png'": ["@ip:mask"]})
    assert out == payload and 0 in notes


def test_relay_all_the_bytes() -> None:
    payload = bytes(range(255))
    out, _, _ = scrub(payload, {"$binary": ["@anything:remove"]}, filename="foo.txt")
    assert out == b"*" * 255


#: Relay `test_bytes_regexes`: byte sequences that are not UTF-8, found by `\xNN` patterns.
INVALID_UTF8 = [
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xe2\x82\x28",
    b"\xf0\x28\x8c\xbc",
    b"\xf0\x90\x28\xbc",
    b"\xf0\x28\x8c\x28",
    b"\xf8\xa1\xa1\xa1\xa1",
    b"\xfc\xa1\xa1\xa1\xa1\xa1",
]


@pytest.mark.parametrize("sample", INVALID_UTF8, ids=lambda b: b.hex())
def test_relay_byte_patterns_match_bytes_that_are_not_utf8(sample: bytes) -> None:
    pattern = "".join(f"\\x{b:02x}" for b in sample)
    assert run(pattern_rules(pattern), sample) == b"*" * len(sample)
    rule = {"type": "pattern", "pattern": pattern, "redaction": {"method": "remove"}}
    out, _, _ = scrub(PNG + sample + PNG, {"$binary": ["raw"]}, rules={"raw": rule})
    assert out == PNG + b"*" * len(sample) + PNG


# --- UTF-16LE runs (Relay `test_segments_*`) --------------------------------------------------

HELLO = u16("hello")
STARS5 = u16("*****")


@pytest.mark.parametrize(
    ("data", "pattern", "expected"),
    [
        # All the data is one run.
        (HELLO, "hello", STARS5),
        # Between lone surrogates, on even offsets.
        (
            b"\xd8\xd8\xd8\xd8" + HELLO + b"\xd8\xd8",
            "hello",
            b"\xd8\xd8\xd8\xd8" + STARS5 + b"\xd8\xd8",
        ),
        # On an odd offset the text is read off by one byte, as Relay reads it.
        (b"\xd8\xd8\xd8" + HELLO + b"\xd8\xd8", "hello", None),
        (
            b"\xd8\xd8\xd8" + HELLO + b"\xd8\xd8",
            "棘攀氀氀漀",
            b"\xd8\xd8" + STARS5 + b"\x00\xd8\xd8",
        ),
        # At the end.
        (b"\xd8\xd8" + HELLO, "hello", b"\xd8\xd8" + STARS5),
        # Garbage only.
        (b"\xd8\xd8", "hello", None),
        # A run shorter than 5 characters is not searched.
        (b"\xd8\xd8" + u16("yo") + b"\xd8\xd8" + HELLO, "yo", None),
        (
            b"\xd8\xd8" + u16("yo") + b"\xd8\xd8" + HELLO,
            "hello",
            b"\xd8\xd8" + u16("yo") + b"\xd8\xd8" + STARS5,
        ),
        # Two runs.
        (
            b"\xd8\xd8" + HELLO + b"\xd8\xd8" + u16("world"),
            "hello|world",
            b"\xd8\xd8" + STARS5 + b"\xd8\xd8" + STARS5,
        ),
    ],
)
def test_relay_utf16_runs(data: bytes, pattern: str, expected: bytes | None) -> None:
    assert run(pattern_rules(pattern), data) == (data if expected is None else expected)


def test_a_run_is_counted_in_characters_not_code_units() -> None:
    # Four characters in five code units: too short. Five characters: searched.
    emoji = "\U0001f600"
    short = b"\xd8\xd8" + u16(f"ab{emoji}c") + b"\xd8\xd8"
    assert run(pattern_rules("ab"), short) == short
    longer = b"\xd8\xd8" + u16(f"ab{emoji}cd") + b"\xd8\xd8"
    assert run(pattern_rules("cd"), longer) == b"\xd8\xd8" + u16(f"ab{emoji}**") + b"\xd8\xd8"


# --- replacement at the same length (Relay `test_swap_content_wstr`) --------------------------


@pytest.mark.parametrize(
    ("given", "pattern", "text", "expected"),
    [
        ("hello", "hello", "world", "world"),  # same size
        ("hello", "hello", "hey", "hey**"),  # shorter: padded
        ("hey there", "hey", "world", "wor there"),  # longer: cut
        ("hey there", "hey", "yo\U00010000", "yo* there"),  # a pair that does not fit
    ],
)
def test_replace_keeps_the_length_in_utf16(
    given: str, pattern: str, text: str, expected: str
) -> None:
    rules = pattern_rules(pattern, "replace", text=text)
    assert run(rules, u16(given)) == u16(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("world", b"wor there"),
        ("y", b"y** there"),
        ("y\u00e9!", b"y\xc3\xa9 there"),
        # Cut at a character boundary, never inside one.
        ("\u00e9\u00e9", b"\xc3\xa9* there"),
    ],
)
def test_replace_keeps_the_length_in_bytes(text: str, expected: bytes) -> None:
    rules = pattern_rules("hey", "replace", text=text)
    assert run(rules, b"hey there") == expected


@pytest.mark.parametrize("encode", [str.encode, u16], ids=["utf8", "utf16le"])
def test_replace_groups_and_nested_groups(encode: Any) -> None:
    rule = {
        "type": "pattern",
        "pattern": "(user=)([a-z]+)",
        "replaceGroups": [2],
        "redaction": {"method": "replace", "text": "[name]"},
    }
    rules = rules_of("$binary", "g", rules={"g": rule})
    assert run(rules, encode("x user=jane y")) == encode("x user=[nam y")
    assert run(rules, encode("x user=johnathan y")) == encode("x user=[name]*** y")
    nested = {
        "type": "pattern",
        "pattern": "(a(b)c)",
        "replaceGroups": [1, 2],
        "redaction": {"method": "mask"},
    }
    rules = rules_of("$binary", "n", rules={"n": nested})
    assert run(rules, encode("xxabcxx")) == encode("xx***xx")


# --- rules on a whole value -------------------------------------------------------------------


def test_anything_fills_the_whole_file() -> None:
    out, report, _ = scrub(PNG + b"\x00" * 10, {"$binary": ["@anything:replace"]})
    assert out == b"[Filtered]" + b"*" * 8
    assert [(r.path, r.rule, r.method) for r in report.redactions] == [
        ("<bytes>[0:18]", "@anything:replace", "replace")
    ]


def test_a_key_pattern_on_the_file_name_fills_the_whole_file() -> None:
    pair = {"type": "redact_pair", "keyPattern": "secret", "redaction": {"method": "remove"}}
    payload = PNG + b"nothing to see"
    out, _, _ = scrub(payload, {"$attachments.*": ["files"]}, "secret.png", rules={"files": pair})
    assert out == b"*" * len(payload)
    out, _, _ = scrub(payload, {"$attachments.*": ["files"]}, "public.png", rules={"files": pair})
    assert out == payload


def test_a_key_pattern_found_in_the_bytes_fills_the_whole_file() -> None:
    """Relay treats a key pattern as a value pattern on attachments: found in the bytes,
    it redacts everything; found in UTF-16 text, the match."""
    pair = {"type": "redact_pair", "keyPattern": "(?i)api[-_]?key", "redaction": {"method": "mask"}}
    payload = PNG + b"\x01\x02 config API_KEY=abc \x03"
    out, _, _ = scrub(payload, {"$binary": ["keys"]}, rules={"keys": pair})
    assert out == b"*" * len(payload)
    wide = PNG + u16("config api-key=abc")
    out, _, _ = scrub(wide, {"$binary": ["keys"]}, rules={"keys": pair})
    assert out == PNG + u16("config *******=abc")


def test_password_rule_fills_the_file_where_a_password_key_shows() -> None:
    payload = PNG + b"\x00\x01Authorization: Basic dXNlcjpwYXNz\x00"
    out, _, _ = scrub(payload, {"$binary": ["@password"]})
    assert out == b"*" * len(payload)
    # A whole UTF-16 run that is a key (`^two[-_]factor$`), and one that is not.
    wide = PNG + b"\xd8\xd8" + u16("two_factor") + b"\xd8\xd8" + u16("no two_factor here")
    out, _, _ = scrub(wide, {"$binary": ["@password"]})
    assert out == PNG + b"\xd8\xd8" + u16("*" * 10) + b"\xd8\xd8" + u16("no two_factor here")


# --- a realistic attachment -------------------------------------------------------------------


def screenshot() -> tuple[bytes, list[bytes]]:
    """Random bytes with an email and a card number in UTF-8 and in UTF-16LE text."""
    rnd = random.Random(7)
    secrets = [EMAIL.encode(), u16(EMAIL), CARD.encode(), u16(CARD)]
    parts = [PNG]
    for secret in secrets:
        parts += [rnd.randbytes(333), b"\x00 "]
        if len(b"".join(parts)) % 2:
            parts.append(b" ")  # UTF-16 text on an even offset, where Relay reads it
        parts += [secret, b" \x00"]
    parts.append(rnd.randbytes(100))
    return b"".join(parts), secrets


def test_secrets_in_utf8_and_utf16_are_overwritten_in_place() -> None:
    payload, secrets = screenshot()
    out, report, notes = scrub(
        payload, {"$attachments.'screen.png'": ["@email", "@creditcard:mask"]}
    )
    assert not any(s in out for s in secrets)
    assert notes == {} and report.changed_items == [0]
    rows = [(r.rule, r.method, r.item, r.item_type) for r in report.redactions]
    assert rows == [
        ("@email", "replace", 0, "attachment"),
        ("@email", "replace", 0, "attachment"),
        ("@creditcard:mask", "mask", 0, "attachment"),
        ("@creditcard:mask", "mask", 0, "attachment"),
    ]
    # Each redaction names the bytes it overwrote; nothing else changed.
    changed = bytearray(payload)
    for r in report.redactions:
        start, end = map(int, r.path.removeprefix("<bytes>[").removesuffix("]").split(":"))
        assert payload[start:end] in secrets
        changed[start:end] = out[start:end]
    assert bytes(changed) == out
    assert out.count(b"[email]") == 1 and out.count(u16("[email]")) == 1
    assert out.count(b"*" * len(CARD)) == 1 and out.count(u16("*" * len(CARD))) == 1


def test_value_detectors_alone_do_not_rewrite_binary_attachments() -> None:
    payload, _ = screenshot()
    env = envelope(payload)
    report = compile_scrubber(cfg()).scrub_envelope(env)  # the default policy, no rules
    assert env.items[0].payload == payload and report.changed_items == []


def test_without_a_selecting_rule_the_bytes_are_not_searched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def searched(*args: Any) -> Any:
        raise AssertionError("a binary attachment no rule selects was searched")

    monkeypatch.setattr(items, "scrub_binary", searched)
    payload, _ = screenshot()
    for applications in ({}, {"$string": ["@email"]}, {"$attachments.'x.png'": ["@email"]}):
        out, _, notes = scrub(payload, applications)
        assert out == payload and notes[0].why == "binary content (PNG image)"


def test_a_minidump_sent_as_a_plain_attachment_is_a_plain_binary() -> None:
    # As in Sentry, a dump is read by its parts only as an `event.minidump` attachment
    # (tests/test_scrub_minidumps.py); any other attachment is scrubbed by its bytes.
    tail = b" jane@example.com "
    dump = b"MDMP\x93\xa7\x00\x00" + random.Random(3).randbytes(512) + tail
    out, report, notes = scrub(dump, {"$binary": ["@email"]}, "crash.dmp")
    assert out == dump[: -len(tail)] + b" [email]" + b"*" * (len(tail) - 9) + b" "
    assert notes == {} and report.changed_items == [0]


def test_text_attachments_keep_their_rewrite() -> None:
    """Text is still rewritten as text: a replacement may change its length."""
    env = envelope(b"shipped to " + EMAIL.encode() + b"\n", "app.log")
    compile_scrubber(
        cfg(**OFF, pii_config={"applications": {"$binary": ["@email:replace"]}})
    ).scrub_envelope(env)
    assert env.items[0].payload == b"shipped to [email]\n"


def test_a_key_pattern_found_in_a_text_attachment_redacts_all_of_it() -> None:
    """As in Sentry, which reads every attachment as bytes: a `redact_pair` key pattern
    matching the content fills the whole file (here: replaces the whole text)."""
    env = envelope(b"config: the secret is out\n", "app.log")
    pair = {"type": "redact_pair", "keyPattern": "secret", "redaction": {"method": "remove"}}
    pii = {"rules": {"keys": pair}, "applications": {"$attachments.'app.log'": ["keys"]}}
    compile_scrubber(cfg(**OFF, pii_config=pii)).scrub_envelope(env)
    assert b"secret" not in env.items[0].payload


# --- the UTF-16 search over joined runs equals Relay's search run by run ----------------------


def relay_runs(data: bytes, start: int, end: int) -> list[tuple[int, str]]:
    """Relay's `WStrSegmentIter` over data[start:end]: runs of valid UTF-16LE code units
    (a lone surrogate skipped, an incomplete end dropped) of 5 characters or more, as
    (byte offset, text)."""
    out: list[tuple[int, str]] = []
    units = [int.from_bytes(data[i : i + 2], "little") for i in range(start, end - 1, 2)]
    i = 0
    while i < len(units):
        first = i
        chars: list[str] = []
        while i < len(units):
            unit = units[i]
            if 0xD800 <= unit <= 0xDBFF:
                if i + 1 < len(units) and 0xDC00 <= units[i + 1] <= 0xDFFF:
                    low = units[i + 1]
                    chars.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                    i += 2
                    continue
                break
            if 0xDC00 <= unit <= 0xDFFF:
                break
            chars.append(chr(unit))
            i += 1
        if len(chars) >= MIN_WIDE_CHARS:
            out.append((start + 2 * first, "".join(chars)))
        if i == first or i < len(units):
            i += 1  # skip the lone surrogate
    return out


def reference(rules: list[Rule], data: bytes, filename: str) -> bytes:
    """`scrub_binary` with the UTF-16 step run by run, as Relay runs it."""
    current = data
    for rule in rules:
        narrow, _ = binary._narrow_spans(rule, current, filename, (current, ""))
        narrow = binary._merge(narrow)
        buf = bytearray(current)
        for s, e in narrow:
            buf[s:e] = binary._narrow(rule.redaction, current[s:e])
        current = bytes(buf)
        found: list[tuple[int, int]] = []
        for gs, ge in binary._gaps(narrow, len(current)):
            for offset, text in relay_runs(current, gs, ge):
                for search, _, _ in binary._wide_searches(rule):
                    for s, e in search(text):
                        found.append((offset + len(u16(text[:s])), offset + len(u16(text[:e]))))
        buf = bytearray(current)
        for s, e in binary._merge(found):
            buf[s:e] = binary._wide(rule.redaction, current[s:e])
        current = bytes(buf)
    return current


WORDS = [
    EMAIL,
    CARD,
    "127.0.0.1",
    "hello world",
    "Bearer abcdef123456",
    "two_factor",
    "password",
    "C:\\Users\\jane\\file",
    "\U0001f600x",
    "abc",
    "yo",
    "hello q",
    "ab z more",
]


def noisy(rnd: random.Random) -> bytes:
    """Random bytes, lone surrogates and words in UTF-8 and UTF-16LE, mostly on even
    offsets, some between lone surrogates (runs of their own, short ones too)."""
    parts: list[bytes] = []
    size = 0
    for _ in range(rnd.randrange(5, 40)):
        pick = rnd.random()
        if pick < 0.3:
            part = rnd.randbytes(rnd.randrange(1, 40))
        elif pick < 0.4:
            part = rnd.choice([b"\xd8\xd8", b"\x00\xdc", b"\x3d\xd8", b"\x00"])
        else:
            word = rnd.choice(WORDS)
            if rnd.random() < 0.4:
                part = word.encode()
            else:
                part = u16(word)
                if rnd.random() < 0.5:
                    part = b"\x00\xdc" + part + b"\x00\xdc"
                if size % 2 and rnd.random() < 0.8:
                    part = b"\x00" + part
        parts.append(part)
        size += len(part)
    return b"".join(parts)


POLICIES = [
    ["@email", "@ip:hash"],
    ["@common"],
    ["@password"],
    ["anchored"],
    ["classes"],
    ["text_edges"],
    ["crossing"],
]
CUSTOM = {
    "anchored": {"type": "pattern", "pattern": "^hello|world$", "redaction": {"method": "mask"}},
    "classes": {
        "type": "pattern",
        "pattern": "[^a-z0-9]{2}[a-z]+|x",
        "redaction": {"method": "replace", "text": "<>"},
    },
    # Matches across runs in the joined text, hiding one within a run ("ab").
    "crossing": {
        "type": "pattern",
        "pattern": "q\\x00ab|b z m|z mo|yo",
        "redaction": {"method": "mask"},
    },
    "text_edges": {
        "type": "pattern",
        "pattern": "\\Ahel|[]o]\\z|c[^]a]m",
        "redaction": {"method": "hash"},
    },
}


CUT = b"\x00\xdc"  # a lone low surrogate: ends a run


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        # Over the joined runs (a NUL between) `q\x00a` would take the "a" of "ab"
        # along; run by run "ab" is a match. (Neither matches the bytes as they are.)
        ("q\\x00a|ab", "** z more"),
        # A match across runs ends in the second run; its own matches are found anew.
        ("q\\x00ab|b z m|z mo", "a*****ore"),
    ],
)
def test_matches_are_those_of_each_run(pattern: str, expected: str) -> None:
    data = u16("hello q") + CUT + u16("ab z more")
    assert run(pattern_rules(pattern, "mask"), data) == u16("hello q") + CUT + u16(expected)


@pytest.mark.parametrize("names", POLICIES, ids=lambda n: "+".join(n))
def test_joined_utf16_search_equals_relays_run_by_run(names: list[str]) -> None:
    rules = rules_of("$binary", *names, rules=CUSTOM)
    rnd = random.Random(hash(tuple(names)) & 0xFFFF)
    for _ in range(300):
        data = noisy(rnd)
        assert run(rules, data, "blob.bin") == reference(rules, data, "blob.bin"), data


# --- the dry run and the relay ----------------------------------------------------------------


def test_dry_run_lists_byte_redactions_and_warns_only_of_unread_binaries(
    tmp_path: Path,
) -> None:
    payload, _ = screenshot()
    pii = {"applications": {"$attachments.'screen.png'": ["@email"]}}
    config = make_config(tmp_path.as_uri(), policy={"scrubbing": {"pii_config": pii}})
    items_ = [
        ({"type": "attachment", "filename": "screen.png"}, payload),
        ({"type": "attachment", "filename": "other.png"}, payload),
    ]
    data = make_envelope({"event_id": EVENT_ID}, items_).serialize()
    reports = dry_run(config, data)
    text, js = io.StringIO(), io.StringIO()
    print_reports(reports, text)
    print_reports(reports, js, as_json=True)
    shown = orjson.loads(js.getvalue())
    assert [r["unread"] for r in shown] == [None, "binary content (PNG image)"]
    assert [(r["rule"], r["method"]) for r in shown[0]["redactions"]] == [
        ("@email", "replace"),
        ("@email", "replace"),
    ]
    assert all(r["path"].startswith("<bytes>[") for r in shown[0]["redactions"])
    out = text.getvalue()
    assert "item 0 (attachment): forward\n  2 redaction(s):\n    <bytes>[" in out
    assert "WARNING: 1 item(s) would be forwarded unread" in out


async def test_relay_forwards_the_rewritten_attachment(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    payload, secrets = screenshot()
    pii = {"applications": {"$attachments.'screen.png'": ["@email:mask", "@creditcard"]}}
    relay = await relay_factory(policy={"scrubbing": {"pii_config": pii}})
    body = make_envelope(
        {"event_id": EVENT_ID},
        [
            ({"type": "event"}, orjson.dumps({"message": "crash"})),
            ({"type": "attachment", "filename": "screen.png"}, payload),
        ],
    ).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (forwarded,) = recorder.items("attachment")
    out = forwarded.payload
    assert len(out) == len(payload) and out[:8] == PNG
    assert not any(s in out for s in secrets)
    assert b"*" * len(EMAIL) in out and u16("*" * len(EMAIL)) in out
    for received in recorder.received:
        assert EMAIL.encode() not in received.body
