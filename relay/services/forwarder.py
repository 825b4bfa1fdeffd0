"""The forwarder: drains the outbox to the upstream (HTTP or a file directory).

- 2xx: every item gets outcome `accepted`.
- 429: the upstream's limits (`X-Sentry-Rate-Limits`, else, or when none is still running,
  `Retry-After`) are cached per upstream key so the relay enforces them locally; the items
  get `rate_limited`.
- other 4xx: `invalid` / `upstream_rejected`, never retried.
- network errors, timeouts, 5xx, 408 and 3xx: retried with exponential backoff and full
  jitter, up to `upstream.max_attempts`, then `internal` / `send_failed`.
- after `upstream.outage_after` consecutive failures the upstream is *down*: one worker
  probes it with backoff (up to `probe_max_s`) while the others hold their entries and the
  outbox keeps accepting. A probe that does not reach the upstream (a network error, a
  timeout, 502-504) costs its envelope no attempt, so an outage gives up on nothing. A
  probe the upstream answers with a failure (a 500) counts: an envelope it fails every
  time is given up on after its attempts, and the next one probes, instead of it holding
  every other forever. When a probe succeeds every worker resumes, in queue order.
- an entry whose every category is under a limit the upstream announced (a 429) is not
  sent: it gets `rate_limited` with the limit's reason (or `ratelimit_backoff`), as the
  SDKs and Sentry's Relay do, so a backlog is not flushed into a limited upstream.
- an envelope sent a minute or more after the relay accepted it has its `sent_at` moved
  by that wait (`relay.protocol.sent_at`), so that Sentry's clock-drift correction does
  not move its timestamps by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config import UpstreamConfig
from relay.logs import log_unexpected
from relay.outcomes import Outcome, OutcomeKind, OutcomeSink, Reason
from relay.policy.targets import CLIENT_NAME
from relay.protocol.categories import DataCategory
from relay.protocol.compress import gzip_worth
from relay.protocol.ratelimit_header import RateLimit, parse_rate_limits, parse_retry_after
from relay.protocol.sent_at import shift_sent_at
from relay.services.client_reports import ClientReports
from relay.services.metrics import Metrics
from relay.services.outbox import Outbox, OutboxEntry
from relay.services.upstream_http import UpstreamHttp
from relay.services.upstream_limits import UpstreamLimits

log = logging.getLogger("relay.forwarder")

#: Shared `accepted` outcomes kept before the cache starts over.
_ACCEPTED_CACHE_SIZE = 4096


#: A failed read of the outbox is retried after this long, doubling up to the maximum.
READ_RETRY_S = 0.5
READ_RETRY_MAX_S = 30.0
#: An envelope sent this long after it was accepted has its `sent_at` moved by the wait
#: (`relay.protocol.sent_at`): Sentry would take a long wait for the SDK's clock drift.
SENT_AT_SHIFT_AFTER_S = 60.0


class Forwarder:
    """Background tasks that deliver outbox entries.

    Parameters:
        outbox: where entries wait.
        http: the upstream HTTP client (shared).
        config: the `upstream` section (timeouts, attempts, backoff, gzip, concurrency).
        limits: the upstream rate-limit cache, updated on 429.
        outcomes: where each item's final outcome goes.
        metrics: upstream request counters.
        sleep: injectable for tests.
    """

    def __init__(
        self,
        outbox: Outbox,
        http: UpstreamHttp,
        config: UpstreamConfig,
        limits: UpstreamLimits,
        outcomes: OutcomeSink,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        concurrency: int | None = None,
        keeps_unsent: bool = False,
        retarget: Callable[[OutboxEntry], None] | None = None,
        name: str = "upstream",
        count_request: Callable[[int | None], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.http = http
        self.config = config
        self.limits = limits
        self.outcomes = outcomes
        self.metrics = metrics
        #: What its log lines call the upstream ("shadow upstream" for the shadow's).
        self.name = name
        #: Counts each request by status: `relay_upstream_requests_total` by default.
        self._count_request = count_request or metrics.count_upstream
        self._sleep = sleep
        self._concurrency = concurrency or config.concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self._made_dirs: set[str] = set()
        self._up = asyncio.Event()
        self._up.set()
        self._failures = 0
        self._probing = False
        #: Set when the probing worker stops probing, so that a waiting one takes over
        #: (a new one for each prober: never set while one probes).
        self._turn = asyncio.Event()
        #: The outbox keeps unsent entries across restarts (a disk spool): no outcome on stop.
        self.keeps_unsent = keeps_unsent
        #: Where drops are recorded for the upstream's client reports (set once started).
        self.reports: ClientReports | None = None
        #: Points an entry at its project's upstream under the current config (in place).
        self._retarget = retarget
        #: `accepted` outcomes by (reason, category, quantity, project id).
        self._accepted: dict[tuple[str, str, int, int | None], Outcome] = {}

    def start(self) -> None:
        for i in range(self._concurrency):
            self._tasks.append(asyncio.create_task(self._run(), name=f"relay-forwarder-{i}"))

    async def drain(self, timeout: float) -> None:
        """Wait until everything queued is delivered (or `timeout`), then stop the tasks.

        With a disk spool there is nothing to wait for: unsent records stay on disk.
        """
        deadline = time.monotonic() + timeout
        while not self.keeps_unsent and self.outbox.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.stop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for entry in self.outbox.drain_nowait():
            self._finish(entry, OutcomeKind.INTERNAL, Reason.SHUTDOWN)

    def expired(self, entry: OutboxEntry) -> None:
        """An entry the outbox discarded for age gets its outcome."""
        self._finish(entry, OutcomeKind.INTERNAL, Reason.EXPIRED)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                entry = await self.outbox.get()
            except Exception:
                # The spool could not read its next record (too many open files, an I/O
                # error): nothing was taken, so wait and read again, never stop.
                failures += 1
                log.exception("cannot read the next queued envelope; trying again")
                await self._sleep(min(READ_RETRY_MAX_S, READ_RETRY_S * 2 ** min(failures - 1, 8)))
                continue
            failures = 0
            try:
                await self._deliver(entry)
            except asyncio.CancelledError:
                if not self.keeps_unsent:
                    self._finish(entry, OutcomeKind.INTERNAL, Reason.SHUTDOWN)
                raise
            except Exception:  # a bug must not kill the forwarder
                log_unexpected(log, "forwarding failed unexpectedly; envelope dropped")
                self._finish(entry, OutcomeKind.INTERNAL, Reason.SEND_FAILED)
            self._done(entry)

    def _done(self, entry: OutboxEntry) -> None:
        try:
            self.outbox.done(entry)
        except Exception:  # the spool's bookkeeping (deleting a finished segment) failed
            log.exception("could not mark a delivered envelope done in the outbox")

    def _finish(self, entry: OutboxEntry, kind: OutcomeKind, reason: str) -> None:
        emit = self.outcomes.emit
        project_id = entry.project_id
        if kind is OutcomeKind.ACCEPTED:
            # The outcome of nearly every item: the same few values over and over, and
            # an Outcome is immutable, so they are shared instead of built per item.
            cache = self._accepted
            for category, quantity in entry.quantities:
                key = (reason, category, quantity, project_id)
                outcome = cache.get(key)
                if outcome is None:
                    if len(cache) >= _ACCEPTED_CACHE_SIZE:
                        cache.clear()
                    outcome = cache[key] = Outcome(kind, reason, category, quantity, project_id)
                emit(outcome)
            return
        reports = self.reports
        for category, quantity in entry.quantities:
            outcome = Outcome(kind, reason, category, quantity, project_id)
            emit(outcome)
            if reports is not None:
                reports.record(entry.target, outcome)  # it leaves out the upstream's own

    # -- upstream health -------------------------------------------------------------------

    @property
    def upstream_up(self) -> bool:
        return self._up.is_set()

    def _succeeded(self) -> None:
        self._failures = 0
        if not self._up.is_set():
            log.warning("%s is back; replaying the backlog", self.name)
            self._up.set()

    def _failed(self) -> None:
        self._failures += 1
        if self._up.is_set() and self._failures >= self.config.outage_after:
            log.error(
                "%s outage: %d consecutive failures; probing with backoff",
                self.name,
                self._failures,
            )
            self._up.clear()

    async def _probe(self, entry: OutboxEntry) -> int | None:
        """While the upstream is down one worker probes it with `entry`; the others wait,
        until the upstream is back or the prober stops probing (its envelope given up on):
        then one of them probes with its own."""
        while self._probing and not self._up.is_set():
            await _either(self._up, self._turn)
        if self._up.is_set():
            entry.attempts += 1
            return await self._post(entry)
        self._probing = True
        self._turn = asyncio.Event()
        try:
            delay = float(self.config.retry_base_s)
            while not self._up.is_set():
                await self._sleep(random.uniform(delay / 2, delay))
                if self._up.is_set():
                    break
                if self._retarget is not None:
                    self._retarget(entry)  # a reload may have moved the upstream
                    if entry.target.is_file:
                        self._succeeded()  # nothing to probe: `_deliver` writes it
                        return None
                status = await self._post(entry)
                if _unreachable(status):
                    delay = min(self.config.probe_max_s, delay * 2)
                    continue  # still down: the attempt is not counted
                entry.attempts += 1
                if status is not None and (status < 500 or status == 429):
                    self._succeeded()
                    return status
                if entry.attempts >= self.config.max_attempts:
                    # Answered, and this envelope failed there every time (a 500): given
                    # up on, so that the next one probes instead of it holding all others.
                    return status
                delay = min(self.config.probe_max_s, delay * 2)
            entry.attempts += 1
            return await self._post(entry)
        finally:
            self._probing = False
            self._turn.set()

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver(self, entry: OutboxEntry) -> None:
        while True:
            if self._retarget is not None:
                self._retarget(entry)  # the config may have changed while it waited
            if entry.target.is_file:
                entry.attempts += 1
                try:
                    await asyncio.to_thread(self._write_file, entry)
                except OSError as exc:  # a full disk, a directory gone or not writable
                    log.warning("cannot write envelope to %s: %s", entry.target.url, _describe(exc))
                    if entry.attempts >= self.config.max_attempts:
                        log.error("giving up on envelope after %d attempts", entry.attempts)
                        self._finish(entry, OutcomeKind.INTERNAL, Reason.SEND_FAILED)
                        return
                    await self._sleep(self.backoff(entry.attempts))
                    continue
                self._finish(entry, OutcomeKind.ACCEPTED, Reason.FORWARDED)
                return
            limit = self._limited(entry)
            if limit is not None:
                self._finish(
                    entry, OutcomeKind.RATE_LIMITED, limit.reason or Reason.RATELIMIT_BACKOFF
                )
                return
            if self._up.is_set():
                entry.attempts += 1
                status = await self._post(entry)
            else:
                status = await self._probe(entry)  # counts the attempts it makes
            if status is not None and 200 <= status < 300:
                self._succeeded()
                self._finish(entry, OutcomeKind.ACCEPTED, Reason.FORWARDED)
                return
            if status == 429:
                self._succeeded()
                self._finish(entry, OutcomeKind.RATE_LIMITED, Reason.UPSTREAM_RATE_LIMITED)
                return
            if status is not None and 400 <= status < 500 and status != 408:
                self._succeeded()
                log.warning(
                    "upstream rejected envelope",
                    extra={"status": status, "project": entry.project_id},
                )
                self._finish(entry, OutcomeKind.INVALID, Reason.UPSTREAM_REJECTED)
                return
            self._failed()
            if not self._up.is_set() and (
                _unreachable(status) or entry.attempts < self.config.max_attempts
            ):
                continue  # outage: the entry waits for the upstream (see `_probe`)
            if entry.attempts >= self.config.max_attempts:
                log.error("giving up on envelope after %d attempts", entry.attempts)
                self._finish(entry, OutcomeKind.INTERNAL, Reason.SEND_FAILED)
                return
            await self._sleep(self.backoff(entry.attempts))

    def _limited(self, entry: OutboxEntry) -> RateLimit | None:
        """A limit the upstream announced that covers every category of `entry` (the
        longest), or None: an entry with a category left, or none at all, is sent. Items
        that count in no category (client reports: `default`) are never limited, as
        Sentry never rate limits them, so an entry holding one is sent."""
        key = entry.target.key
        if not entry.quantities or entry.target.is_file or not self.limits.has(key):
            return None
        found: RateLimit | None = None
        for category, _ in entry.quantities:
            if category in _NEVER_LIMITED:
                return None
            limit = self.limits.check(key, category)
            if limit is None:
                return None
            if found is None or limit.retry_after > found.retry_after:
                found = limit
        return found

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the given (1-based) attempt."""
        ceiling = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _post(self, entry: OutboxEntry) -> int | None:
        target = entry.target
        ua = entry.user_agent
        headers = {
            "Content-Type": entry.content_type,
            "X-Sentry-Auth": target.auth_header(entry.client),
            # The SDK's, as Sentry's Relay forwards it: Sentry reads browsers from it (CSP
            # reports, logs, spans).
            "User-Agent": ua
            if ua and len(ua) <= _MAX_USER_AGENT and _printable(ua)
            else CLIENT_NAME,
        }
        body = entry.body
        encoding = entry.encoding
        waited = time.time() - entry.received_at
        if entry.endpoint == "envelope" and waited >= SENT_AT_SHIFT_AFTER_S:
            plain = zlib.decompress(body, wbits=31) if encoding == "gzip" else body
            shifted = shift_sent_at(plain, waited)
            if shifted is not None:
                body, encoding = shifted, ""
        if encoding == "gzip":
            if self.config.gzip:
                headers["Content-Encoding"] = "gzip"
            else:
                body = zlib.decompress(body, wbits=31)  # an upstream that takes no gzip
        else:
            gzipped = gzip_worth(body, self.config.gzip_level if self.config.gzip else None)
            if gzipped is not None:
                body = gzipped
                headers["Content-Encoding"] = "gzip"
        try:
            url = target.url if entry.endpoint == "envelope" else target.url_for(entry.endpoint)
            reply = await self.http.post(url, body, headers, self.config.timeout_s)
        except (TimeoutError, OSError) as exc:
            self._count_request(None)
            log.warning("%s request failed: %s", self.name, _describe(exc))
            return None
        status = reply.status
        if 300 <= status < 400:
            log.error(
                "upstream answered %d (a redirect), which the relay does not follow: "
                "point upstream.url (or the DSN) at the address it redirects to",
                status,
            )
        if status == 429 or reply.rate_limits is not None:
            self._learn_limits(target.key, reply.rate_limits, reply.retry_after, status)
        self._count_request(status)
        return status

    def _learn_limits(
        self, key: str, header: str | None, retry_after: str | None, status: int
    ) -> None:
        # Limits already over (`0` seconds) limit nothing: a 429 with no other falls back
        # to `Retry-After`, as Sentry's Relay reads it.
        limits = [lim for lim in parse_rate_limits(header) if lim.retry_after > 0] if header else []
        if not limits and status == 429:
            limits = [RateLimit(parse_retry_after(retry_after), ())]
        if limits:
            self.limits.add(key, limits)

    def _write_file(self, entry: OutboxEntry) -> None:
        directory = entry.target.url
        if directory not in self._made_dirs:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(directory)
        suffix = "envelope" if entry.endpoint == "envelope" else entry.endpoint
        stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_file_id(entry.event_id)}"
        tmp = os.path.join(directory, f".{stem}.{uuid.uuid4().hex[:8]}.tmp")
        body = entry.body if entry.encoding != "gzip" else zlib.decompress(entry.body, wbits=31)
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
            _publish(tmp, directory, stem, suffix)
        except OSError:
            # No half-written file stays behind, and the next attempt makes the directory
            # again if it is gone.
            self._made_dirs.discard(directory)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _publish(tmp: str, directory: str, stem: str, suffix: str) -> None:
    """Gives the written file `tmp` its name, `<stem>.<suffix>`, or `<stem>-2.<suffix>`,
    ... when that is taken: envelopes with one event id (an SDK's retry, an event and its
    attachments sent apart) within one second each keep a file, none replaces another.
    A hard link never replaces a file. Where links are not supported, a name is checked
    first and then taken, so two writers racing for one name could still collide there."""
    for n in range(1, 10_000):
        final = os.path.join(directory, f"{stem}.{suffix}" if n == 1 else f"{stem}-{n}.{suffix}")
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system
            if os.path.lexists(final):
                continue
            os.replace(tmp, final)
            return
        os.unlink(tmp)
        return
    raise FileExistsError(f"no free file name for {stem} in {directory}")


def _file_id(event_id: str | None) -> str:
    """The event id for a file name: as the SDK sent it when it is one (32 hex digits,
    dashes allowed), else a new one. The envelope header comes from the client: a `/`
    or a NUL in it must never reach a path."""
    if event_id:
        plain = event_id.replace("-", "").lower()
        if len(plain) == 32 and all(c in "0123456789abcdef" for c in plain):
            return plain
    return uuid.uuid4().hex


#: The longest SDK `User-Agent` forwarded (a longer one is replaced by the relay's own).
_MAX_USER_AGENT = 512


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


#: Answers that mean the upstream could not be reached (as Sentry's Relay counts them).
_UNREACHABLE = frozenset({502, 503, 504})


#: Categories of items that count in none (client reports and the like, `default`; an
#: unknown item type, `unknown`): no upstream limit applies to them.
_NEVER_LIMITED = frozenset({DataCategory.DEFAULT.value, DataCategory.UNKNOWN.value})


def _unreachable(status: int | None) -> bool:
    """A network error or timeout (None), or a gateway's 502-504."""
    return status is None or status in _UNREACHABLE


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Wait until `first` or `second` is set."""
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _describe(exc: BaseException) -> str:
    """For the log: the error's kind, and what it says when that helps."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
