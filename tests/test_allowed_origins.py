"""`allowed_origins`: globs with a scheme, and Sentry's allowed-domain forms without one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.config import ConfigError, parse_config
from relay.policy.registry import origin_matches
from tests.support.relay import KEY, auth_header


@pytest.mark.parametrize(
    ("pattern", "origin", "allowed"),
    [
        ("*", "https://anything.test", True),
        ("example.com", "https://example.com", True),
        ("example.com", "http://example.com:8080", True),  # any scheme and port
        ("example.com", "https://shop.example.com", False),
        ("example.com", "https://badexample.com", False),
        ("*.example.com", "https://example.com", True),
        ("*.example.com", "https://a.b.example.com", True),
        ("*.example.com", "https://badexample.com", False),
        ("example.com:8080", "http://example.com:8080", True),
        ("example.com:8080", "http://example.com", False),
        ("*:8080", "http://localhost:8080", True),
        ("*:8080", "http://localhost:3000", False),
        ("[::1]:3000", "http://[::1]:3000", True),
        ("localhost", "null", False),
        ("example.com", "https://example.com:notaport", False),
        # With a scheme: a glob over the whole origin, as before.
        ("https://*.example.com", "https://shop.example.com", True),
        ("https://*.example.com", "http://shop.example.com", False),
        ("https://example.com", "https://example.com:8443", False),
    ],
)
def test_origin_forms(pattern: str, origin: str, allowed: bool) -> None:
    assert origin_matches(origin, pattern) is allowed


def test_an_entry_that_is_no_domain_form_is_refused() -> None:
    projects = [
        {"id": 1, "allowed_origins": ["example.com/app", "example.com:x", "ok.example.com"]}
    ]
    with pytest.raises(ConfigError) as err:
        parse_config({"projects": projects}, env={})
    paths = sorted(p.path for p in err.value.problems)
    assert paths == ["projects[0].allowed_origins[0]", "projects[0].allowed_origins[1]"]


async def test_a_sentry_style_domain_lets_its_browsers_send(relay_factory: Any) -> None:
    relay = await relay_factory(
        projects=[{"id": 42, "keys": [KEY], "allowed_origins": ["*.Example.com"]}]
    )
    event = orjson.dumps({"message": "from the browser"})
    for origin, status in (
        ("https://example.com", 200),
        ("https://shop.example.com:8443", 200),
        ("https://example.org", 403),
    ):
        resp = await relay.post(
            "/api/42/store/", data=event, headers={**auth_header(), "Origin": origin}
        )
        assert resp.status == status, origin
