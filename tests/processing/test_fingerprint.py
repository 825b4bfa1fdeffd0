from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.processing.fingerprint import (
    FingerprintResult,
    FingerprintSyntaxError,
    compile_fingerprinting,
    parse_fingerprinting,
    validate_fingerprinting,
)
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS

ISSUE_RULES = """\
# Rules from the issue
error.type:DatabaseUnavailable -> system-down
error.type:ConnectionError error.value:"*connection refused*" -> connection-refused, {{ transaction }}
error.value:"*connection pool*exhausted*" -> connection-pool-exhausted title="Connection pool exhausted"
stack.module:"app.payments.*" error.type:TimeoutError -> payment-timeout, {{ stack.function }}
"""


def corpus_event(name: str) -> dict[str, Any]:
    envelope = parse_envelope((CORPUS / f"{name}.envelope").read_bytes())
    return orjson.loads(envelope.items[0].payload)  # type: ignore[no-any-return]


def error(
    type_: str | None = None,
    value: str | None = None,
    frames: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    exc: dict[str, Any] = {}
    if type_ is not None:
        exc["type"] = type_
    if value is not None:
        exc["value"] = value
    if frames is not None:
        exc["stacktrace"] = {"frames": frames}
    return {"exception": {"values": [exc]}, **extra}


def apply(
    rules: str, event: dict[str, Any], *, project: str = "", normalize: bool = False
) -> FingerprintResult | None:
    return compile_fingerprinting(rules, project, normalize).apply(event)


# --- the issue's examples ---------------------------------------------------------------------------


def test_issue_examples_parse() -> None:
    rules = parse_fingerprinting(ISSUE_RULES)
    assert [r.line for r in rules] == [2, 3, 4, 5]
    assert [len(r.condition.matchers) for r in rules] == [1, 2, 1, 2]
    assert rules[2].title == ((False, "Connection pool exhausted"),)
    assert validate_fingerprinting(ISSUE_RULES) == []


def test_issue_example_system_down() -> None:
    event = error("DatabaseUnavailable", "db is gone")
    result = apply(ISSUE_RULES, event)
    assert result == FingerprintResult(
        ["system-down"], None, "error.type:DatabaseUnavailable -> system-down", "rule"
    )
    assert event["fingerprint"] == ["system-down"]
    assert "title" not in event


def test_issue_example_connection_refused() -> None:
    event = error(
        "ConnectionError", "[Errno 111] Connection refused by host", transaction="/api/orders"
    )
    apply(ISSUE_RULES, event)
    assert event["fingerprint"] == ["connection-refused", "/api/orders"]
    other = error("ConnectionError", "timed out", transaction="/api/orders")
    assert apply(ISSUE_RULES, other) is None
    assert "fingerprint" not in other


def test_issue_example_pool_exhausted_sets_title() -> None:
    event = error("OperationalError", "QueuePool limit: connection pool of size 5 exhausted")
    result = apply(ISSUE_RULES, event)
    assert result is not None and result.title == "Connection pool exhausted"
    assert event["fingerprint"] == ["connection-pool-exhausted"]
    assert event["title"] == "Connection pool exhausted"


def test_issue_example_payment_timeout_uses_the_crash_frame() -> None:
    frames = [
        {"module": "app.web", "function": "handle", "in_app": True},
        {"module": "app.payments.stripe", "function": "charge", "in_app": True},
        {"module": "httpx._client", "function": "send", "in_app": False},
    ]
    event = error("TimeoutError", "read timeout", frames)
    apply(ISSUE_RULES, event)
    assert event["fingerprint"] == ["payment-timeout", "charge"]
    elsewhere = error("TimeoutError", "read timeout", [{"module": "app.web", "function": "handle"}])
    assert apply(ISSUE_RULES, elsewhere) is None


def test_corpus_connection_reset() -> None:
    event = corpus_event("error-connection-reset")
    rules = 'error.type:ConnectionResetError -> connection-reset, {{ transaction }}, {{ stack.function }} title="Reset on {{ transaction }}"'
    result = apply(rules, event)
    assert result is not None
    assert event["fingerprint"] == ["connection-reset", "/healthz", "main"]
    assert event["title"] == "Reset on /healthz"


# --- matchers ---------------------------------------------------------------------------------------


FRAMES = [
    {
        "function": "main",
        "module": "app.cli",
        "abs_path": "/srv/app/cli.py",
        "filename": "app/cli.py",
        "package": "/usr/lib/libapp.so",
        "in_app": True,
    },
    {
        "function": "send",
        "module": "httpx._client",
        "filename": "httpx/_client.py",
        "package": "/usr/lib/libssl.so.3",
        "in_app": False,
    },
]
FULL = {
    "exception": {
        "values": [
            {"type": "KeyError", "value": "'user_id'"},
            {"type": "TimeoutError", "value": "Read timed out", "stacktrace": {"frames": FRAMES}},
        ]
    },
    "logger": "app.worker",
    "level": "error",
    "platform": "python",
    "sdk": {"name": "sentry.python.aiohttp", "version": "2.75.0"},
    "release": "shop@1.4.2",
    "environment": "production",
    "transaction": "/checkout",
    "tags": {"region": "eu-west-1", "tenant": "acme"},
}


@pytest.mark.parametrize(
    ("matcher", "matches"),
    [
        ("error.type:TimeoutError", True),
        ("error.type:KeyError", True),
        ("type:Timeout*", True),
        ("error.type:timeouterror", False),  # types are case-sensitive
        ('error.value:"read TIMED out"', True),  # values are not
        ("value:*user_id*", True),
        ("error.value:nope", False),
        ('message:"*timed out*"', True),  # message also looks at exception values
        ("logger:app.*", True),
        ("logger:App.*", False),
        ("level:ERROR", True),
        ("level:warning", False),
        ("stack.abs_path:/srv/app/*.py", True),
        ("path:**/cli.py", True),
        ("path:httpx/*.py", True),  # relative filenames also match with a leading /
        ("path:**/_client.py", True),
        ("path:/srv/*.py", False),
        ("stack.module:httpx.*", True),
        ("module:app.cli", True),
        ("stack.function:send", True),
        ("function:nope", False),
        ("stack.package:**/libssl.so*", True),
        ("package:**/libapp.so", True),
        ("package:libapp.so", False),  # path-like: `**/` is needed for a basename
        ("package:/usr/lib/other.so", False),
        ("app:yes", True),
        ("app:no", True),
        ("family:other", True),
        ("family:javascript,native", False),
        ("family:all", True),
        ("sdk:sentry.python", True),  # Sentry's normalized name of sentry.python.aiohttp
        ("sdk:sentry.python.aiohttp", False),
        ("sdk:sentry.javascript.*,sentry.python", True),
        ("sdk:sentry.java", False),
        ("release:SHOP@1.4.*", True),
        ("environment:prod*", True),
        ("environment:staging", False),
        ("transaction:/checkout", True),
        ("tags.region:eu-*", True),
        ("tags.tenant:globex", False),
        ("tags.missing:*", False),
        ("event.type:error", True),
        ('"error.type":TimeoutError', True),
    ],
)
def test_every_matcher(matcher: str, matches: bool) -> None:
    result = apply(f"{matcher} -> hit", {**FULL})
    assert (result is not None) is matches


def test_family_of_platforms() -> None:
    assert apply("family:javascript -> js", {"platform": "node", "message": "x"}) is not None
    assert apply("family:native -> n", {"platform": "cocoa", "message": "x"}) is not None
    assert apply("family:other -> o", {"message": "x"}) is not None


def test_message_matcher_on_log_messages() -> None:
    assert (
        apply('message:"user * failed" -> m', {"logentry": {"formatted": "User 7 failed"}})
        is not None
    )
    assert (
        apply(
            'message:"user %s failed" -> m',
            {"logentry": {"message": "user %s failed", "params": [7]}},
        )
        is not None
    )
    assert apply('message:"*failed" -> m', {"message": "user 7 failed"}) is not None
    assert apply('message:"*failed" -> m', {"message": "ok"}) is None


def test_exception_matchers_hold_for_the_same_exception() -> None:
    # KeyError has value 'user_id', TimeoutError has "Read timed out".
    assert apply("error.type:KeyError error.value:*user_id* -> x", {**FULL}) is not None
    assert apply('error.type:KeyError error.value:"*timed out*" -> x', {**FULL}) is None


def test_frame_matchers_hold_for_the_same_frame() -> None:
    assert apply("stack.module:httpx.* stack.function:send -> x", {**FULL}) is not None
    assert apply("stack.module:httpx.* stack.function:main -> x", {**FULL}) is None
    assert apply("stack.module:app.* app:yes -> x", {**FULL}) is not None
    assert apply("stack.module:app.* app:no -> x", {**FULL}) is None


def test_frames_from_event_stacktrace_and_threads() -> None:
    threads = {
        "threads": {
            "values": [{"crashed": True, "stacktrace": {"frames": [{"function": "worker_loop"}]}}]
        },
        "message": "m",
    }
    assert apply("function:worker_loop -> t, {{ function }}", threads) is not None
    assert threads["fingerprint"] == ["t", "worker_loop"]
    plain = {"stacktrace": {"frames": [{"function": "tick", "module": "app.jobs"}]}, "message": "m"}
    assert apply("module:app.jobs -> p, {{ module }}", plain) is not None
    assert plain["fingerprint"] == ["p", "app.jobs"]


def test_negation() -> None:
    # As in Sentry: some exception (frame) must satisfy the group, negated matchers by
    # not matching; with no exception at all, nothing does.
    assert apply("!error.type:CancelledError -> x", {**FULL}) is not None
    assert apply("!error.type:KeyError -> x", {**FULL}) is not None  # the TimeoutError
    assert apply("!error.type:KeyError !error.type:TimeoutError -> x", {**FULL}) is None
    assert apply("!error.type:KeyError -> x", {"message": "no exceptions"}) is None
    assert apply("error.type:TimeoutError !error.value:*user_id* -> x", {**FULL}) is not None
    assert apply("error.type:KeyError !error.value:*user_id* -> x", {**FULL}) is None
    assert apply("!logger:app.* -> x", {**FULL}) is None
    assert apply("!tags.region:us-* -> x", {**FULL}) is not None
    assert apply("level:error !environment:staging -> x", {**FULL}) is not None


def test_tags_as_pairs() -> None:
    event = {"message": "m", "tags": [["region", "eu-west-1"], ["tenant", "acme"]]}
    apply("tags.region:eu-* -> r, {{ tags.tenant }}, {{ tags.nope }}", event)
    assert event["fingerprint"] == ["r", "acme", "<no-value-for-tag-nope>"]


# --- variables -------------------------------------------------------------------------------------


def test_every_variable() -> None:
    rules = (
        "error.type:TimeoutError -> {{ default }}, {{ error.type }}, {{ type }}, {{ error.value }}, {{value}},"
        " {{ transaction }}, {{ stack.function }}, {{ function }}, {{ stack.module }}, {{ module }},"
        " {{ stack.abs_path }}, {{ path }}, {{ stack.package }}, {{ package }}, {{ level }}, {{ logger }},"
        " {{ release }}, {{ environment }}, {{ tags.region }}, {{ message }}, {{ raw_message }},"
        " {{ error.raw_value }}, {{ raw_value }}, {{ stack.filename }}"
    )
    event = {**FULL}
    apply(rules, event)
    assert event["fingerprint"] == [
        "{{ default }}",
        "TimeoutError",
        "TimeoutError",
        "Read timed out",
        "Read timed out",
        "/checkout",
        "main",
        "main",
        "app.cli",
        "app.cli",
        "/srv/app/cli.py",
        "/srv/app/cli.py",
        "libapp.so",  # the last path segment, as in Sentry
        "libapp.so",
        "error",
        "app.worker",
        "<unrecognized-variable-release>",  # not variables in Sentry
        "<unrecognized-variable-environment>",
        "eu-west-1",
        "Read timed out",
        "Read timed out",
        "Read timed out",
        "Read timed out",
        "app/cli.py",
    ]


def test_variable_fallbacks() -> None:
    rules = "message:* -> {{ error.type }}, {{ error.value }}, {{ transaction }}, {{ stack.function }}, {{ stack.module }}, {{ stack.abs_path }}, {{ stack.package }}, {{ level }}, {{ logger }}"
    event = {"message": "plain"}
    apply(rules, event)
    assert event["fingerprint"] == [
        "<no-type>",
        "<no-value>",
        "<no-transaction>",
        "<no-function>",
        "<no-module>",
        "<no-abs-path>",
        "<no-package>",
        "error",  # a missing level is `error`, as after Sentry's normalization
        "<no-logger>",
    ]


def test_only_whole_values_are_variables() -> None:
    # Sentry: text around a variable stays literal; a bare `svc-{{ level }}` is two values.
    event = {**FULL}
    apply(
        'error.type:TimeoutError -> "timeouts in {{ transaction }}", svc-{{ level }} "a, b"', event
    )
    assert event["fingerprint"] == ["timeouts in {{ transaction }}", "svc-", "error", "a, b"]


def test_default_variable_spellings_are_normalized() -> None:
    event = {**FULL}
    apply('error.type:TimeoutError -> {{default}}, "{{  default  }}", x', event)
    assert event["fingerprint"] == ["{{ default }}", "{{ default }}", "x"]


def test_crash_frame_falls_back_to_last_frame() -> None:
    event = error("E", "v", [{"function": "a"}, {"function": "b"}])
    apply("type:E -> {{ function }}", event)
    assert event["fingerprint"] == ["b"]


# --- precedence ---------------------------------------------------------------------------------------


def test_first_matching_rule_wins_and_org_rules_come_first() -> None:
    event = {**FULL}
    result = apply(
        "level:error -> org-rule", event, project="error.type:TimeoutError -> project-rule"
    )
    assert result is not None and result.rule == "level:error -> org-rule"
    event = {**FULL}
    apply("level:fatal -> org-rule", event, project="error.type:TimeoutError -> project-rule")
    assert event["fingerprint"] == ["project-rule"]
    event = {**FULL}
    apply("level:error -> first\nlevel:error -> second", event)
    assert event["fingerprint"] == ["first"]


def test_sdk_fingerprint_is_kept_unless_override() -> None:
    event = {**FULL, "fingerprint": ["from-sdk"]}
    assert apply("level:error -> server title=T", event) is None
    assert event["fingerprint"] == ["from-sdk"] and "title" not in event
    # The first matching rule decides, even when it leaves the SDK's fingerprint.
    assert apply("level:error -> server\nlevel:error -> other override=true", event) is None
    result = apply("level:error -> server title=T override=true", event)
    assert result is not None
    assert event["fingerprint"] == ["server"] and event["title"] == "T"


def test_sdk_default_fingerprint_counts_as_none() -> None:
    event = {**FULL, "fingerprint": ["{{ default }}"]}
    apply("level:error -> server", event)
    assert event["fingerprint"] == ["server"]


def test_transactions_are_left_alone() -> None:
    event = {"type": "transaction", "transaction": "/checkout", "level": "info"}
    assert apply("transaction:/checkout -> t", event, normalize=True) is None
    assert "fingerprint" not in event


def test_no_rules_is_a_no_op() -> None:
    fingerprinter = compile_fingerprinting("", "", False)
    assert not fingerprinter
    assert fingerprinter.apply({**FULL}) is None


# --- message templates --------------------------------------------------------------------------------


def test_normalize_messages_groups_by_template() -> None:
    a = {"message": "user 123 failed", "level": "error"}
    b = {"logentry": {"formatted": "user 456 failed"}}
    ra = apply("", a, normalize=True)
    rb = apply("", b, normalize=True)
    assert ra is not None and rb is not None
    assert ra.source == "message_template" and ra.rule is None
    assert a["fingerprint"] == b["fingerprint"] == ["user <int> failed"]


def test_normalize_prefers_the_unformatted_template() -> None:
    event = {
        "logentry": {"message": "user %s failed", "params": ["123"], "formatted": "user 123 failed"}
    }
    apply("", event, normalize=True)
    assert event["fingerprint"] == ["user %s failed"]


def test_normalize_only_applies_when_nothing_else_did() -> None:
    with_exception = error("ValueError", "bad 123", message="x 1")
    assert apply("", with_exception, normalize=True) is None
    with_sdk = {"message": "user 1 failed", "fingerprint": ["mine"]}
    assert apply("", with_sdk, normalize=True) is None
    assert with_sdk["fingerprint"] == ["mine"]
    ruled = {"message": "user 1 failed"}
    apply("message:user* -> users", ruled, normalize=True)
    assert ruled["fingerprint"] == ["users"]
    off = {"message": "user 1 failed"}
    assert apply("", off, normalize=False) is None
    assert apply("", {"level": "info"}, normalize=True) is None


def test_normalize_corpus_message_event() -> None:
    event = corpus_event("error-payment")
    result = apply("", event, normalize=True)
    assert result is not None
    assert event["fingerprint"] == ["Payment webhook from <ip> had card <int>-<int>-<int>-<int>"]


# --- parser --------------------------------------------------------------------------------------------


def test_comments_blank_lines_and_whitespace() -> None:
    text = "\n# comment\n   # indented comment\n\n\terror.type:A   ->   a ,  b\n"
    rules = parse_fingerprinting(text)
    assert len(rules) == 1 and rules[0].line == 5
    event = error("A")
    compile_fingerprinting(text).apply(event)
    assert event["fingerprint"] == ["a", "b"]


def test_quoted_values_with_escapes() -> None:
    event = error("E", 'said "hi" to C:\\temp')
    # Quotes unescape once; the glob then unescapes again (`\\\\` is one backslash).
    apply(r'error.value:"said \"hi\" to C:\\\\temp" -> "quote \" inside"', event)
    assert event["fingerprint"] == ['quote " inside']
    other = error("E", 'said "hi" to C:\\temp')
    apply(r'error.value:"said \"hi\"*" -> x', other)
    assert other["fingerprint"] == ["x"]


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("error.type:X", 1, 13, "expected '->'"),
        ("error.type:X ->", 1, 16, "expected a fingerprint"),
        ("error.type:X ->   ", 1, 19, "expected a fingerprint"),
        ("foo:bar -> x", 1, 1, "unknown matcher 'foo'"),
        ("error.type:X !bogus:y -> x", 1, 15, "unknown matcher 'bogus'"),
        ("error.type: -> x", 1, 12, "expected a value"),
        ('error.type:"abc -> x', 1, 12, "unterminated quoted string"),
        ("-> x", 1, 1, "at least one matcher"),
        ("error.type X -> a", 1, 11, "expected ':'"),
        ("error.type:X -> a colour=red", 1, 19, "unknown attribute 'colour'"),
        ("error.type:X -> a override=maybe", 1, 28, "override takes true or false"),
        ("error.type:X -> a, ,b", 1, 20, "empty fingerprint value"),
        ("app:maybe -> a", 1, 5, "app takes yes or no"),
        ('error.value:"[abc" -> x', 1, 13, "'[' is never closed"),
        ("error.type:X -> {{ x", 1, 17, "'{{' is never closed"),
        ("error.type:X -> a{b", 1, 18, "unexpected '{'"),
        ("thread.name:main -> x", 1, 1, "thread matchers (thread.name) are not supported"),
        ("error.type:X !thread.crashed:yes -> x", 1, 15, "thread matchers (thread.crashed)"),
        ("[ function:a ] | function:b -> x", 1, 1, "caller/callee matchers"),
        ("function:a | [ function:b ] -> x", 1, 12, "caller/callee matchers"),
        ("# ok\n\n   level:error -> x\n  logger:* ->", 4, 14, "expected a fingerprint"),
        ("@@@ -> x", 1, 1, "expected a matcher"),
    ],
)
def test_parse_errors_have_line_and_column(
    text: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(FingerprintSyntaxError) as info:
        parse_fingerprinting(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert fragment in err.reason
    assert str(err).startswith(f"line {line}, column {column}: ")


def test_validate_reports_every_bad_line() -> None:
    text = "error.type:A -> a\nnope:x -> b\nerror.type:B -> c\nerror.type:C ->\n"
    problems = validate_fingerprinting(text)
    assert [p.path for p in problems] == ["", ""]
    assert problems[0].message.startswith("line 2, column 1: unknown matcher 'nope'")
    assert problems[1].message.startswith("line 4, column 16: ")
    assert validate_fingerprinting("") == []
    with pytest.raises(FingerprintSyntaxError):
        compile_fingerprinting("", text)
