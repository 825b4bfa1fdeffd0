"""Failed admin authentication, counted per client address, with a lockout.

The admin routes are served on the ingest listener, which may face the internet. After
`MAX_FAILURES` requests from one client address fail authentication within `WINDOW`
seconds (counted from the first of them), that address's admin requests are refused for
`LOCKOUT` seconds, whatever token they carry: guessing cannot go on behind the lockout.
Requests that authenticate are not counted and wait for nothing.

The client address is the one the rest of the relay uses (`resolve_client_ip`: the first
`X-Forwarded-For` hop not added by a trusted proxy). IPv6 clients are counted by their /64
prefix, since one host commonly holds a whole /64 and could otherwise change its address
at each guess; requests whose address cannot be read share one entry.

The table holds at most `MAX_CLIENTS` addresses, least recently failed first out, and
entries whose window and lockout are over are dropped as new failures arrive: an
attacker spraying addresses cannot grow it without bound. The counts live in each worker
process (`workers: N` multiplies what one address may try by N at most).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

#: Failed authentications from one address within `WINDOW` that start a lockout.
MAX_FAILURES = 10
#: Seconds, from an address's first failure, in which its failures are counted together.
WINDOW = 60.0
#: Seconds an address's admin requests are refused once it reaches `MAX_FAILURES`.
LOCKOUT = 300.0
#: Most addresses tracked at once (an entry is a few hundred bytes).
MAX_CLIENTS = 10_000

#: The entry of requests whose client address is not known.
UNKNOWN = "unknown"


def client_key(address: str | None) -> str:
    """What failures are counted under: the address, an IPv6 one by its /64."""
    if not address:
        return UNKNOWN
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Entry:
    __slots__ = ("failures", "locked_until", "window_start")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.failures = 0
        self.locked_until = 0.0


class AdminLockout:
    """Failed admin authentications by client key, and the keys locked out."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW,
        lockout: float = LOCKOUT,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_clients = max_clients
        self.clock = clock
        #: Least recently failed first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Lockouts started since the process started.
        self.lockouts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, key: str) -> int | None:
        """Whole seconds until `key` may try again, or None when it is not locked out."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.locked_until - self.clock()
        if left <= 0:
            return None
        return max(1, math.ceil(left))

    def failed(self, key: str) -> bool:
        """Count one failed authentication from `key`; True when it starts a lockout."""
        now = self.clock()
        self._expire(now)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            while len(entries) >= self.max_clients:
                entries.popitem(last=False)
            entry = entries[key] = _Entry(now)
        else:
            entries.move_to_end(key)
            if now - entry.window_start >= self.window:
                entry.window_start = now
                entry.failures = 0
        entry.failures += 1
        if entry.failures < self.max_failures:
            return False
        entry.failures = 0
        entry.window_start = now
        entry.locked_until = now + self.lockout
        self.lockouts += 1
        return True

    def _expire(self, now: float) -> None:
        """Drop the least recently failed entries that no longer count or lock."""
        entries = self._entries
        while entries:
            entry = next(iter(entries.values()))
            if entry.locked_until > now or now - entry.window_start < self.window:
                return
            entries.popitem(last=False)


#: The app's `AdminLockout` (set by `relay.web.admin.add_routes`).
ADMIN_LOCKOUT = web.AppKey("admin_lockout", AdminLockout)
