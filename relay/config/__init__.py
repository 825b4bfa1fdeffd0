"""The relay's configuration: one YAML file loaded into msgspec Structs.

`load_config(path)` reads the file, expands `${VAR}` / `${VAR:-default}`, applies
`RELAY_<SECTION>_<KEY>` environment overrides, and validates. Every problem is
reported with its path (`ConfigError.problems`), unknown keys included, so that a
typo never silently disables a policy. `default_config()` is the embedded
default used by `relay run` without `--config`.
"""

from __future__ import annotations

import inspect
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import yaml

from relay.config.base import (
    ByteSize,
    Duration,
    Problem,
    Secret,
    Section,
    _is_struct,
    _struct_of_optional,
    collect_problems,
    dec_hook,
    join_path,
)
from relay.config.noise import FiltersConfig, SamplingRule, ShadowConfig
from relay.config.quotas import BudgetConfig, QuotaConfig, SpikeProtectionConfig
from relay.config.scrubbing import ScrubbingConfig
from relay.protocol.dsn import Dsn, InvalidDsn
from relay.protocol.proxy import InvalidProxy, Proxy, parse_no_proxy
from relay.protocol.url import InvalidUrl, parse_http_url

__all__ = [
    "AdminConfig",
    "ByteSize",
    "Config",
    "ConfigError",
    "Duration",
    "LimitsConfig",
    "ListenConfig",
    "PolicyConfig",
    "Problem",
    "ProjectConfig",
    "RedisConfig",
    "Secret",
    "SpoolConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "parse_config",
]


class ListenConfig(Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 3000
    #: Serve `/metrics` on a separate address (e.g. "127.0.0.1:9090"); empty = main listener.
    metrics: str | None = None
    #: Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs).
    trusted_proxies: list[str] = []
    #: Pending connections the kernel queues before the relay accepts them (listen(2)).
    backlog: int = 1024
    #: How long a connection may stay idle between requests, and the most a client may
    #: take to send a request's line and headers, before the relay closes it.
    keepalive_timeout_s: Duration = Duration(75)
    #: Open client connections per process; at the cap idle ones close to make room, and
    #: new ones are refused (503) while none is idle.
    max_connections: int = 10000


class UpstreamConfig(Section, frozen=True):
    #: `https://sentry.example.com` (projects keep their id and key) or `file://DIR`.
    url: str = "file://./data/outbox"
    timeout_s: Duration = Duration(10)
    #: Concurrent forwarder tasks (and upstream connections) draining the outbox.
    concurrency: int = 32
    #: Attempts per envelope on network errors and 5xx before it is dropped with an outcome.
    max_attempts: int = 6
    retry_base_s: Duration = Duration(0.5)
    retry_max_s: Duration = Duration(30)
    #: Consecutive failures after which the upstream counts as down (probed, not hammered).
    outage_after: int = 5
    #: Longest wait between probes of a down upstream.
    probe_max_s: Duration = Duration(30)
    #: Compress request bodies sent upstream, at this zlib level (1 is fast and close in size).
    gzip: bool = True
    gzip_level: int = 1
    #: Seconds a request may wait for the forwarder to catch up before it is queued anyway
    #: (back-pressure keeps the queue short; the hard limits below still answer 503).
    backpressure_wait_s: Duration = Duration(2)
    #: Seconds between client reports telling the upstream what the relay dropped (0: off).
    client_reports_interval: Duration = Duration(60)
    #: In-memory outbox bounds; the relay answers 503 when they are reached.
    outbox_max_items: int = 10000
    outbox_max_bytes: ByteSize = ByteSize(256 * 1024 * 1024)
    #: An HTTP proxy for requests upstream: `http://[user:password@]host:port`; empty or
    #: absent: none (e.g. `${HTTPS_PROXY:-}` takes the environment's).
    proxy: Secret | None = None
    #: Hosts reached without the proxy: names (covering their subdomains), IP addresses,
    #: CIDR ranges or `*`; a list, or a comma-separated string as in `NO_PROXY`.
    no_proxy: list[str] | str = []
    #: A PEM file of CA certificates trusted for `https` upstreams besides the system's.
    ca_file: str | None = None


class RedisConfig(Section, frozen=True):
    url: Secret
    on_error: str = "allow"
    #: "standalone" (default), "cluster" or "sentinel".
    mode: str = "standalone"
    sentinel_master: str | None = None
    prefix: str = "relay"
    #: The quota cache: at most this share of a counter's remaining room is accepted in a
    #: process without asking Redis (0: off, every check asks Redis).
    quota_cache_ratio: float = 0.1
    #: No quota cache for a counter past this fraction of its limit.
    quota_cache_max: float = 1.0
    #: `reserve`: what a process accepts by itself is counted in Redis first (no limit is
    #: ever passed); `share`: it is added to Redis afterwards (N processes may pass a
    #: limit by their shares).
    quota_cache_mode: str = "reserve"


class SpoolConfig(Section, frozen=True):
    path: str = "./data/spool"
    max_bytes: ByteSize = ByteSize(1024**3)
    max_age: Duration = Duration(86400)
    durable: bool = True


class LimitsConfig(Section, frozen=True):
    max_request_bytes: ByteSize = ByteSize(20 * 1024 * 1024)
    max_decompressed_bytes: ByteSize = ByteSize(100 * 1024 * 1024)
    #: Decoded request bodies held by all requests in progress together; beyond it new
    #: body bytes are refused with 503 (a memory bound no single-request cap gives).
    max_inflight_body_bytes: ByteSize = ByteSize(256 * 1024 * 1024)
    max_event_bytes: ByteSize = ByteSize(1024 * 1024)
    max_attachment_bytes: ByteSize = ByteSize(100 * 1024 * 1024)
    max_envelope_items: int = 10000
    #: Sentry's per-envelope limits of other item types (its defaults); an item past one is
    #: dropped on its own (`invalid` / `too_large`), where Sentry refuses the envelope.
    max_attachment_items: int = 30
    max_check_in_bytes: ByteSize = ByteSize(100 * 1024)
    max_profile_bytes: ByteSize = ByteSize(50 * 1024 * 1024)
    max_replay_bytes: ByteSize = ByteSize(10 * 1024 * 1024)
    max_session_items: int = 100
    max_sessions_bytes: ByteSize = ByteSize(10 * 1024 * 1024)
    max_client_report_items: int = 100
    max_client_reports_bytes: ByteSize = ByteSize(100 * 1024)
    #: Per record: a container's length over its `item_count`.
    max_log_bytes: ByteSize = ByteSize(2 * 1024 * 1024)
    max_span_bytes: ByteSize = ByteSize(10 * 1024 * 1024)
    max_trace_metric_bytes: ByteSize = ByteSize(1024 * 1024)
    #: One log, span or trace metric container whole; also standalone spans together.
    max_container_bytes: ByteSize = ByteSize(12 * 1024 * 1024)
    max_standalone_spans: int = 25
    #: Seconds a client may take to send its request body.
    read_timeout_s: Duration = Duration(30)


class AdminConfig(Section, frozen=True):
    token: Secret | None = None


class LogConfig(Section, frozen=True):
    level: str = "info"
    #: "json" (one object per line) or "text".
    format: str = "text"


class PolicyConfig(Section, frozen=True):
    """The org-wide policy; a project's `policy` adds to it and never weakens it."""

    scrubbing: ScrubbingConfig | None = None
    filters: FiltersConfig | None = None
    sampling: list[SamplingRule] = []
    fingerprinting: str = ""
    normalize_messages: bool | None = None
    quotas: list[QuotaConfig] = []
    budgets: list[BudgetConfig] = []
    spike_protection: SpikeProtectionConfig | None = None
    shadow: ShadowConfig | None = None


class ProjectConfig(Section, frozen=True):
    id: int
    name: str | None = None
    #: Public keys the apps use; empty accepts any key for this project.
    keys: list[str] = []
    #: Where to forward; absent: `upstream.url` with the app's own id and key.
    upstream_dsn: str | None = None
    policy: PolicyConfig | None = None
    #: Browser origins allowed to send: globs such as `https://*.example.com`, or Sentry's
    #: allowed-domain forms (`example.com`, `*.example.com`, `*:8080`); empty: any.
    allowed_origins: list[str] = []


class Config(Section, frozen=True):
    listen: ListenConfig = ListenConfig()
    workers: int = 1
    upstream: UpstreamConfig = UpstreamConfig()
    redis: RedisConfig | None = None
    spool: SpoolConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    shutdown_timeout: Duration = Duration(30)
    #: Accept projects and keys that are not listed under `projects`.
    accept_unknown: bool = False
    policy: PolicyConfig = PolicyConfig()
    projects: list[ProjectConfig] = []


class ConfigError(Exception):
    """The config is invalid; `problems` lists every problem with its path."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(p) for p in problems))


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _expand_env(data: Any, env: Mapping[str, str], path: str, problems: list[Problem]) -> Any:
    if isinstance(data, dict):
        return {k: _expand_env(v, env, join_path(path, str(k)), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v, env, join_path(path, i), problems) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(Problem(path, f"environment variable {name} is not set"))
            return ""

        return _ENV_RE.sub(sub, data)
    return data


def _override_target(tp: Any, rest: str) -> list[str] | None:
    """Resolve `listen_port` against the Struct tree into `["listen", "port"]`."""
    struct = tp if _is_struct(tp) else _struct_of_optional(tp)
    if struct is None:
        return None
    hints = msgspec.structs.fields(struct)
    from typing import get_type_hints

    types_ = get_type_hints(struct)
    # Longest field name first so `max_request_bytes` wins over `max`.
    for field in sorted(hints, key=lambda f: -len(f.encode_name)):
        name = field.encode_name
        if rest == name:
            # Only single keys can be overridden, never a whole section.
            leaf = types_[field.name]
            if _is_struct(leaf) or _struct_of_optional(leaf) is not None:
                return None
            return [name]
        if rest.startswith(name + "_"):
            sub = _override_target(types_[field.name], rest[len(name) + 1 :])
            if sub is not None:
                return [name, *sub]
    return None


def _apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str], problems: list[Problem]
) -> None:
    for key in sorted(env):
        if not key.startswith("RELAY_") or key == "RELAY_CONFIG":
            continue
        target = _override_target(Config, key[len("RELAY_") :].lower())
        if target is None:
            continue  # may exist only for ${VAR} expansion
        try:
            value = yaml.safe_load(env[key])
        except yaml.YAMLError:
            value = env[key]
        node = data
        for part in target[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[target[-1]] = value


def parse_config(data: Any, *, env: Mapping[str, str] | None = None, source: str = "") -> Config:
    """Validate a loaded YAML document (a mapping) into a `Config`, or raise ConfigError."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the config must be a mapping of sections")], source)
    problems: list[Problem] = []
    data = _expand_env(data, env, "", problems)
    _apply_env_overrides(data, env, problems)
    problems.extend(collect_problems(data, Config))
    if problems:
        raise ConfigError(problems, source)
    config = msgspec.convert(data, Config, dec_hook=dec_hook, strict=False)
    problems.extend(validate(config))
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand, override and validate a YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem("", f"cannot read config: {exc.strerror or exc}")], source
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("", "the config is not UTF-8 text")], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"{where}invalid YAML: {problem}")], source) from None
    return parse_config(data, env=env, source=source)


def default_config(*, env: Mapping[str, str] | None = None) -> Config:
    """The embedded defaults of `relay run` without a config file: accept any project.

    `RELAY_*` environment overrides apply here too (e.g. `RELAY_LISTEN_PORT=3001`).
    """
    return parse_config({"accept_unknown": True}, env=env, source="embedded defaults")


# --- cross-field validation -------------------------------------------------------------

_VALIDATORS: list[Any] = []


def validator(fn: Any) -> Any:
    """Register a whole-config check `fn(config) -> list[Problem]` (sections add their own)."""
    _VALIDATORS.append(fn)
    return fn


def validate(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    for fn in _VALIDATORS:
        problems.extend(fn(config))
    return problems


#: What a Redis URL problem adds when a password may be what broke the URL.
_ENCODE_HINT = " (a '/', '?' or '#' in the password must be percent-encoded)"


def _redis_url_problem(url: str, mode: str) -> str | None:
    """Why `redis.url` cannot be used in `mode`, read as redis-py reads it (Sentinel: as
    the limiter reads its list of sentinels), or None. Never quotes the URL: a '/', '?'
    or '#' in the password that is not percent-encoded ends the host part there, so what
    follows it is read as the port or the database."""
    if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        return "must start with redis://, rediss:// or unix://"
    if mode == "sentinel" and not url.startswith(("redis://", "redis+sentinel://")):
        # The sentinels' list is read from the URL's host part: TLS and a socket path
        # would be ignored, not used.
        return "mode: sentinel takes redis:// or redis+sentinel:// (no TLS or Unix socket)"
    if url.startswith("unix://"):
        return _unix_url_problem(url, mode)
    if url.startswith("redis+sentinel://") and mode != "sentinel":
        return "redis+sentinel:// needs mode: sentinel"
    try:
        parts = urlsplit(url.replace("redis+sentinel://", "redis://", 1))
    except ValueError:
        return "is not a URL" + _ENCODE_HINT
    if mode == "sentinel":
        for host in parts.netloc.rpartition("@")[2].split(","):
            name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
            if not name or (port and not (port.isascii() and port.isdigit())):
                return "a sentinel's host is missing or its port is not a number" + _ENCODE_HINT
    else:
        try:
            parts.port  # noqa: B018 (urllib reads it only when asked)
        except ValueError:
            return "the port is not a number up to 65535" + _ENCODE_HINT
        if not parts.hostname:
            return "has no host" + _ENCODE_HINT
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        return "the database (the path after the host) is not a number" + _ENCODE_HINT
    if db and int(db) != 0 and mode == "cluster":
        return "a Redis Cluster has database 0 only"
    if mode == "standalone" and parts.query:
        return _redis_py_options_problem(url, "a TLS" if parts.scheme == "rediss" else "a TCP")
    return None


def _unix_url_problem(url: str, mode: str) -> str | None:
    """`_redis_url_problem` of a `unix://` URL: read by redis-py's own `from_url`, and its
    options taken as the first connection would take them (redis-py leaves an unknown one
    to fail there). Quotes no more than an option's name: once the host part is empty
    (or `localhost`), the password (if any) lies wholly before the '@'."""
    if mode == "cluster":
        return (
            "mode: cluster takes redis:// or rediss:// (redis-py has no Unix socket to a cluster)"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL" + _ENCODE_HINT
    if parts.netloc.rpartition("@")[2].lower() not in ("", "localhost"):
        # redis-py drops a host and port unread: `unix://run/redis.sock` is /redis.sock.
        return (
            "a unix:// URL names no host or port (redis-py ignores them): the socket's path"
            " follows unix:// (unix:///run/redis/redis.sock)" + _ENCODE_HINT
        )
    if not unquote(parts.path).rstrip("/"):
        return "has no socket path (unix:///run/redis/redis.sock)"
    return _redis_py_options_problem(url, "a Unix socket")


def _redis_py_options_problem(url: str, kind: str) -> str | None:
    """Why redis-py cannot take the query options of `url` (a connection of `kind`), or
    None: names it does not take (redis-py leaves them to fail at the first connection),
    or values it refuses when it makes a connection (no I/O yet). Quotes no more than an
    option's name and redis-py's words about it."""
    from redis.asyncio.connection import ConnectionPool
    from redis.exceptions import RedisError

    pool_class = ConnectionPool.from_url(url.split("?", 1)[0]).connection_class
    query = urlsplit(url).query
    unknown = sorted(set(parse_qs(query)) - _connection_options(pool_class))
    if unknown:
        if "@" in query:  # a '?' in the password, not percent-encoded: never quoted
            return f"redis-py takes no option of the query for {kind} connection" + _ENCODE_HINT
        return f"redis-py takes no option {', '.join(unknown)} for {kind} connection"
    try:
        pool = ConnectionPool.from_url(url)
        pool.make_connection()  # type: ignore[no-untyped-call, unused-ignore]  # no I/O yet
    except (ValueError, RedisError) as exc:  # redis-py's own words, naming an option
        return f"redis-py refuses its options: {exc}"
    except Exception:  # e.g. text given to an option that takes an object (`retry`)
        return "redis-py cannot make a connection with its options"
    db = pool.connection_kwargs.get("db", 0)
    if isinstance(db, int) and db < 0:
        return "the database (?db=) is less than 0"
    return None


#: `_connection_options` by connection class.
_OPTIONS: dict[type, frozenset[str]] = {}


def _connection_options(connection_class: type) -> frozenset[str]:
    """The keyword arguments redis-py's pool and `connection_class` take (a URL's query
    options become those)."""
    from redis.asyncio.connection import ConnectionPool

    known = _OPTIONS.get(connection_class)
    if known is not None:
        return known
    names: set[str] = set()
    for cls in (ConnectionPool, *connection_class.__mro__):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
    names.discard("self")
    known = _OPTIONS[connection_class] = frozenset(names)
    return known


#: Why `upstream.url` cannot carry a user or password (never quoted: the URL holds them).
_UPSTREAM_CREDENTIALS = (
    "has a user or password, which the relay never sends upstream: remove it. Sentry"
    " authenticates by a DSN's key: the app's own, or a project's upstream_dsn"
    " (https://<key>@host/<project id>)"
)


#: The `limits` keys that count items (sizes cannot be negative anyway).
_LIMIT_COUNTS = (
    "max_envelope_items",
    "max_attachment_items",
    "max_session_items",
    "max_client_report_items",
    "max_standalone_spans",
)


@validator
def _check_core(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    if not 0 < config.listen.port < 65536:
        problems.append(Problem("listen.port", "must be between 1 and 65535"))
    if config.limits.max_inflight_body_bytes < config.limits.max_decompressed_bytes:
        problems.append(
            Problem(
                "limits.max_inflight_body_bytes",
                "must be at least limits.max_decompressed_bytes (or no body of that size fits)",
            )
        )
    for key in _LIMIT_COUNTS:
        if getattr(config.limits, key) < 0:
            problems.append(Problem(f"limits.{key}", "must be at least 0"))
    if not 0 < config.listen.backlog <= 65535:
        problems.append(Problem("listen.backlog", "must be between 1 and 65535"))
    if config.listen.max_connections < 1:
        problems.append(Problem("listen.max_connections", "must be at least 1"))
    if not 0 < config.listen.keepalive_timeout_s <= 3600:
        problems.append(
            Problem("listen.keepalive_timeout_s", "must be more than 0 and at most 3600 seconds")
        )
    if config.listen.metrics is not None:
        _, sep, port = config.listen.metrics.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(Problem("listen.metrics", "must be host:port, e.g. 127.0.0.1:9090"))
    if config.workers < 1:
        problems.append(Problem("workers", "must be at least 1"))
    url = config.upstream.url
    if not (url.startswith(("http://", "https://", "file://"))):
        problems.append(Problem("upstream.url", "must start with http://, https:// or file://"))
    elif not url.startswith("file://"):
        try:
            parse_http_url(url)
        except InvalidUrl as exc:
            problems.append(Problem("upstream.url", str(exc)))
        else:
            if "@" in urlsplit(url).netloc:
                problems.append(Problem("upstream.url", _UPSTREAM_CREDENTIALS))
    if config.upstream.concurrency < 1:
        problems.append(Problem("upstream.concurrency", "must be at least 1"))
    if not 0 <= config.upstream.gzip_level <= 9:
        problems.append(Problem("upstream.gzip_level", "must be between 0 and 9"))
    if config.upstream.max_attempts < 1:
        problems.append(Problem("upstream.max_attempts", "must be at least 1"))
    if config.upstream.proxy:
        try:
            Proxy.parse(config.upstream.proxy.reveal())
        except InvalidProxy as exc:
            problems.append(Problem("upstream.proxy", str(exc)))
    try:
        parse_no_proxy(config.upstream.no_proxy)
    except InvalidProxy as exc:
        problems.append(Problem("upstream.no_proxy", str(exc)))
    if config.upstream.ca_file is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=config.upstream.ca_file)
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                Problem("upstream.ca_file", f"cannot load CA certificates from it: {exc}")
            )
    if config.redis is not None:
        if config.redis.on_error not in ("allow", "reject"):
            problems.append(Problem("redis.on_error", "must be 'allow' or 'reject'"))
        if not 0 <= config.redis.quota_cache_ratio < 1:
            problems.append(
                Problem("redis.quota_cache_ratio", "must be at least 0 and less than 1")
            )
        if not 0 < config.redis.quota_cache_max <= 1:
            problems.append(Problem("redis.quota_cache_max", "must be more than 0 and at most 1"))
        if config.redis.quota_cache_mode not in ("reserve", "share"):
            problems.append(Problem("redis.quota_cache_mode", "must be 'reserve' or 'share'"))
        if config.redis.mode not in ("standalone", "cluster", "sentinel"):
            problems.append(Problem("redis.mode", "must be 'standalone', 'cluster' or 'sentinel'"))
        url_problem = _redis_url_problem(config.redis.url.reveal(), config.redis.mode)
        if url_problem is not None:
            problems.append(Problem("redis.url", url_problem))
    if config.log.level.lower() not in ("debug", "info", "warning", "error", "critical"):
        problems.append(
            Problem("log.level", "must be one of debug, info, warning, error, critical")
        )
    if config.log.format not in ("json", "text"):
        problems.append(Problem("log.format", "must be 'json' or 'text'"))
    seen: dict[int, int] = {}
    for i, project in enumerate(config.projects):
        if project.id in seen:
            problems.append(
                Problem(
                    f"projects[{i}].id", f"duplicate project id (also projects[{seen[project.id]}])"
                )
            )
        seen.setdefault(project.id, i)
        if project.upstream_dsn is not None:
            try:
                Dsn.parse(project.upstream_dsn)
            except InvalidDsn as exc:
                problems.append(Problem(f"projects[{i}].upstream_dsn", str(exc)))
        for k, pattern in enumerate(project.allowed_origins):
            if not _readable_origin(pattern):
                problems.append(
                    Problem(
                        f"projects[{i}].allowed_origins[{k}]",
                        "not a domain, `*.domain`, `domain:port` or `*:port` "
                        "(or a glob with a scheme)",
                    )
                )
        for k, key in enumerate(project.keys):
            if not re.fullmatch(r"[0-9a-zA-Z]{1,64}", key):
                problems.append(
                    Problem(f"projects[{i}].keys[{k}]", "a public key is letters and digits")
                )
    return problems


def _readable_origin(pattern: str) -> bool:
    """Whether an `allowed_origins` entry is a glob with a scheme or one of Sentry's
    allowed-domain forms (read by `relay.policy.registry.OriginRule`)."""
    from relay.policy.registry import OriginRule  # the policy imports the config

    return OriginRule.parse(pattern) is not None
