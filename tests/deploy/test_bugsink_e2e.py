"""End to end with a real Bugsink as the upstream.

A Bugsink server (`pip install bugsink`: Django, SQLite, gunicorn) runs on loopback with
a project created through its own management command. The real sentry-sdk sends an
exception through the relay; the event Bugsink stores is read from its SQLite database:
no planted email or card number is left in it, and Bugsink grouped it by the relay's
fingerprint rule, not by its own exception-based grouping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import sentry_sdk

from relay.app import create_app
from tests.support.redis_server import free_port
from tests.support.relay import KEY, make_config

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
RULES = 'error.type:PaymentDeclined -> payment-declined, relay-e2e title="Payment declined"'
GROUPING_KEY = "payment-declined ⋄ relay-e2e"  # Bugsink joins fingerprint parts with " ⋄ "

CREATE_PROJECT = """
from teams.models import Team
from projects.models import Project
team = Team.objects.create(name="relay-e2e")
project = Project.objects.create(name="relay-e2e", team=team)
print(project.dsn)
"""


class PaymentDeclined(Exception):
    pass


@dataclass
class Bugsink:
    url: str
    dsn: str
    database: Path

    def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(query, args).fetchall()


def _manage(directory: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bugsink_conf", "PYTHONPATH": str(directory)}
    return subprocess.Popen(
        [sys.executable, "-m", "bugsink.scripts.manage", *args],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def bugsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    directory = tmp_path_factory.mktemp("bugsink")
    port = free_port()
    conf = directory / "bugsink_conf.py"
    create = subprocess.run(
        [
            sys.executable,
            "-m",
            "bugsink.scripts.create_conf",
            "--template",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--output-file",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert create.returncode == 0, create.stderr
    database = directory / "db.sqlite3"
    with conf.open("a") as f:
        # Both databases under the test's directory; the `local` template already runs
        # background tasks eagerly (in the request), so no task runner is needed.
        f.write(f'\nDATABASES["default"]["NAME"] = {str(database)!r}\n')
        f.write(f'DATABASES["snappea"]["NAME"] = {str(directory / "snappea.sqlite3")!r}\n')
    # the two databases migrate independently: in parallel
    migrations = [
        _manage(directory, "migrate", "-v0"),
        _manage(directory, "migrate", "--database=snappea", "-v0"),
    ]
    for proc in migrations:
        _finish(proc)
    dsn = _finish(_manage(directory, "shell", "-c", CREATE_PROJECT)).strip().splitlines()[-1]
    assert dsn.startswith("http://") and dsn.endswith(f"127.0.0.1:{port}/1"), dsn

    log = (directory / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--no-control-socket",
            "bugsink.wsgi",
        ],
        cwd=directory,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bugsink_conf", "PYTHONPATH": str(directory)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (directory / "gunicorn.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "bugsink did not become ready"
            time.sleep(0.1)
        yield Bugsink(url=url, dsn=dsn, database=database)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def close_sdk() -> Iterator[None]:
    yield
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2)


def _charge(order: int, card_number: str, email: str) -> None:
    amount = order * 10
    raise PaymentDeclined(
        f"card {card_number} of {email} declined for order {order} ({amount} EUR)"
    )


async def test_bugsink_stores_the_scrubbed_event_grouped_by_the_relay_fingerprint(
    bugsink: Bugsink, aiohttp_client: Any, close_sdk: None
) -> None:
    config = make_config(
        bugsink.url,
        projects=[{"id": 42, "keys": [KEY], "upstream_dsn": bugsink.dsn}],
        policy={"fingerprinting": RULES},
    )
    relay = await aiohttp_client(create_app(config))
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
        include_local_variables=True,
        release="shop@2.0.0",
    )
    sentry_sdk.set_user({"id": "u-17", "email": EMAIL, "ip_address": "198.51.100.23"})
    sentry_sdk.set_extra("customer", {"email": EMAIL, "card": CARD})
    event_ids = []
    for order in (1, 2):  # different exception values: Bugsink alone would make two issues
        try:
            _charge(order, CARD, EMAIL)
        except PaymentDeclined:
            event_ids.append(sentry_sdk.capture_exception())
    # the SDK's transport thread talks to the relay on this loop: never block the loop
    await asyncio.to_thread(sentry_sdk.flush, 5)

    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = bugsink.rows("SELECT event_id, data, issue_id, grouping_id FROM events_event")
        if len(rows) >= 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(r[0].replace("-", "") for r in rows) == sorted(str(e) for e in event_ids)

    card_digits = CARD.replace(" ", "")
    for _, data, _, _ in rows:
        assert EMAIL not in data
        assert CARD not in data and card_digits not in data
        assert "198.51.100.23" not in data
        assert "[email]" in data  # replaced where it was, not lost with its context
        event = orjson.loads(data)
        assert event["fingerprint"] == ["payment-declined", "relay-e2e"]
        (exc,) = event["exception"]["values"]
        assert exc["type"] == "PaymentDeclined"
        assert "declined for order" in exc["value"]  # scrubbed, not emptied
        frame = exc["stacktrace"]["frames"][-1]
        assert frame["function"] == "_charge"
        assert "email" not in frame["vars"] or EMAIL not in str(frame["vars"]["email"])

    # one issue, grouped by the relay's fingerprint
    assert len({r[2] for r in rows}) == 1
    groupings = bugsink.rows(
        "SELECT grouping_key FROM issues_grouping WHERE id IN (?, ?)", rows[0][3], rows[1][3]
    )
    assert groupings == [(GROUPING_KEY,)]
