"""A review of the relay against SECURITY.md: each problem found, as a test.

Fixed here:

- a `Content-Encoding` list of a thousand layers nested the decoder past the recursion
  limit (a 500), and each layer may inflate up to the cap: at most `MAX_CODINGS` now (415);
- a multipart body unfolding into a million empty parts, or one part's headers into
  millions of lines, cost seconds and a gigabyte from a tiny gzip body: capped (400);
- an admin `Authorization` header with bytes beyond UTF-8 was a 500, not a 401;
- a request path decoded from `%0A` could start a line of its own in the log of a 500;
- `relay check-config` quoted part of a proxy password that holds a `/`, `?` or `#`
  (urllib's port error): it names the part that is wrong now;
- a `redis.url` whose password holds a `/` passed `relay check-config`, and `relay run`
  then logged part of the password: the URL is read as redis-py reads it and refused;
- `relay scrub` printed an envelope's terminal escapes raw, and died on a replay video
  of deeply nested MessagePack (and on JSON deeper than orjson writes): escaped, shown;
- `relay usage` sent the admin token through an `http_proxy` of its environment: it
  asks the relay directly;
- a minidump form field `sentry[a][a]...` nested deeper than the recursion limit was a
  500: deeper than `MAX_JSON_DEPTH` is refused (400), as a request body that deep is.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay import usage
from relay.app import create_app
from relay.cli import main as cli_main
from relay.config import RedisConfig, Secret
from relay.logs import log_unexpected
from relay.protocol.decompress import (
    MAX_CODINGS,
    UnsupportedEncoding,
    decompress,
    parse_content_encoding,
)
from relay.protocol.envelope import MAX_JSON_DEPTH
from relay.protocol.multipart import (
    MAX_PART_HEADER_BYTES,
    MAX_PARTS,
    MultipartError,
    Part,
    split,
)
from relay.services.limiter.redis import connect
from tests.hardening.conftest import GOOD_ENVELOPE
from tests.hardening.test_hostile_requests import LIMITS, raw_exchange
from tests.hardening.test_secrets_hygiene import _check_config
from tests.support.http_proxy import HttpProxy
from tests.support.redis_server import free_port
from tests.support.relay import RelayFactory, auth_header, make_config

EVENT_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "adm1n-t0ken-review-5e2a"


@pytest.fixture
async def small_relay(relay_factory: RelayFactory) -> TestClient:
    return await relay_factory(limits=LIMITS)


def layered(body: bytes, layers: int) -> bytes:
    for _ in range(layers):
        body = gzip.compress(body, 1)
    return body


# -- Content-Encoding lists ---------------------------------------------------------------------


def test_a_content_encoding_list_is_capped() -> None:
    assert parse_content_encoding(", ".join(["gzip"] * MAX_CODINGS)) == ["gzip"] * MAX_CODINGS
    # Ignored values do not count.
    assert parse_content_encoding("gzip, identity, identity, identity, br") == ["gzip", "br"]
    with pytest.raises(UnsupportedEncoding, match=f"more than {MAX_CODINGS} content codings"):
        parse_content_encoding(", ".join(["gzip"] * (MAX_CODINGS + 1)))
    body = layered(b"x", 1000)
    with pytest.raises(UnsupportedEncoding):
        decompress(body, ",".join(["gzip"] * 1000), 1024 * 1024)


async def test_a_thousand_nested_codings_are_refused_not_a_500(
    relay: TestClient, no_unhandled_errors: Callable[[], None]
) -> None:
    for layers, status in ((MAX_CODINGS, 200), (MAX_CODINGS + 1, 415), (1000, 415)):
        resp = await relay.post(
            "/api/42/envelope/",
            data=io.BytesIO(layered(GOOD_ENVELOPE, layers)),
            headers={**auth_header(), "Content-Encoding": ",".join(["gzip"] * layers)},
        )
        assert resp.status == status, (layers, await resp.text())
    no_unhandled_errors()


# -- multipart bodies ------------------------------------------------------------------------------

MINIDUMP = b'Content-Disposition: form-data; name="upload_file_minidump"; filename="m.dmp"'
FILE = b'Content-Disposition: form-data; name="log"; filename="app.log"'


def form(*parts: tuple[bytes, bytes], boundary: bytes = b"a") -> bytes:
    out = [b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + body + b"\r\n" for head, body in parts]
    return b"".join(out) + b"--" + boundary + b"--\r\n"


def test_multipart_parts_are_capped() -> None:
    empty = (b"X-Empty: 1", b"")
    assert len(split(form(*[empty] * MAX_PARTS), "a")) == MAX_PARTS
    with pytest.raises(MultipartError, match=f"more than {MAX_PARTS} parts"):
        split(form(*[empty] * (MAX_PARTS + 1)), "a")


def test_a_part_header_over_the_cap_is_refused() -> None:
    fits = b"X:\r\n" * ((MAX_PART_HEADER_BYTES - len(MINIDUMP)) // 4) + MINIDUMP
    (part,) = split(form((fits, b"MDMP")), "a")
    assert part.name == "upload_file_minidump" and part.filename and part.body == b"MDMP"
    with pytest.raises(MultipartError, match="headers are over"):
        split(form((b"X:\r\n" * (MAX_PART_HEADER_BYTES // 4) + MINIDUMP, b"MDMP")), "a")


@pytest.mark.parametrize(
    ("headers", "name", "is_file"),
    [
        (b'content-disposition: form-data; name="a"', "a", False),
        (b'Content-Type: text/plain\r\nCONTENT-DISPOSITION: form-data; name="b"', "b", False),
        # Only at the start of a line, the first such line.
        (b'X-Content-Disposition: form-data; name="c"', None, False),
        (b'X: y\nContent-Disposition: form-data; name="g"', None, False),  # a bare LF
        (
            b'X: y\r\nContent-Disposition: form-data; name="d"; filename="f"\r\nContent-Disposition: '
            b'form-data; name="e"',
            "d",
            True,
        ),
        (b"Content-Type: text/plain", None, False),
        (b"", None, False),
    ],
)
def test_the_disposition_is_read_as_before(headers: bytes, name: str | None, is_file: bool) -> None:
    part = Part(headers, b"")
    assert (part.name, part.filename) == (name, is_file)


def _many_parts(first: bytes) -> bytes:
    """A file part, then 50,000 empty ones: half a MiB, a few KiB gzipped."""
    return form((first, b"MDMP"), *[(b"X: 1", b"")] * 50_000)


def _huge_header(first: bytes) -> bytes:
    """One part whose headers are 4 MiB of short lines."""
    return form((b"X:\r\n" * (1024 * 1024) + first, b"MDMP"))


ENDPOINTS = {
    "minidump": ("/api/42/minidump/", MINIDUMP),
    "attachments": (f"/api/42/events/{EVENT_ID}/attachments/", FILE),
}


@pytest.mark.parametrize("bomb", [_many_parts, _huge_header])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_multipart_bombs_are_refused(
    small_relay: TestClient,
    endpoint: str,
    bomb: Callable[[bytes], bytes],
    no_unhandled_errors: Callable[[], None],
) -> None:
    path, first = ENDPOINTS[endpoint]
    resp = await small_relay.post(
        path,
        data=io.BytesIO(gzip.compress(bomb(first))),
        headers={
            **auth_header(),
            "Content-Type": "multipart/form-data; boundary=a",
            "Content-Encoding": "gzip",
        },
    )
    assert resp.status == 400, await resp.text()
    no_unhandled_errors()


# -- the admin endpoint -----------------------------------------------------------------------------


async def test_admin_authorization_beyond_utf8_is_401_not_500(
    relay_factory: RelayFactory, no_unhandled_errors: Callable[[], None]
) -> None:
    relay = await relay_factory(admin={"token": TOKEN})
    assert relay.server.port is not None
    for value in (b"Bearer \x80\xff", b"Bearer " + TOKEN.encode() + b"\xff", b"\xff\xfe"):
        raw = await raw_exchange(
            relay.server.port,
            b"GET /api/relay/usage/ HTTP/1.1\r\nHost: relay\r\nAuthorization: "
            + value
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 401 "), raw[:200]
        assert TOKEN.encode() not in raw
    no_unhandled_errors()


# -- log lines ---------------------------------------------------------------------------------------


def test_unexpected_error_arguments_cannot_start_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="relay.test"):
        try:
            raise RuntimeError("x")
        except RuntimeError:
            log_unexpected(
                logging.getLogger("relay.test"),
                "unhandled error in %s %s (%d)",
                "POST",
                "/api/42/a\r\n2026-01-01 ERROR relay: forged\x1b[2K\u2028é",
                7,
            )
    (record,) = caplog.records
    text = record.getMessage()
    assert text.startswith("unhandled error in POST /api/42/a\\r\\n2026-01-01 ERROR relay: forged")
    assert "(7) [RuntimeError at " in text
    assert text.isprintable(), text


async def test_a_request_path_cannot_forge_a_log_line(
    aiohttp_client: Any, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_config(upstream_url))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_post("/api/{project_id}/boom/{what}/", boom)
    client: TestClient = await aiohttp_client(app)
    caplog.set_level(logging.INFO)
    resp = await client.post("/api/42/boom/x%0D%0A2026-01-01%20ERROR%20relay:%20forged/")
    assert resp.status == 500
    (record,) = [r for r in caplog.records if r.name.startswith("relay")]
    text = record.getMessage()
    assert "\n" not in text and "\r" not in text, text
    assert "x\\r\\n2026-01-01 ERROR relay: forged" in text


# -- found, fixed elsewhere ----------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["/", "?", "#"])
def test_check_config_never_quotes_a_proxy_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], separator: str
) -> None:
    data = {"upstream": {"proxy": f"http://egress:pAsS7q{separator}w0rd@proxy.internal:3128"}}
    code, output = _check_config(tmp_path, data, capsys)
    assert code == 1, output
    assert "pAsS7q" not in output, output
    assert "upstream.proxy: not a proxy URL: the port is not a number" in output, output


@pytest.mark.parametrize(
    ("url", "mode", "why"),
    [
        ("redis://:rEdIs4k/pw@127.0.0.1:6379/0", "standalone", "the port is not a number"),
        ("rediss://:rEdIs4k?pw@127.0.0.1:6379/0", "standalone", "the port is not a number"),
        ("redis://:rEdIs4k#pw@127.0.0.1/0", "cluster", "the port is not a number"),
        ("redis://:6379/rEdIs4k@127.0.0.1:6379/0", "standalone", "has no host"),
        ("redis://rEdIs4k/pw@127.0.0.1:6379", "standalone", "the database (the path"),
        (
            "redis+sentinel://:rEdIs4k/pw@s1:26379,s2:26379/0",
            "sentinel",
            "a sentinel's host is missing or its port is not a number",
        ),
        (
            "redis+sentinel://:rEdIs4k@s1:26379/0",
            "standalone",
            "redis+sentinel:// needs mode: sentinel",
        ),
        ("redis://:rEdIs4k@node1:6379/2", "cluster", "a Redis Cluster has database 0 only"),
    ],
)
def test_a_redis_url_that_cannot_be_used_is_refused_without_quoting_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, mode: str, why: str
) -> None:
    code, output = _check_config(tmp_path, {"redis": {"url": url, "mode": mode}}, capsys)
    assert code == 1, output
    assert "rEdIs4k" not in output, output
    assert f"redis.url: {why}" in output, output


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("redis://127.0.0.1:6379/0", "standalone"),
        ("redis://:s%2Fcr%3Ft%23pw@redis.internal:6379/2", "standalone"),
        ("redis://relay:s3cret@h/", "standalone"),
        ("rediss://h:6379/0?client_name=relay", "standalone"),
        ("redis://[fd00::5]:6380/4", "standalone"),
        ("unix:///run/redis.sock", "standalone"),
        ("redis://:pw@node1:6379", "cluster"),
        ("redis+sentinel://:pw@s1:26379,s2:26379,s3/0", "sentinel"),
        ("redis://127.0.0.1:26379/0", "sentinel"),
    ],
)
def test_usable_redis_urls_pass_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, mode: str
) -> None:
    code, output = _check_config(tmp_path, {"redis": {"url": url, "mode": mode}}, capsys)
    assert code == 0, output


@pytest.mark.parametrize(
    "url", ["redis+sentinel://:rEdIs4k/pw@s1:26379/0", "redis://:pw@s1:26379/rEdIs4k"]
)
def test_a_sentinel_url_error_never_quotes_it(url: str) -> None:
    """What `relay run` would meet if the URL came past `check-config`."""
    with pytest.raises(ValueError, match="sentinel's port or the database") as caught:
        connect(RedisConfig(url=Secret(url), mode="sentinel"))
    assert "rEdIs4k" not in str(caught.value)


def _scrub(tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "input.envelope"
    path.write_bytes(data)
    code = cli_main(["scrub", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_relay_scrub_output_carries_no_terminal_escapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = orjson.dumps({"type": "x\x1b[1A\x1b[2Kitem 9 (event): drop", "length": 2})
    code, output = _scrub(tmp_path, b"{}\n" + item + b"\nhi\n", capsys)
    assert code == 0
    assert "\x1b" not in output, output
    assert "item 0 (x\\x1b[1A\\x1b[2Kitem 9 (event): drop)" in output, output


#: Control characters in every place `relay scrub` prints from an envelope: the title,
#: a redacted key (its path), JSON values (C1 and DEL, which JSON writes raw), text.
_HOSTILE_EVENT = orjson.dumps(
    {
        "title": "t\x1b]0;pwned\x07",
        "extra": {"password\x1b[2K": "hunter2", "note": "a\x9b2Jb\x7f"},
    }
)
_HOSTILE_TEXT = b"line one\n\tline two\x1b[2K\r\xc2\x9b2J\n"


@pytest.mark.parametrize("as_json", [False, True])
def test_relay_scrub_escapes_control_characters_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    envelope = (
        b'{}\n{"type":"event"}\n'
        + _HOSTILE_EVENT
        + b"\n"
        + orjson.dumps({"type": "attachment", "length": len(_HOSTILE_TEXT), "filename": "a.log"})
        + b"\n"
        + _HOSTILE_TEXT
        + b"\n"
    )
    path = tmp_path / "input.envelope"
    path.write_bytes(envelope)
    assert cli_main(["scrub", *(["--json"] if as_json else []), str(path)]) == 0
    output = capsys.readouterr().out
    controls = [c for c in output if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
    assert controls == [], output
    if as_json:
        reports = orjson.loads(output)  # still JSON, with the same values
        assert reports[0]["title"] == "t\x1b]0;pwned\x07"
        assert reports[0]["payload"]["extra"]["note"] == "a\x9b2Jb\x7f"
        assert reports[1]["payload"] == _HOSTILE_TEXT.decode()
    else:
        assert "  title: t\\x1b]0;pwned\\x07\n" in output
        assert "extra.password\\x1b[2K  @password:filter" in output
        assert '"note": "a\\u009b2Jb\\u007f"' in output  # as JSON escapes it
        # Text keeps its line breaks and tabs.
        assert "    line one\n    \tline two\\x1b[2K\\r\\x9b2J\n" in output


def test_relay_scrub_shows_a_deeply_nested_replay_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = b"\x91" * 5000 + b"\xc0"
    item = orjson.dumps({"type": "replay_video", "length": len(video)})
    code, output = _scrub(tmp_path, b"{}\n" + item + b"\n" + video + b"\n", capsys)
    assert code == 0, output
    assert "item 0 (replay_video): drop — invalid: invalid_payload" in output, output


def test_relay_scrub_shows_json_deeper_than_it_can_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """orjson reads 1,024 levels and writes 255: a JSON attachment between is shown as
    its text."""
    deep = b"[" * 500 + b"]" * 500
    item = orjson.dumps({"type": "attachment", "length": len(deep), "filename": "a.json"})
    code, output = _scrub(tmp_path, b"{}\n" + item + b"\n" + deep + b"\n", capsys)
    assert code == 0, output
    assert "    " + deep.decode() + "\n" in output


async def test_relay_usage_never_sends_the_admin_token_to_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await HttpProxy().start()
    proxy.password = "Basic not-this"  # every request is answered 407, none forwarded
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    config = make_config("http://127.0.0.1:1", admin={"token": TOKEN}, listen={"port": free_port()})
    try:
        with pytest.raises(RuntimeError):
            await asyncio.to_thread(usage._from_http, config)
    finally:
        await proxy.close()
    assert all(TOKEN not in str(asked.headers) for asked in proxy.asked), proxy.asked


async def test_relay_usage_asks_the_relay_directly_whatever_http_proxy_says(
    relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await relay_factory(admin={"token": TOKEN})
    proxy = await HttpProxy().start()
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    config = make_config(
        "http://127.0.0.1:1", admin={"token": TOKEN}, listen={"port": relay.server.port}
    )
    try:
        rows = await asyncio.to_thread(usage._from_http, config)
    finally:
        await proxy.close()
    assert rows == []
    assert proxy.asked == []


async def test_a_deeply_nested_minidump_field_is_not_a_500(
    relay: TestClient, no_unhandled_errors: Callable[[], None]
) -> None:
    for levels, status in ((MAX_JSON_DEPTH, 200), (MAX_JSON_DEPTH + 1, 400), (2000, 400)):
        name = b"sentry" + b"[a]" * levels
        body = form(
            (b'Content-Disposition: form-data; name="' + name + b'"', b"bob@example.com"),
            (MINIDUMP, b"MDMP"),
        )
        resp = await relay.post(
            "/api/42/minidump/",
            data=io.BytesIO(body),
            headers={**auth_header(), "Content-Type": "multipart/form-data; boundary=a"},
        )
        text = await resp.text()
        assert resp.status == status, (levels, text)
        if status == 400:
            assert f"nested more than {MAX_JSON_DEPTH} levels deep" in text, text
    no_unhandled_errors()
