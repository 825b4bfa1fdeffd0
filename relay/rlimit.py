"""The open files limit: every client connection holds a file descriptor.

Many systems start services with a soft limit of 1,024 open files (and a far higher hard
limit), which a relay with a thousand SDK connections, its upstream connections and its
spool segments runs past: new connections then fail to be accepted. At start the relay
raises its soft limit to the hard one (up to `MAX_OPEN_FILES`), as a process may, and
says so; if the result is still low, it says what to change.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger("relay")

#: Below this soft limit after raising it, the relay warns at start.
LOW_OPEN_FILES = 4096
#: The relay raises its limit no further than this (some hosts set a hard limit of a
#: billion, which no relay needs and some libraries size tables by).
MAX_OPEN_FILES = 1 << 20


def _ceiling(hard: int) -> int:
    if hard == resource.RLIM_INFINITY:  # Linux allows no more than nr_open
        try:
            hard = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            hard = MAX_OPEN_FILES
    return min(hard, MAX_OPEN_FILES)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc)
        else:
            log.info("open files limit raised from %d to %d", soft, target)
            soft = target
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILES:
        log.warning(
            "the open files limit is %d: each client connection holds one, so the relay "
            "cannot serve more than a few hundred SDKs at once; raise it (ulimit -n, or "
            "LimitNOFILE= in a systemd unit)",
            soft,
        )
    return soft
