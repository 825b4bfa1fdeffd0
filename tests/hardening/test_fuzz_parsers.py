"""Every parser of untrusted input, fuzzed: a clear error of its own type, never anything else.

Parsers and their one error type:

    parse_envelope              EnvelopeError
    decode_store_body           StoreError (and store_to_envelope then never fails)
    security_report_envelopes   SecurityReportError
    extract_auth                AuthError
    parse_rate_limits           nothing (broken entries are skipped)
    parse_retry_after           nothing (a default)
    decompress                  DecompressionError
    Dsn.parse                   InvalidDsn
    parse_http_url              InvalidUrl; a parsed URL's parts are ASCII and sendable
    native.decode_stream        Unreadable; what decodes encodes again
    content.read_text           nothing; text read is encoded back to the same bytes
    Proxy.parse, parse_no_proxy InvalidProxy; a parsed proxy round-trips its address
    tunnel_status               ValueError (a proxy's answer to CONNECT)
    parse_config                ConfigError
    validate_fingerprinting     nothing (a list of problems); valid rules compile and run
    glob_to_regex               GlobError; valid globs match anything without error
"""

from __future__ import annotations

import base64
import gzip
import math
import string
import zlib
from typing import Any, get_type_hints

import brotli
import msgspec
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.config import Config, ConfigError, parse_config
from relay.processing.fingerprint import compile_fingerprinting, validate_fingerprinting
from relay.processing.glob import GlobError, GlobSet, glob_to_regex, validate_glob
from relay.processing.scrub import native
from relay.processing.scrub.content import Unreadable, read_text
from relay.protocol.auth import AuthError, extract_auth, parse_auth_header
from relay.protocol.decompress import DecompressionError, decompress
from relay.protocol.dsn import Dsn, InvalidDsn
from relay.protocol.envelope import (
    MAX_JSON_DEPTH,
    EnvelopeError,
    exceeds_depth,
    make_envelope,
    parse_envelope,
)
from relay.protocol.proxy import InvalidProxy, Proxy, parse_no_proxy, tunnel_status
from relay.protocol.ratelimit_header import (
    MAX_RETRY_AFTER,
    format_rate_limits,
    parse_rate_limits,
    parse_retry_after,
)
from relay.protocol.security import SecurityReportError, security_report_envelopes
from relay.protocol.store import StoreError, decode_store_body, store_to_envelope
from relay.protocol.url import InvalidUrl, parse_http_url

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

#: Bytes that look like the grammar: JSON fragments, newlines, lengths.
TOKENS = [
    b"{",
    b"}",
    b"\n",
    b'"type"',
    b":",
    b",",
    b'"event"',
    b'"attachment"',
    b'"length"',
    b"0",
    b"1",
    b"-1",
    b"99999999999",
    b"1e3",
    b"true",
    b"null",
    b"[",
    b"]",
    b'"\\ud800"',
    b"\xff",
    b"\r\n",
]
grammar_bytes = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# -- envelope ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | grammar_bytes)
@example(b'{}\n{"type":"event","length":-1}\n')
@example(b'{}\n{"type":"event","length":1.5}\n')
@example(b'{}\n{"type":"event","length":true}\nx')
@example(b'{"x":"\\udc00"}\n')
@example(b"{}\n" + nested(MAX_JSON_DEPTH + 1))
@example(b'{"a":' * 2000 + b"1" + b"}" * 2000)
def test_envelope_parser_raises_only_envelope_errors(data: bytes) -> None:
    try:
        envelope = parse_envelope(data, max_items=50)
    except EnvelopeError:
        return
    # What parses serializes, and the serialization parses to the same items.
    again = parse_envelope(envelope.serialize(), max_items=50)
    assert [(i.type, i.payload) for i in again.items] == [
        (i.type, i.payload) for i in envelope.items
    ]


@FUZZ
@given(
    headers=st.dictionaries(st.text(max_size=8), json_value, max_size=3),
    items=st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=8), json_value, max_size=3),
            st.sampled_from(["event", "attachment", "session", "x\ny", "unknown"]),
            st.binary(max_size=50),
        ),
        max_size=5,
    ),
)
def test_built_envelopes_round_trip(
    headers: dict[str, Any], items: list[tuple[dict[str, Any], str, bytes]]
) -> None:
    built = make_envelope(headers, [({**h, "type": t}, p) for h, t, p in items])
    parsed = parse_envelope(built.serialize())
    assert parsed.headers == headers
    assert [(i.type, i.payload) for i in parsed.items] == [(t, p) for _, t, p in items]


def test_header_nesting_is_bounded() -> None:
    ok = b'{"a":' * (MAX_JSON_DEPTH - 1) + b"1" + b"}" * (MAX_JSON_DEPTH - 1)
    assert parse_envelope(ok + b"\n").headers
    for depth in (MAX_JSON_DEPTH + 1, 300, 1000, 5000):
        with pytest.raises(EnvelopeError):
            parse_envelope(nested(depth) + b"\n")
        with pytest.raises(EnvelopeError):
            parse_envelope(b'{}\n{"type":"event","x":' + nested(depth) + b"}\n{}\n")


@FUZZ
@given(json_value)
def test_depth_check_agrees_with_a_recursive_count(value: Any) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(c) for c in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(c) for c in v), default=0)
        return 0

    for limit in (0, 1, 2, 3):
        assert exceeds_depth(value, limit) == (depth(value) > limit)


# -- store payloads -----------------------------------------------------------------------------


def _store_variants(raw: bytes) -> list[bytes]:
    return [raw, base64.b64encode(raw), base64.b64encode(zlib.compress(raw))]


@FUZZ
@given(st.binary(max_size=200) | grammar_bytes | json_value.map(orjson.dumps))
@example(b'{"message":"\\ud800"}')
@example(b'{"x":NaN,"y":-Infinity,"z":1e999}')
@example(b'{"event_id":"nope"}')
@example(b'{"event_id":42}')
@example(b'{"event_id":"not-a-uuid","x":NaN}')
@example(nested(MAX_JSON_DEPTH + 5))
@example(b'{"x":' + b"[" * 900 + b"]" * 900 + b',"n":NaN}')
def test_store_decoder_raises_only_store_errors(raw: bytes) -> None:
    for body in _store_variants(raw):
        try:
            event = decode_store_body(body, max_decompressed=4096)
        except StoreError:
            continue
        assert isinstance(event, dict)
        # Whatever the decoder accepts, the envelope conversion takes.
        envelope = store_to_envelope(event, event_id=None)
        assert parse_envelope(envelope.serialize()).items[0].type in (
            "event",
            "transaction",
            "security",
        )


def test_store_zlib_bomb_is_refused_as_too_large() -> None:
    body = base64.b64encode(zlib.compress(b"{" + b" " * (8 << 20) + b"}"))
    with pytest.raises(StoreError) as info:
        decode_store_body(body, max_decompressed=1 << 20)
    assert info.value.too_large


# -- security reports ---------------------------------------------------------------------------


@FUZZ
@given(
    st.binary(max_size=200) | json_value.map(orjson.dumps),
    st.sampled_from(
        ["application/json", "application/csp-report", "application/reports+json", "text/html"]
    ),
)
@example(b'[{"type":"csp-violation","body":' + nested(300) + b"}]", "application/reports+json")
@example(orjson.dumps([{"type": "csp-violation", "body": {}}] * 1000), "application/reports+json")
def test_security_parser_raises_only_its_errors(body: bytes, content_type: str) -> None:
    try:
        envelopes = security_report_envelopes(body, content_type, {})
    except SecurityReportError:
        return
    for envelope in envelopes:
        parse_envelope(envelope.serialize())


# -- auth -----------------------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.sampled_from(list('sentry_key=," abcdef0123456789:Sentry\t\r\n\x00é\udcff')),
    max_size=60,
)


@FUZZ
@given(
    x_sentry=st.none() | header_text | header_text.map(lambda s: "Sentry " + s),
    authorization=st.none() | header_text | st.text(max_size=30).map(lambda s: "Basic " + s),
    query=st.dictionaries(
        st.sampled_from(["sentry_key", "sentry_version", "sentry_client", "sentry_secret", "x"]),
        header_text,
        max_size=3,
    ),
    dsn=st.none() | header_text | st.text(max_size=40).map(lambda s: f"https://{s}@h/1"),
    allow=st.booleans(),
)
def test_auth_extraction_raises_only_auth_errors(
    x_sentry: str | None,
    authorization: str | None,
    query: dict[str, str],
    dsn: str | None,
    allow: bool,
) -> None:
    headers = {}
    if x_sentry is not None:
        headers["x-sentry-auth"] = x_sentry
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        auth = extract_auth(headers, query, dsn, allow_envelope=allow)
    except AuthError as exc:
        assert exc.status in (400, 401)
        return
    # A key that got through is a plain token: it can go into a header or a URL as is.
    assert auth.public_key.isascii()
    assert all(c.isalnum() or c == "-" for c in auth.public_key)


@FUZZ
@given(header_text)
def test_auth_header_parser_raises_only_auth_errors(value: str) -> None:
    try:
        parse_auth_header(value)
    except AuthError as exc:
        assert exc.status == 401


# -- rate-limit headers ---------------------------------------------------------------------------

rate_text = st.text(alphabet=st.sampled_from(list("0123456789.:;,- eabnifINFaNx")), max_size=60)


@FUZZ
@given(rate_text | st.text(max_size=60))
@example("inf:error:org")
@example("nan::")
@example("1e400:error")
@example("-5:error")
def test_rate_limit_header_never_raises(value: str) -> None:
    limits = parse_rate_limits(value)
    for limit in limits:
        assert math.isfinite(limit.retry_after)
        assert 0 <= limit.retry_after <= MAX_RETRY_AFTER
    formatted = format_rate_limits(limits)
    assert len(parse_rate_limits(formatted)) == len(limits)


@FUZZ
@given(st.none() | st.text(max_size=40) | st.floats().map(str))
@example("Wed, 21 Oct 2015 07:28:00 GMT")
@example("Wed, 99 Oct 99999 07:28:00 GMT")
def test_retry_after_never_raises(value: str | None) -> None:
    seconds = parse_retry_after(value, now=1_700_000_000)
    assert math.isfinite(seconds)
    assert 0 <= seconds <= MAX_RETRY_AFTER


# -- decompression ---------------------------------------------------------------------------------


def _encoded(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        return bytes(brotli.compress(data))
    return bytes(zstandard.ZstdCompressor().compress(data))


@FUZZ
@given(
    st.binary(max_size=200),
    st.lists(st.sampled_from(["gzip", "deflate", "br", "zstd", "x-gzip", "identity", "bogus"])),
    st.booleans(),
)
def test_decompression_raises_only_decompression_errors(
    data: bytes, codings: list[str], encode: bool
) -> None:
    body = data
    if encode:
        for coding in codings:
            if coding in ("gzip", "deflate", "br", "zstd"):
                body = _encoded(body, coding)
            elif coding == "x-gzip":
                body = _encoded(body, "gzip")
    try:
        out = decompress(body, ", ".join(codings), 1024)
    except DecompressionError:
        return
    assert len(out) <= 1024
    if encode and "bogus" not in codings:
        assert out == data


# -- DSNs ----------------------------------------------------------------------------------------------

dsn_text = st.text(
    alphabet=st.sampled_from(list("https:/@abc123:[]%.?#éx\x00 ")), max_size=50
) | st.builds(
    lambda s, k, h, p: f"{s}://{k}@{h}/{p}",
    st.sampled_from(["http", "https", "ftp", ""]),
    st.text(max_size=10),
    st.text(max_size=10),
    st.text(max_size=5),
)


@FUZZ
@given(dsn_text)
@example("https://key:secret@host:notaport/1")
@example("https://key@[::1/1")
def test_dsn_parser_raises_only_invalid_dsn(text: str) -> None:
    try:
        dsn = Dsn.parse(text)
    except InvalidDsn:
        return
    assert Dsn.parse(str(dsn)) == dsn
    assert dsn.project_id.isdigit()


@FUZZ
@given(dsn_text)
@example("http://a..b/")
@example("http://@\u00a8/")
@example("http://[::1/")
@example("https://Пример.рф:8443/ä b")
def test_http_url_parser_raises_only_invalid_url(text: str) -> None:
    try:
        url = parse_http_url(text)
    except InvalidUrl:
        return
    assert url.scheme in ("http", "https") and 0 < url.port < 65536
    for part in (url.host, url.target, url.netloc):
        assert part.isascii() and not any(c in part for c in "\r\n \t")


proxy_text = st.text(
    alphabet=st.sampled_from(list("https:/@abc123:[]%.?#éx\x00 *,")), max_size=50
) | st.builds(
    lambda s, u, h, p: f"{s}://{u}{h}{p}",
    st.sampled_from(["http", "https", "socks5", ""]),
    st.sampled_from(["", "user@", "u:p%40ss@", "u:p@ss@"]),
    st.text(max_size=12),
    st.sampled_from(["", ":3128", ":0", ":99999", ":x", "/", "/path"]),
)


@FUZZ
@given(proxy_text, st.lists(st.text(max_size=15), max_size=4) | st.text(max_size=40))
@example("http://[::1:3128", "")
@example("http://proxy", "10.0.0.0/33, [fe80::1%eth0]")
def test_proxy_parsers_raise_only_invalid_proxy(url: str, no_proxy: Any) -> None:
    try:
        proxy = Proxy.parse(url, no_proxy)
    except InvalidProxy:
        return
    assert 0 < proxy.port < 65536 and proxy.host
    assert not any(c.isspace() or ord(c) < 32 for c in proxy.host)
    again = Proxy.parse(f"{'https' if proxy.tls else 'http'}://{proxy.shown}", no_proxy)
    assert (again.host, again.port, again.tls) == (proxy.host, proxy.port, proxy.tls)
    for host in ("sentry.io", "10.1.2.3", "::1", "", "[::1]", "a..b"):
        assert proxy.bypasses(host) in (True, False)
    parse_no_proxy(no_proxy)  # what Proxy.parse took, alone


@FUZZ
@given(
    st.binary(max_size=80)
    | st.builds(lambda c: b"HTTP/1.1 " + c + b"\r\n\r\n", st.binary(max_size=8))
)
def test_tunnel_status_raises_only_value_errors(head: bytes) -> None:
    try:
        status = tunnel_status(head)
    except ValueError:
        return
    assert 0 <= status <= 999


# -- config ----------------------------------------------------------------------------------------------


def _config_keys() -> list[str]:
    keys: set[str] = set()
    todo: list[Any] = [Config]
    seen: set[Any] = set()
    while todo:
        tp = todo.pop()
        if tp in seen:
            continue
        seen.add(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            hints = get_type_hints(tp)
            for f in msgspec.structs.fields(tp):
                keys.add(f.encode_name)
                todo.append(hints[f.name])
        for arg in getattr(tp, "__args__", ()):
            todo.append(arg)
    return sorted(keys)


CONFIG_KEYS = _config_keys()
config_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats()
    | st.sampled_from(
        ["20MiB", "5m", "x", "", "${NOPE}", "redis://:pw@h/0", "https://k@h/1", "-1", "1e999"]
    )
    | st.text(max_size=10)
)
config_data = st.recursive(
    config_leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(CONFIG_KEYS) | st.text(max_size=6) | st.integers(0, 3),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@FUZZ
@given(config_data)
@example({"listen": {"port": 2**70}})
@example({"limits": {"max_request_bytes": "1e999GiB"}})
@example({"projects": [{"id": 2**64}]})
@example({"projects": [{"id": 1, "upstream_dsn": "https://k:s@h:x/1"}]})
@example({"policy": {"fingerprinting": 5}})
@example({"redis": {"url": 5}})
@example({1: 2})
def test_config_parser_raises_only_config_errors(data: Any) -> None:
    try:
        config = parse_config(data, env={})
    except ConfigError as err:
        assert err.problems
        assert all(isinstance(p.message, str) and p.message for p in err.problems)
        return
    assert isinstance(config, Config)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(Config.__struct_fields__)), config_data, max_size=4))
def test_config_sections_raise_only_config_errors(data: dict[str, Any]) -> None:
    try:
        parse_config(data, env={})
    except ConfigError as err:
        assert err.problems


# -- fingerprint rules --------------------------------------------------------------------------------

rule_text = st.lists(
    st.sampled_from(
        [
            "error.type:",
            "error.value:",
            "message:",
            "logger:",
            "stack.function:",
            "tags.x:",
            "!",
            '"',
            "\\",
            "*",
            "?",
            "[a-",
            "{a,b}",
            " -> ",
            "->",
            "{{ error.type }}",
            "{{",
            "}}",
            "title=",
            "override=true",
            ",",
            " ",
            "x",
            "\n",
            "#",
            "é",
            "\x00",
        ]
    ),
    max_size=25,
).map("".join)

fingerprint_event = st.fixed_dictionaries(
    {},
    optional={
        "message": st.text(max_size=20) | st.integers(-(2**63), 2**64 - 1),
        "logger": st.text(max_size=10) | st.none(),
        "exception": st.fixed_dictionaries(
            {"values": st.lists(st.dictionaries(st.sampled_from(["type", "value"]), json_leaf))}
        )
        | json_value,
        "tags": json_value,
        "fingerprint": json_value,
        "type": st.sampled_from(["error", "transaction"]) | json_leaf,
    },
)


@FUZZ
@given(rule_text | st.text(max_size=60), fingerprint_event)
def test_fingerprint_rules_validate_or_compile_and_run(text: str, event: dict[str, Any]) -> None:
    problems = validate_fingerprinting(text)
    assert isinstance(problems, list)
    if problems:
        return
    fingerprinter = compile_fingerprinting(text, "", True)
    fingerprinter.apply(event)
    orjson.dumps(event)


# -- globs -------------------------------------------------------------------------------------------------

glob_text = st.text(alphabet=st.sampled_from(list("*?[]!^{},\\/-az.é\n")), max_size=20)


@FUZZ
@given(glob_text, st.text(max_size=30), st.booleans(), st.booleans())
def test_globs_validate_or_compile_and_match(
    pattern: str, value: str, path: bool, case_sensitive: bool
) -> None:
    problem = validate_glob(pattern, path=path)
    try:
        glob_to_regex(pattern, path=path)
    except GlobError:
        assert problem is not None
        return
    if problem is not None:
        return  # the empty glob
    globs = GlobSet([pattern], path=path, case_sensitive=case_sensitive)
    hit = globs.match(value)
    assert hit in (None, pattern)
    assert globs.matches(value) == (hit is not None)


@FUZZ
@given(st.lists(glob_text, max_size=5), st.text(max_size=30) | st.none())
def test_glob_sets_skip_invalid_patterns(patterns: list[str], value: str | None) -> None:
    globs = GlobSet(patterns)
    assert globs.match(value) in (None, *patterns)


@pytest.mark.parametrize("value", ["\udcff", "a\udc80b", "\x00", "\U0010ffff" * 10])
def test_globs_match_any_python_string(value: str) -> None:
    globs = GlobSet(["*", "a*b", "?"], case_sensitive=False)
    globs.match(value)
    GlobSet([string.printable.replace("\\", "")]).match(value)


msgpack_bytes = st.binary(max_size=200) | st.builds(
    lambda values, cut: b"".join(msgspec.msgpack.encode(v) for v in values)[: cut or None],
    st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.text(max_size=10)
            | st.binary(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            ),
            max_leaves=10,
        ),
        max_size=4,
    ),
    st.integers(min_value=0, max_value=60),
)


@FUZZ
@given(msgpack_bytes)
@example(b"\xdd\xff\xff\xff\xff")
@example(b"\x91" * 300)
@example(b"\xc1")
def test_native_stream_decoder_raises_only_unreadable(data: bytes) -> None:
    try:
        values, left = native.decode_stream(data)
    except Unreadable:
        return
    assert 0 <= left <= len(data)
    native.encode_stream(values)  # JSON-like values encode again


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=100).map(lambda t: t.encode("utf-16")))
@example(b"caf\xe9 \x00 alice@example.com")
@example(b"\xff\xfe" + "h\udc00i".encode("utf-16-le", "surrogatepass"))
def test_text_read_from_bytes_encodes_back_to_them(data: bytes) -> None:
    text = read_text(data)
    if text is not None:
        assert text.encode(text.text) == data
