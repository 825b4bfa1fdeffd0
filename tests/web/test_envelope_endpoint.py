"""The envelope endpoint against a recording upstream: corpus, bad input, retries, 429s."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from datetime import UTC, datetime
from pathlib import Path

import brotli
import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.keys import UPSTREAM_LIMITS
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS
from tests.support.relay import KEY, OTHER_KEY, auth_header
from tests.support.upstream import RecordingUpstream, Reply

CORPUS_FILES = sorted(CORPUS.glob("*.envelope"))


def test_corpus_is_present() -> None:
    assert len(CORPUS_FILES) >= 7


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
async def test_corpus_envelope_reaches_upstream(
    relay: TestClient, recorder: RecordingUpstream, path: Path
) -> None:
    body = path.read_bytes()
    sent = parse_envelope(body)
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == ({"id": sent.event_id} if sent.event_id else {})
    if path.stem == "transaction-healthz":
        # Dropped by the default health-check filter: still a 200, so the SDK does not retry.
        metrics = await (await relay.get("/metrics")).text()
        assert (
            'relay_items_total{category="transaction",outcome="filtered",reason="health-check"} 1.0'
            in metrics
        )
        await asyncio.sleep(0.05)
        assert recorder.received == []
        return
    await recorder.wait_for(1)
    (received,) = recorder.received
    assert received.path == "/api/42/envelope/"
    assert f"sentry_key={KEY}" in received.headers["X-Sentry-Auth"]
    assert "X-Forwarded-For" not in received.headers
    got = received.envelope
    assert got.event_id == sent.event_id
    assert [i.type for i in got.items] == [i.type for i in sent.items]
    for before, after in zip(sent.items, got.items, strict=True):
        assert {k: v for k, v in after.headers.items() if k != "length"} == {
            k: v for k, v in before.headers.items() if k != "length"
        }


async def test_unknown_items_and_headers_forwarded_byte_for_byte(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = (
        b'{"event_id":"0123456789abcdef0123456789abcdef","x_custom":{"a":[1,2]}}\n'
        b'{"type":"future_thing","length":10,"zz":true}\n'
        b"\x00\x01binary\xff\xfe\n"
        b'{"type":"another_unknown"}\n'
        b"line payload\n"
    )
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    assert recorder.received[0].body == body


async def test_trailing_slash_optional_and_query_auth(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = (CORPUS / "check-in.envelope").read_bytes()
    resp = await relay.post(f"/api/42/envelope?sentry_key={KEY}&sentry_version=7", data=body)
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)


async def test_an_envelope_dsn_naming_another_project_is_400_whatever_the_auth(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    # As Sentry: the envelope would land in (and be scrubbed by the policy of) the URL's
    # project, not the one its SDK named.
    header = {"dsn": f"https://{KEY}@o1.ingest.example.com/7"}
    body = orjson.dumps(header) + b'\n{"type":"event"}\n{"message":"hi"}\n'
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 400
    assert "another project" in await resp.text()
    assert not recorder.received


async def test_the_sdks_user_agent_and_client_reach_the_upstream(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    browser = "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15"
    headers = {
        "X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7, "
        "sentry_client=sentry.javascript.browser/8.1.0",
        "User-Agent": browser,
    }
    body = b'{}\n{"type":"event"}\n{"message":"hi"}\n'
    resp = await relay.post("/api/42/envelope/", data=body, headers=headers)
    assert resp.status == 200
    await recorder.wait_for(1)
    sent = recorder.received[0].headers
    assert sent["User-Agent"] == browser
    assert "sentry_client=sentry.javascript.browser/8.1.0" in sent["X-Sentry-Auth"]


async def test_an_envelope_of_unreadable_items_is_answered_200_with_their_outcomes(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    # As Sentry answers it: the items are `invalid`; a 400 would have the SDK count them
    # lost a second time (and report them so) beside the relay's own outcome.
    body = b'{}\n{"type":"event"}\n{not json\n{"type":"user_report"}\n{"name":"x"}\n'
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200, await resp.text()
    metrics = (await (await relay.get("/metrics")).read()).decode()
    assert 'category="error",outcome="invalid",reason="invalid_json"} 1.0' in metrics
    assert 'category="feedback",outcome="invalid",reason="invalid_json"} 1.0' in metrics
    assert not recorder.received


async def test_tunnel_mode_auth_from_envelope_dsn(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    header = {
        "event_id": "0123456789abcdef0123456789abcdef",
        "dsn": f"https://{KEY}@o1.ingest.example.com/42",
    }
    body = orjson.dumps(header) + b'\n{"type":"event"}\n{"message":"hi"}\n'
    resp = await relay.post("/api/42/envelope/", data=body, headers={"Content-Type": "text/plain"})
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    forwarded = recorder.received[0].envelope
    # The dsn header never chooses where data goes; it is rewritten to the upstream.
    assert "o1.ingest.example.com" not in forwarded.headers["dsn"]
    assert forwarded.headers["dsn"].endswith("/42")


@pytest.mark.parametrize(
    ("name", "headers", "body", "status"),
    [
        ("no auth", {}, b'{}\n{"type":"event"}\n{}\n', 401),
        ("wrong key", auth_header("0" * 32), b'{}\n{"type":"event"}\n{}\n', 403),
        ("key of another project", auth_header(OTHER_KEY), b'{}\n{"type":"event"}\n{}\n', 403),
        (
            "malformed auth header",
            {"X-Sentry-Auth": "Sentry sentry_key=no spaces allowed!"},
            b"{}\n",
            401,
        ),
        ("garbage body", auth_header(), b"\x00\xff garbage", 400),
        ("empty body", auth_header(), b"", 400),
        ("truncated length", auth_header(), b'{}\n{"type":"event","length":500}\n{"a":1}\n', 400),
        ("bad JSON item header", auth_header(), b'{}\n{"type":"event",\n{}\n', 400),
        ("bad JSON envelope header", auth_header(), b'{"event_id":\n{"type":"event"}\n{}\n', 400),
        ("unsupported encoding", {**auth_header(), "Content-Encoding": "snappy"}, b"xx", 415),
        (
            "corrupt gzip",
            {**auth_header(), "Content-Encoding": "gzip"},
            b"\x1f\x8b\x08garbage",
            400,
        ),
        (
            "gzip bomb",
            {**auth_header(), "Content-Encoding": "gzip"},
            gzip.compress(b"\0" * (120 * 1024 * 1024)),
            413,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_requests(
    relay: TestClient,
    recorder: RecordingUpstream,
    name: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    resp = await relay.post("/api/42/envelope/", data=body, headers=headers)
    assert resp.status == status, (name, await resp.text())
    payload = await resp.json()
    assert set(payload) == {"detail", "causes"} and payload["detail"]
    assert resp.headers["X-Sentry-Error"]
    # ... and the relay keeps serving.
    ok = await relay.post(
        "/api/42/envelope/", data=(CORPUS / "check-in.envelope").read_bytes(), headers=auth_header()
    )
    assert ok.status == 200
    await recorder.wait_for(1)
    assert len(recorder.received) == 1


async def test_unknown_project_is_403(relay: TestClient) -> None:
    resp = await relay.post("/api/7/envelope/", data=b"{}\n", headers=auth_header())
    assert resp.status == 403


async def test_oversized_body_is_413(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = await relay_factory(limits={"max_request_bytes": "1KiB"})
    resp = await relay.post(
        "/api/42/envelope/", data=b"{}\n" + b'{"type":"x"}\n' + b"a" * 4096, headers=auth_header()
    )
    assert resp.status == 413


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "br", "zstd", ""])
async def test_content_encodings(
    relay: TestClient, recorder: RecordingUpstream, encoding: str
) -> None:
    import zstandard

    raw = (CORPUS / "error-payment.envelope").read_bytes()
    compress = {
        "gzip": gzip.compress,
        "x-gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
        "": lambda b: b,
    }[encoding]
    headers = {**auth_header(), "Content-Encoding": encoding} if encoding else auth_header()
    resp = await relay.post("/api/42/envelope/", data=compress(raw), headers=headers)
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    assert recorder.received[0].envelope.event_id == parse_envelope(raw).event_id


async def test_upstream_500_then_200_delivers_once(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    recorder.answer(Reply(500), Reply(502))
    resp = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "error-payment.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert resp.status == 200
    await recorder.wait_for(1)
    assert recorder.attempts == 3
    assert len(recorder.received) == 1


async def test_upstream_400_is_not_retried(relay: TestClient, recorder: RecordingUpstream) -> None:
    recorder.answer(Reply(400))
    resp = await relay.post(
        "/api/42/envelope/", data=(CORPUS / "check-in.envelope").read_bytes(), headers=auth_header()
    )
    assert resp.status == 200
    ok = await relay.post(
        "/api/42/envelope/", data=(CORPUS / "log.envelope").read_bytes(), headers=auth_header()
    )
    assert ok.status == 200
    await recorder.wait_for(1)
    assert recorder.attempts == 2
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="monitor",outcome="invalid",reason="upstream_rejected"} 1.0'
        in metrics
    )


async def test_upstream_429_is_enforced_locally(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    recorder.answer(
        Reply(
            429,
            {
                "X-Sentry-Rate-Limits": "60:error;default:organization:quota_exceeded",
                "Retry-After": "60",
            },
        )
    )
    first = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "error-payment.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert first.status == 200
    async with asyncio.timeout(5):
        while not len(relay.app[UPSTREAM_LIMITS]):
            await asyncio.sleep(0.01)
    second = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "error-connection-reset.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert second.status == 429
    limits = second.headers["X-Sentry-Rate-Limits"]
    assert limits.split(":")[1:4] == ["error;default", "organization", "quota_exceeded"]
    assert 55 <= int(limits.split(":")[0]) <= 60
    assert int(second.headers["Retry-After"]) >= 55
    # Other categories still flow.
    tx = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "transaction-checkout.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert tx.status == 200
    await recorder.wait_for(1)
    assert [e.items[0].type for e in recorder.envelopes] == ["transaction"]


async def test_project_upstream_dsn_rewrites_route_and_auth(
    relay_factory, recorder: RecordingUpstream, upstream_url: str
) -> None:  # type: ignore[no-untyped-def]
    host = upstream_url.split("//", 1)[1]
    upstream_key = "0123456789abcdef0123456789abcdef"
    relay = await relay_factory(
        projects=[{"id": 42, "keys": [KEY], "upstream_dsn": f"http://{upstream_key}@{host}/777"}]
    )
    body = (CORPUS / "transaction-checkout.envelope").read_bytes()
    tunnel = body.replace(
        b'{"event_id"', f'{{"dsn":"https://{KEY}@sdk.example.com/42","event_id"'.encode(), 1
    )
    resp = await relay.post("/api/42/envelope/", data=tunnel, headers=auth_header())
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.path == "/api/777/envelope/"
    assert f"sentry_key={upstream_key}" in received.headers["X-Sentry-Auth"]
    env = received.envelope
    assert env.headers["dsn"] == f"http://{upstream_key}@{host}/777"
    assert env.headers["trace"]["public_key"] == upstream_key
    assert KEY.encode() not in received.body


async def test_an_envelope_without_an_event_id_is_answered_an_empty_object(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    """As Sentry answers a sessions envelope: `{}`, not `{"id": null}`."""
    session = {
        "sid": "1" * 32,
        "status": "ok",
        "init": True,
        "started": datetime.now(UTC).isoformat(),
        "attrs": {"release": "shop@1.4.2"},
    }
    body = b'{}\n{"type":"session"}\n' + orjson.dumps(session) + b"\n"
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    assert await resp.json() == {}
    await recorder.wait_for(1)
