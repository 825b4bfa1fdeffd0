"""The Redis limiter: counters shared by every relay process, standalone, Sentinel or Cluster.

One Lua script (`script.lua`) checks and consumes all-or-nothing per category. It is
called by SHA (`EVALSHA`) and loaded on `NOSCRIPT`, e.g. after Redis restarted.

Batching: checks that arrive in the same event-loop iteration leave together, so a
burst costs one round trip. Standalone and Sentinel send them as one `EVALSHA` (the
groups of every check, in arrival order, up to `MAX_MERGED_GROUPS` groups per call):
one script run and one reply instead of one per check. Cluster mode sends one
`EVALSHA` per check and slot in one pipeline.
One pipeline is in flight at a time per limiter; checks arriving meanwhile wait for
it and leave together in the next one. This keeps the order of one process's checks
the same on every node, and batches grow by themselves when Redis is slow.

Key layout and Redis Cluster. Keys are hash-tagged per counter owner:
`{relay:q:<quota>:<scope_id>}:...` for quotas, `{relay:b:<budget>:<scope_id>}:...` for
budgets and `{relay:s:<project>:<category>}:<hour>` for spike protection. So all windows
(and per-category counters) of one quota and scope id share a slot, and a project's
spike history is read with one slot's worth of GETs.

Tagging everything by project instead would not put one check in one slot anyway:
organization-scoped counters are shared by all projects, and tagging by organization
would pin every counter of the (single) organization to one node, which defeats the
cluster. So in Cluster mode a check sends one `EVALSHA` per slot it touches, all in
the same pipeline; each is atomic for its own counters. A category consumed in some
slots but rejected in another is refunded in the slots that consumed it, before the
check returns. Consequences, documented and tested:

- no enforced counter ever exceeds its limit, so "exactly N accepted" holds per quota;
- across slots the check is not atomic: while a refund is on its way, a concurrent
  check can be rejected by the reservation it undoes. Under contention on several
  slots at once the relay can therefore accept slightly fewer items than a limit
  allows, never more.

Standalone and Sentinel run the whole check as one script call, fully atomic.

In every mode counters can shrink (refunds, here or in another process, or keys lost
in a Redis restart), so a full counter (or the room left in one) is believed from the
in-process cache for `FULL_CACHE_S` only, not until its window ends; a rejection from
the cache still names the window's end as Retry-After.

Failures: connection errors, timeouts and cluster errors raise `LimiterUnavailable`
(see `BaseLimiter` for `on_error`). After a failure the store is skipped for a short,
growing pause (`_BACKOFF_MIN_S` .. `_BACKOFF_MAX_S`) so a dead Redis costs no
connect attempt per request; then the next call reconnects.

A check that times out must count nothing: a Redis that stalled runs the calls queued
on its sockets when it wakes, even those of connections closed meanwhile, and nothing
would undo what they counted (the checks were already decided without Redis; `share`
mode would push its amounts again). So each check call carries a deadline in Redis's
own time, `LATE_FRACTION` of the timeout after it was sent, and the script counts
nothing past it. Redis's time is learned from the answers (`_Clocks`), per hash slot,
as each node has its own clock. A refund that times out may still run later: that only
gives back what was taken.

Connections: the flushes use one connection of their own. For a plain `redis://` URL in
standalone mode it is a bare one (`resp.py`: RESP2, answers parsed by hiredis, one timer
per call), which costs a lone check a fifth less CPU than redis-py's. Its batches are
sent and settled by plain callbacks, with no flush task: the checks wake on the loop
turn after the answer arrives, not two turns later, and a lone check costs ~10 us less.
Connecting, a retry, reloading the script and refunds still run in a flush task. TLS,
Unix sockets, Sentinel and RESP3 use a redis-py connection from the client's pool, with
one timer around each exchange. Refunds and reads go through the client's pool either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from relay.config import RedisConfig
from relay.processing.quotas import CategoryDemand
from relay.services.limiter.core import BaseLimiter, Clock, LimiterUnavailable
from relay.services.limiter.resp import BareTarget, RespConnection, bare_target
from relay.services.limiter.share import SYNC_S, QuotaShare

log = logging.getLogger("relay.limiter")

SCRIPT = (resources.files("relay.services.limiter") / "script.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
_EVALSHA = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode("ascii") + b"\r\n"
_CHECK = b"$1\r\nc\r\n"

#: Standalone on a plain `redis://` URL: flushes go through `resp.RespConnection` (tests
#: switch it off to run them through redis-py's connection, as TLS and Sentinel do).
BARE_CONNECTION = True
#: Connection timeouts: a slow Redis must not hold requests for long.
CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0
#: How long a full counter is believed before Redis is asked again.
FULL_CACHE_S = 1.0
#: Standalone and Sentinel: most category groups merged into one script call (a bound
#: on how long one script run keeps Redis busy).
MAX_MERGED_GROUPS = 512
#: A check's script call counts nothing when it runs later than this fraction of
#: `SOCKET_TIMEOUT_S` after it was sent. The rest of the timeout is for the answer's way
#: back and the error of the estimate of Redis's clock (at most the fastest round trip
#: seen), so that no call the relay has given up on counts.
LATE_FRACTION = 0.75
#: How long an estimate of a Redis node's clock stands before a worse one replaces it.
CLOCK_SAMPLE_S = 60.0
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0

_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

Client = Redis | RedisCluster


@dataclass(slots=True)
class _Call:
    """One EVALSHA: counters of one slot, grouped per demand."""

    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    #: (demand index, counter indices) per group, in script order.
    groups: list[tuple[int, list[int]]] = field(default_factory=list)
    #: The keys' hash slot in Cluster mode (0 otherwise): whose clock the deadline is in.
    slot: int = 0

    @property
    def check(self) -> bool:
        """A check (rather than a refund): its script call takes a deadline."""
        return self.args[0] == "c"


@dataclass(slots=True)
class _Job:
    demands: list[CategoryDemand]
    calls: list[_Call]
    future: asyncio.Future[list[tuple[bool, list[int]]]]


@functools.lru_cache(maxsize=8192)
def _bulk(value: str | int) -> bytes:
    """One RESP bulk string; counter keys, limits, increments and ttls repeat a lot."""
    data = value.encode("utf-8") if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(call: _Call, deadline_ms: int) -> bytes:
    """`EVALSHA <sha> <numkeys> keys... args...` in the Redis protocol (RESP2); a check
    gets its deadline as its second argument."""
    count = len(call.keys)
    args = call.args
    if not call.check:
        head = _EVALSHA % (3 + count + len(args))
        return b"".join([head, _bulk(count), *map(_bulk, call.keys), *map(_bulk, args)])
    deadline = b"%d" % deadline_ms  # never cached: each one is new
    return b"".join(
        [
            _EVALSHA % (4 + count + len(args)),
            _bulk(count),
            *map(_bulk, call.keys),
            _CHECK,
            b"$%d\r\n%s\r\n" % (len(deadline), deadline),
            *map(_bulk, args[1:]),
        ]
    )


class _Late(RedisTimeoutError):
    """The script ran past the call's deadline and counted nothing."""


class _Clocks:
    """Redis's time as seen from here, per hash slot: the deadlines of check calls.

    An answer carries Redis's time when the script ran, which was before the answer
    arrived, so `redis_time - monotonic_at_arrival` is at most the true offset between the
    two clocks. The highest such sample is kept: deadlines computed from it are early by
    at most the round trip it came with, never late. It stands for `CLOCK_SAMPLE_S`, then
    the next sample replaces it, so a Redis clock set back is followed within a minute; a
    clock set forward is followed at the next answer (the calls that ran past a deadline
    set too early meanwhile failed, counting nothing).
    """

    __slots__ = ("_offsets",)

    def __init__(self) -> None:
        #: slot: (Redis's time in seconds minus `time.monotonic()`, when it was learned).
        self._offsets: dict[int, tuple[float, float]] = {}

    def deadline_ms(self, slot: int, sent: float) -> int:
        """The deadline in Redis's time (ms) of a call sent at `sent` (monotonic); 0, no
        deadline, before anything is known of the slot's clock."""
        known = self._offsets.get(slot)
        if known is None:
            return 0
        return int((sent + SOCKET_TIMEOUT_S * LATE_FRACTION + known[0]) * 1000)

    def learn(self, slot: int, redis_ms: int, received: float) -> None:
        sample = redis_ms / 1000 - received
        known = self._offsets.get(slot)
        if known is None or sample >= known[0] or received - known[1] > CLOCK_SAMPLE_S:
            self._offsets[slot] = (sample, received)

    def pack(self, calls: list[_Call]) -> bytes:
        """The calls as one write, sent now."""
        sent = time.monotonic()
        return b"".join(_pack(call, self.deadline_ms(call.slot, sent)) for call in calls)

    def unwrap(self, calls: list[_Call], results: list[Any]) -> list[Any]:
        """The answers without Redis's time (learned here); a check that ran past its
        deadline as the `_Late` error it ends with."""
        received = time.monotonic()
        out = list(results)
        for i, (call, result) in enumerate(zip(calls, results, strict=True)):
            if not call.check or not isinstance(result, list) or not result:
                continue
            self.learn(call.slot, int(result[0]), received)
            if len(result) == 2 and int(result[1]) == _LATE:
                out[i] = _Late("redis ran the check too late to count it")
            else:
                out[i] = result[1:]
        return out


def _build_calls(demands: list[CategoryDemand], prefix: str, cluster: bool) -> list[_Call]:
    if not cluster:
        return [_one_call(demands, prefix)]
    by_slot: dict[int, _Call] = {}
    for d, demand in enumerate(demands):
        per_slot: dict[int, list[int]] = {}
        keys = [c.key(prefix) for c in demand.counters]
        for i, key in enumerate(keys):
            slot = key_slot(key.encode("utf-8")) if cluster else 0
            per_slot.setdefault(slot, []).append(i)
        for slot, indices in per_slot.items():
            call = by_slot.setdefault(slot, _Call(slot=slot))
            call.groups.append((d, indices))
            call.args.append(len(indices))
            for i in indices:
                counter = demand.counters[i]
                call.keys.append(keys[i])
                limit = counter.limit if counter.gating and counter.limit is not None else -1
                call.args.extend((limit, counter.increment, counter.ttl))
    calls = list(by_slot.values())
    for call in calls:
        call.args[:0] = ["c", len(call.groups)]
    return calls


def _one_call(demands: list[CategoryDemand], prefix: str) -> _Call:
    """`_build_calls` outside Cluster mode: every counter in one call, one group per demand."""
    call = _Call(args=["c", len(demands)])
    keys, args, groups = call.keys, call.args, call.groups
    for d, demand in enumerate(demands):
        counters = demand.counters
        groups.append((d, list(range(len(counters)))))
        args.append(len(counters))
        for counter in counters:
            keys.append(counter.key(prefix))
            limit = counter.limit if counter.gating and counter.limit is not None else -1
            args += (limit, counter.increment, counter.ttl)
    return call


class RedisLimiter(BaseLimiter):
    """Counters in Redis, shared by every relay process.

    Parameters:
        client: a redis-py asyncio `Redis` (standalone or from Sentinel) or `RedisCluster`.
        clock: Unix seconds; windows, retry times and spike hours follow it.
        on_error: "allow" or "reject" when Redis fails.
        prefix: first part of every key (inside the hash tag).
        helpers: further clients closed with this limiter (Sentinel connections).
    """

    def __init__(
        self,
        client: Client,
        *,
        clock: Clock = time.time,
        on_error: str = "allow",
        prefix: str = "relay",
        helpers: Sequence[Redis] = (),
    ) -> None:
        super().__init__(clock=clock, on_error=on_error, prefix=prefix)
        self._client = client
        self._helpers = list(helpers)
        self._cluster = isinstance(client, RedisCluster)
        # Counters can shrink (refunds from any process), so "full" is re-checked now and then.
        self.full_cache_s = FULL_CACHE_S
        self._pending: list[_Job] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        #: Set by `close` while a batch is in flight: resolved when the last one is done.
        self._drained: asyncio.Future[None] | None = None
        self._down_until = 0.0
        self._backoff = _BACKOFF_MIN_S
        #: Standalone and Sentinel: the connection the (never overlapping) flushes use,
        #: a bare one (`resp.py`) for a plain `redis://` target, else redis-py's.
        self._conn: AbstractConnection | None = None
        self._bare_target = bare_target(client) if BARE_CONNECTION else None
        self._bare: RespConnection | None = None
        self._sync_handle: asyncio.TimerHandle | None = None
        self._clocks = _Clocks()
        self._closed = False

    @classmethod
    def from_config(cls, cfg: RedisConfig, *, clock: Clock = time.time) -> RedisLimiter:
        client, helpers = connect(cfg)
        limiter = cls(
            client, clock=clock, on_error=cfg.on_error, prefix=cfg.prefix, helpers=helpers
        )
        if cfg.quota_cache_ratio > 0:
            limiter.share = QuotaShare(
                cfg.quota_cache_ratio, cfg.quota_cache_max, cfg.prefix, mode=cfg.quota_cache_mode
            )
        return limiter

    # -- the quota cache --------------------------------------------------------------

    def _share_taken(self) -> None:
        if self._sync_handle is None and not self._closed:
            self._sync_handle = asyncio.get_running_loop().call_later(SYNC_S, self._start_sync)

    def _start_sync(self) -> None:
        self._sync_handle = None
        self._spawn(self.sync(roll=True))

    async def _before_read(self) -> None:
        await self.sync()

    async def sync(self, roll: bool = False) -> None:
        """Sync the quota cache with Redis: add what it accepted (`share` mode; on failure
        it stays unsynced, and the next sync or check that asks Redis adds it), or give its
        allowances back (`reserve`; on failure they stay counted until their windows end).
        `roll` (the periodic sync): in `reserve` mode, counters in use keep an allowance
        sized to their traffic instead (`QuotaShare.roll`)."""
        share = self.share
        if share is None:
            return
        now = self._clock()
        pushes, reservations = share.roll(now) if roll else (share.drain_all(now), [])
        if pushes or reservations:
            try:
                answers = await self._consume([*pushes, *reservations])
            except LimiterUnavailable:
                share.restore(pushes)
                share.abandon(reservations)
                self.redis_errors += 1
                self._share_taken()
                return
            share.granted(reservations, answers[len(pushes) :], grow=False)
        if roll and share.holding:
            # What is held goes back at a sync once unused (also when this one had
            # nothing to change: an allowance already at its size).
            self._share_taken()

    # -- health -----------------------------------------------------------------------

    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise LimiterUnavailable("redis is unavailable (waiting before reconnecting)")

    def _failed(self, exc: BaseException) -> LimiterUnavailable:
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
        return LimiterUnavailable(f"redis failed: {type(exc).__name__}")

    def _succeeded(self) -> None:
        self._backoff = _BACKOFF_MIN_S

    # -- consuming, batched -----------------------------------------------------------

    async def _consume(self, demands: list[CategoryDemand]) -> list[tuple[bool, list[int]]]:
        self._check_up()
        loop = asyncio.get_running_loop()
        job = _Job(demands, _build_calls(demands, self.prefix, self._cluster), loop.create_future())
        self._pending.append(job)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._bare_ready():
                loop.call_soon(self._send_bare)
            else:
                self._spawn(self._flush())
        return await job.future

    # The bare connection's path is plain callbacks. A batch leaves on the loop turn after
    # its first check (so that the checks of that turn join it), and its answers settle
    # the checks from the connection's `data_received`. Everything else (connecting, a
    # retry, a script to load, a refund, redis-py and Cluster) runs in a flush task.
    # `_flush_scheduled` stays set from the first batch to the last, whichever path
    # sends them, so one batch at most is in flight.

    def _bare_ready(self) -> bool:
        conn = self._bare
        return conn is not None and not conn.closed and not conn.busy

    def _send_bare(self) -> None:
        if not self._pending:
            self._flush_done()
            return
        conn = self._bare
        if conn is None or not self._bare_ready():  # closed or replaced meanwhile
            self._spawn(self._flush())
            return
        jobs, self._pending = self._pending, []
        merged, lengths = _merge(jobs)
        done = functools.partial(self._bare_answered, jobs, merged, lengths)
        try:
            conn.send(self._clocks.pack(merged), len(merged), SOCKET_TIMEOUT_S, done)
        except RedisConnectionError:  # closed before the loop told us
            self._bare = None
            self._spawn(self._flush(jobs))

    def _bare_answered(
        self,
        jobs: list[_Job],
        merged: list[_Call],
        lengths: list[list[int]],
        replies: list[Any] | Exception,
    ) -> None:
        try:
            if not isinstance(replies, Exception):
                replies = self._clocks.unwrap(merged, replies)
            if isinstance(replies, RedisConnectionError) or (
                not isinstance(replies, Exception)
                and any(isinstance(r, NoScriptError) for r in replies)
            ):
                # Broken (perhaps while idle), or Redis lost the script: nothing was
                # counted. The flush task reconnects (once) or loads the script.
                if isinstance(replies, Exception):
                    self._bare = None
                self._spawn(self._flush(jobs))
                return
            if isinstance(replies, Exception):  # a timeout: the script may have run
                self._bare = None
                failure = self._failed(replies)
                for job in jobs:
                    _settle_job(job, failure)
            else:
                if not any(isinstance(r, BaseException) and _is_outage(r) for r in replies):
                    self._succeeded()
                outcomes, refunds = self._outcomes(jobs, _split(replies, lengths))
                if refunds:
                    self._spawn(self._flush(jobs, (outcomes, refunds)))
                    return
                for job, outcome in outcomes:
                    _settle_job(job, outcome)
        except Exception as exc:  # never leave a check waiting
            for job in jobs:
                _settle_job(job, LimiterUnavailable(repr(exc)))
        self._send_bare()

    def _flush_done(self) -> None:
        self._flush_scheduled = False
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(
        self,
        jobs: list[_Job] | None = None,
        answered: tuple[list[tuple[_Job, Any]], list[tuple[str, int]]] | None = None,
    ) -> None:
        """Send pending checks, one pipeline at a time; what arrives meanwhile goes next.
        First the `jobs` the bare path handed over (see `_run`)."""
        try:
            if jobs is not None:
                await self._run(jobs, answered)
            while self._pending:
                if self._bare_ready():
                    self._send_bare()  # the bare path takes over from here
                    return
                jobs, self._pending = self._pending, []
                await self._run(jobs)
        except BaseException:
            self._flush_done()
            raise
        self._flush_done()

    async def _run(
        self,
        jobs: list[_Job],
        answered: tuple[list[tuple[_Job, Any]], list[tuple[str, int]]] | None = None,
    ) -> None:
        """Send the jobs and answer each, never leaving one waiting. With `answered` (the
        bare path's outcomes, and refunds to make first), only refund and answer."""
        try:
            if answered is None:
                try:
                    if self._cluster:
                        results = await self._eval([c for job in jobs for c in job.calls])
                    else:
                        merged, lengths = _merge(jobs)
                        results = _split(await self._eval(merged), lengths)
                except LimiterUnavailable as exc:
                    for job in jobs:
                        _settle_job(job, exc)
                    return
                answered = self._outcomes(jobs, results)
            outcomes, refunds = answered
            if refunds:
                # Before answering, so that a caller never sees a reservation being undone.
                for key, _ in refunds:
                    self.active_limits.discard(key)
                await self._refund(refunds)
            for job, outcome in outcomes:
                _settle_job(job, outcome)
        except Exception as exc:
            for job in jobs:
                _settle_job(job, LimiterUnavailable(repr(exc)))

    def _outcomes(
        self, jobs: list[_Job], results: list[Any]
    ) -> tuple[list[tuple[_Job, Any]], list[tuple[str, int]]]:
        """Each job's answers (or the error it ends with), and what to refund first."""
        refunds: list[tuple[str, int]] = []
        outcomes: list[tuple[_Job, Any]] = []
        pos = 0
        for job in jobs:
            job_results = results[pos : pos + len(job.calls)]
            pos += len(job.calls)
            answers, job_refunds, broken = _assemble(job, job_results)
            refunds.extend(job_refunds)
            failed = next((r for r in job_results if isinstance(r, BaseException)), None)
            if failed is None and broken is None:
                outcomes.append((job, answers))
            elif failed is None:
                outcomes.append((job, LimiterUnavailable(f"redis could not count: {broken}")))
            elif _is_outage(failed):
                outcomes.append((job, self._failed(failed)))
            else:
                outcomes.append((job, LimiterUnavailable(f"redis answered an error: {failed}")))
        return outcomes, refunds

    async def _refund(self, refunds: list[tuple[str, int]]) -> None:
        """Within a flush (on the flushes' connection): undo a partial reservation."""
        try:
            await self._eval(_refund_calls(refunds))
        except LimiterUnavailable:
            self.redis_errors += 1

    async def _eval(self, calls: list[_Call]) -> list[Any]:
        """Run the calls in one pipeline, loading the script once if Redis lacks it."""
        results = await self._pipeline_eval(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            try:
                await self._client.script_load(SCRIPT)
            except _ERRORS as exc:
                raise self._failed(exc) from exc
            again = await self._pipeline_eval([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _pipeline_eval(self, calls: list[_Call]) -> list[Any]:
        if not self._cluster:
            try:
                results = self._clocks.unwrap(calls, await self._direct_eval(calls))
            except _ERRORS as exc:
                raise self._failed(exc) from exc
            if not any(isinstance(r, BaseException) and _is_outage(r) for r in results):
                self._succeeded()
            return results
        try:
            pipe = self._client.pipeline()
            sent = time.monotonic()
            for call in calls:
                args = call.args
                if call.check:
                    args = ["c", self._clocks.deadline_ms(call.slot, sent), *args[1:]]
                # Not `pipe.evalsha`: redis-py refuses that name in cluster pipelines, yet
                # routes EVALSHA by its keys (all of one slot here) like any command.
                pipe.execute_command("EVALSHA", SCRIPT_SHA, len(call.keys), *call.keys, *args)
            results = self._clocks.unwrap(calls, await pipe.execute(raise_on_error=False))
        except _ERRORS as exc:
            raise self._failed(exc) from exc
        if not any(isinstance(r, BaseException) and _is_outage(r) for r in results):
            self._succeeded()
        return results

    async def _direct_eval(self, calls: list[_Call]) -> list[Any]:
        """The calls as one write on the limiter's own connection, answers read in order.

        What a redis-py pipeline does, without its per-command bookkeeping: the flushes
        of one limiter never overlap, so one connection serves them all. A connection
        that broke while idle (Redis restarted) is replaced once, as redis-py retries.
        """
        if self._bare_target is not None:
            return await self._bare_eval(self._bare_target, calls)
        for attempt in (1, 2):
            conn = self._conn
            if conn is None:
                conn = await self._pool().get_connection()  # type: ignore[no-untyped-call]
                # One timer below bounds the whole exchange. redis-py's own would wrap
                # the write in `asyncio.wait_for` (a task and two loop turns per flush on
                # Python 3.11) and add a timer per answer; `_drop_connection` restores it.
                conn.socket_timeout = None
                self._conn = conn
            try:
                async with asyncio.timeout(SOCKET_TIMEOUT_S):
                    data = self._clocks.pack(calls)
                    await conn.send_packed_command(data, check_health=False)
                    results: list[Any] = []
                    for _ in calls:
                        try:
                            results.append(await conn.read_response())
                        except ResponseError as exc:  # an error reply: the connection is fine
                            results.append(exc)
                return results
            except RedisConnectionError:
                await self._drop_connection()
                if attempt == 2:
                    raise
            except BaseException:
                await self._drop_connection()  # answers may be pending on it
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _bare_eval(self, target: BareTarget, calls: list[_Call]) -> list[Any]:
        """`_direct_eval` on the bare connection, with the same retry: a connection that
        broke while idle is replaced once (a new one that breaks is not, nor a timeout)."""
        while True:
            conn = self._bare
            fresh = conn is None or conn.closed
            if fresh or conn is None:
                conn = self._bare = await RespConnection.open(target, CONNECT_TIMEOUT_S)
            try:
                return await conn.call(self._clocks.pack(calls), len(calls), SOCKET_TIMEOUT_S)
            except RedisConnectionError:
                self._bare = None
                if fresh:
                    raise
            except BaseException:
                self._bare = None
                raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.socket_timeout = self._pool().connection_kwargs.get("socket_timeout")
            await conn.disconnect()
            await self._pool().release(conn)

    def _pool(self) -> ConnectionPool:
        assert isinstance(self._client, Redis)  # not used in Cluster mode
        return self._client.connection_pool

    async def _give_back(self, amounts: list[tuple[str, int]]) -> None:
        """Refunds through the client's pool, like `_read`: never on the flushes' own
        connection, which a flush may be using right now. One script call per slot."""
        self._check_up()
        try:
            for call in _refund_calls(amounts):
                argv = ("EVALSHA", SCRIPT_SHA, len(call.keys), *call.keys, *call.args)
                try:
                    await self._client.execute_command(*argv)
                except NoScriptError:
                    await self._client.script_load(SCRIPT)
                    await self._client.execute_command(*argv)
        except _ERRORS as exc:
            if _is_outage(exc):
                raise self._failed(exc) from exc
            raise LimiterUnavailable(f"redis answered an error: {exc}") from exc

    async def _read(self, keys: list[str]) -> list[int]:
        if not keys:
            return []
        self._check_up()
        try:
            pipe = self._client.pipeline() if self._cluster else self._client.pipeline(False)
            for key in keys:
                pipe.get(key)
            raw: list[Any] = await pipe.execute(raise_on_error=False)
        except _ERRORS as exc:
            raise self._failed(exc) from exc
        out: list[int] = []
        for value in raw:
            if isinstance(value, BaseException):
                if _is_outage(value):
                    raise self._failed(value)
                out.append(0)
                continue
            try:
                out.append(int(value) if value is not None else 0)
            except ValueError:
                out.append(0)
        self._succeeded()
        return out

    async def close(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        self._closed = True
        # The checks in flight first: a reservation they are granted is given back below.
        await self._in_flight_done()
        await asyncio.sleep(0)  # the checks just answered take what was granted
        await self.sync()
        await self._in_flight_done()
        if self.share is not None and self.share.unsynced:
            log.warning(
                "quota cache: %d accepted items could not be added to Redis before closing",
                self.share.unsynced,
            )
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(LimiterUnavailable("limiter closed"))
        self._pending = []
        if self._conn is not None:
            await self._drop_connection()
        if self._bare is not None:
            self._bare.close()
            self._bare = None
        await self._client.aclose()
        for helper in self._helpers:
            await helper.aclose()

    async def _in_flight_done(self) -> None:
        """Wait for the batch in flight and the flush tasks (bounded: twice the timeout)."""
        if self._flush_scheduled:  # a batch on the bare path is in flight
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2 * SOCKET_TIMEOUT_S):
                    await self._drained
        for task in list(self._flushing):
            await asyncio.gather(task, return_exceptions=True)


def _merge(jobs: list[_Job]) -> tuple[list[_Call], list[list[int]]]:
    """Standalone and Sentinel: the jobs' calls (one each, one slot) as few script calls as
    `MAX_MERGED_GROUPS` allows; and per merged call, each job's answer length. A key that
    holds no integer fails only its own group (the script says so per group); an error
    reply of a whole call (e.g. Redis out of memory) is every merged job's."""
    merged: list[_Call] = []
    lengths: list[list[int]] = []
    current: _Call | None = None
    for job in jobs:
        for call in job.calls:
            groups = len(call.groups)
            if current is None or len(current.groups) + groups > MAX_MERGED_GROUPS:
                current = _Call(args=["c", 0])
                merged.append(current)
                lengths.append([])
            current.keys.extend(call.keys)
            current.args.extend(call.args[2:])
            current.groups.extend(call.groups)
            current.args[1] = len(current.groups)
            # One answer per group, then one value per counter.
            lengths[-1].append(groups + len(call.keys))
    return merged, lengths


def _split(answers: list[Any], lengths: list[list[int]]) -> list[Any]:
    """The merged calls' answers as each job's own (an error is each merged job's)."""
    results: list[Any] = []
    for flat, parts in zip(answers, lengths, strict=True):
        pos = 0
        for length in parts:
            if isinstance(flat, BaseException):
                results.append(flat)
            else:
                results.append(flat[pos : pos + length])
                pos += length
    return results


def _settle_job(job: _Job, outcome: Any) -> None:
    """Wake a check with its answers, or with the error it fails with (once only)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


def _refund_calls(refunds: list[tuple[str, int]]) -> list[_Call]:
    """Script calls that decrement each key by its amount, one per hash slot."""
    by_slot: dict[int, _Call] = {}
    for key, amount in refunds:
        slot = key_slot(key.encode("utf-8"))
        call = by_slot.setdefault(slot, _Call(args=["r"], slot=slot))
        call.keys.append(key)
        call.args.append(amount)
    return list(by_slot.values())


def _is_outage(exc: BaseException) -> bool:
    """Whether an error means Redis is unreachable (rather than, say, a script error)."""
    return not isinstance(exc, ResponseError) or isinstance(exc, ClusterError)


#: A group's flag in the script's answer when one of its keys holds no integer.
_BROKEN = 2
#: The flag after Redis's time in the answer of a check that ran past its deadline.
_LATE = -1


def _assemble(
    job: _Job, results: list[Any]
) -> tuple[list[tuple[bool, list[int]]], list[tuple[str, int]], str | None]:
    """Per demand: consumed in every slot?, values before; what to refund; and why the
    store could not answer this job, if it could not.

    A call that failed counts as rejecting each of its groups, so what the job's other
    calls consumed is given back. A group whose counter holds no integer (a key written
    by something else) fails the job, and everything the job consumed is given back:
    the check is decided as if Redis were unavailable, for this job only.
    """
    consumed = [True] * len(job.demands)
    values = [[0] * len(d.counters) for d in job.demands]
    taken: list[list[tuple[str, int]]] = [[] for _ in job.demands]
    broken: str | None = None
    for call, flat in zip(job.calls, results, strict=True):
        if isinstance(flat, BaseException):
            for d, _ in call.groups:
                consumed[d] = False
            continue
        pos = 0
        key_pos = 0
        for d, indices in call.groups:
            flag = int(flat[pos])
            ok = flag == 1
            if flag == _BROKEN and broken is None:
                bad = call.keys[key_pos : key_pos + len(indices)]
                broken = f"a counter holds no integer (one of {', '.join(bad)})"
            pos += 1
            for i in indices:
                values[d][i] = int(flat[pos])
                pos += 1
                if ok:
                    taken[d].append((call.keys[key_pos], job.demands[d].counters[i].increment))
                key_pos += 1
            if not ok:
                consumed[d] = False
    refunds: list[tuple[str, int]] = []
    for d in range(len(job.demands)):
        if broken is not None or not consumed[d]:
            # Rejected in one slot: give back what other slots consumed.
            refunds.extend(taken[d])
    return list(zip(consumed, values, strict=True)), refunds, broken


def connect(cfg: RedisConfig) -> tuple[Client, list[Redis]]:
    """A redis-py asyncio client for `cfg.mode` (connecting lazily on first use), and
    the helper clients to close with it (the sentinels).

    Sentinel: `url` lists the sentinels, `redis://[:password@]h1:26379,h2:26379/0`;
    the password (and db) apply to the master named by `sentinel_master`.
    """
    url = cfg.url.reveal()
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 1),
    }
    if cfg.mode == "cluster":
        return RedisCluster.from_url(url, **options), []
    if cfg.mode == "sentinel":
        # urllib's and int()'s errors would quote what they read, a piece of the password
        # where it holds a '/', '?' or '#' (`relay check-config` refuses such a URL).
        try:
            parts = urlsplit(url.replace("redis+sentinel://", "redis://", 1))
            userinfo, _, hosts = parts.netloc.rpartition("@")
            username, _, password = userinfo.partition(":")
            nodes = []
            for host in hosts.split(","):
                name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
                nodes.append((name, int(port or 26379)))
            db = int(parts.path.strip("/") or 0)
        except ValueError:
            raise ValueError(
                "redis.url: a sentinel's port or the database is not a number"
            ) from None
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            nodes,
            sentinel_kwargs={
                "socket_timeout": SOCKET_TIMEOUT_S,
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
            },
            username=unquote(username) or None,
            password=unquote(password) or None,
            db=db,
            **options,
        )
        master: Redis = sentinel.master_for(cfg.sentinel_master or "mymaster")
        return master, list(sentinel.sentinels)
    return Redis.from_url(url, **options), []
