"""Fingerprint rules behave as Sentry's (src/sentry/grouping/fingerprinting/): matching,
frames, the grammar, escapes, SDK names, case, defaults and variables, one section each."""

from __future__ import annotations

from typing import Any

import pytest

from relay.processing.fingerprint import (
    FingerprintResult,
    FingerprintSyntaxError,
    compile_fingerprinting,
    parse_fingerprinting,
    validate_fingerprinting,
)
from relay.processing.matchers import normalize_sdk_name


def apply(rules: str, event: dict[str, Any]) -> FingerprintResult | None:
    return compile_fingerprinting(rules).apply(event)


def exc_event(*excs: tuple[str, str | None], frames: list[dict[str, Any]] | None = None) -> Any:
    values: list[dict[str, Any]] = [{"type": t, "value": v} for t, v in excs]
    if frames is not None:
        values[-1]["stacktrace"] = {"frames": frames}
    return {"exception": {"values": values}}


# --- negated matchers: some single element, never without elements --------------------------


def test_negated_type_needs_an_exception() -> None:
    event = {"logentry": {"formatted": "disk almost full"}, "level": "warning"}
    assert apply("!error.type:CancelledError -> not-cancelled", event) is None
    assert "fingerprint" not in event


def test_negated_path_needs_a_frame() -> None:
    assert apply("!path:**/foo/** -> everything", {"message": "no stack here"}) is None


def test_negated_type_holds_for_another_exception_of_the_chain() -> None:
    event = exc_event(("CancelledError", "cancelled"), ("ValueError", "bad input"))
    apply("!error.type:CancelledError -> not-cancelled", event)
    assert event["fingerprint"] == ["not-cancelled"]
    only = exc_event(("CancelledError", "cancelled"))
    assert apply("!error.type:CancelledError -> not-cancelled", only) is None


def test_negated_path_holds_for_a_frame_outside() -> None:
    frames = [{"abs_path": "/srv/app/main.py"}, {"abs_path": "/srv/foo/lib.py"}]
    assert apply("!path:**/foo/** -> x", exc_event(("E", "v"), frames=frames)) is not None
    inside = [{"abs_path": "/srv/foo/lib.py"}]
    assert apply("!path:**/foo/** -> x", exc_event(("E", "v"), frames=inside)) is None


def test_negated_message_holds_for_one_value_that_differs() -> None:
    event = exc_event(("TimeoutError", "read timeout"), ("RuntimeError", "job failed"))
    assert apply('!message:"*timeout*" -> other', event) is not None
    both = exc_event(("TimeoutError", "read timeout"), ("RuntimeError", "write timeout"))
    assert apply('!message:"*timeout*" -> other', both) is None


def test_app_matcher_on_frames_without_in_app() -> None:
    # Sentry: an unknown in_app is neither yes nor no.
    event = exc_event(("E", "v"), frames=[{"function": "f"}])
    assert apply("app:no -> x", event) is None
    assert apply("!app:yes -> x", event) is not None


# --- frames: exception frames, else stacktrace, else the crashing thread ----------------------


def test_other_threads_frames_are_not_looked_at() -> None:
    event = {
        "platform": "java",
        **exc_event(
            ("NullPointerException", "boom"),
            frames=[{"function": "onClick", "module": "com.app.Ui", "in_app": True}],
        ),
        "threads": {
            "values": [
                {"id": 1, "crashed": True, "current": True, "name": "main"},
                {
                    "id": 7,
                    "name": "db-worker",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "nativeExecute",
                                "module": "android.database.sqlite.SQLiteConnection",
                            }
                        ]
                    },
                },
            ]
        },
    }
    assert apply("module:android.database.sqlite.* -> db-crash", event) is None
    assert apply("module:com.app.* -> ui", event) is not None


def test_only_the_crashing_thread_without_exception() -> None:
    threads = [
        {"id": 1, "crashed": True, "stacktrace": {"frames": [{"function": "render_frame"}]}},
        {"id": 2, "crashed": False, "stacktrace": {"frames": [{"function": "sqlite3_step"}]}},
    ]
    event = {"logentry": {"formatted": "watchdog"}, "threads": {"values": threads}}
    assert apply("function:sqlite3_* -> db", event) is None
    assert apply("function:render_* -> render", event) is not None


def test_the_event_stacktrace_comes_before_threads() -> None:
    event = {
        "message": "m",
        "stacktrace": {"frames": [{"function": "tick"}]},
        "threads": [{"stacktrace": {"frames": [{"function": "worker_loop"}]}}],
    }
    assert apply("function:worker_loop -> t", event) is None
    assert apply("function:tick -> t", event) is not None


# --- grammar and variables Sentry accepts -------------------------------------------------------


def test_message_variable() -> None:
    rules = "message:*love* -> what-is-love, {{ message }}"
    assert validate_fingerprinting(rules) == []
    event = {"logentry": {"formatted": "Hello my sweet Love"}}
    apply(rules, event)
    assert event["fingerprint"] == ["what-is-love", "Hello my sweet Love"]


def test_message_variable_is_parameterized_and_falls_back_to_the_exception_value() -> None:
    event = exc_event(("KeyError", "no user 1234 in cache"))
    apply("type:KeyError -> {{ message }}, {{ raw_message }}", event)
    assert event["fingerprint"] == ["no user <int> in cache", "no user 1234 in cache"]
    nothing = {"level": "info", "tags": {"a": "b"}}
    apply("tags.a:b -> {{ message }}", nothing)
    assert nothing["fingerprint"] == ["<no-message>"]


def test_filename_and_raw_value_variables() -> None:
    event = exc_event(
        ("E", "  padded value "),
        frames=[{"function": "f", "abs_path": "/srv/app/x.py", "filename": "app/x.py"}],
    )
    apply("type:E -> {{ stack.filename }}, {{ error.raw_value }}, {{ raw_value }}", event)
    assert event["fingerprint"] == ["app/x.py", "  padded value ", "  padded value "]
    only_abs = exc_event(("E", "v"), frames=[{"abs_path": "/srv/app/x.py"}])
    apply("type:E -> {{ stack.filename }}", only_abs)
    assert only_abs["fingerprint"] == ["/srv/app/x.py"]


def test_unknown_variables_render_as_in_sentry() -> None:
    rules = 'type:E -> {{ dog }}, {{ release }} title="{{ cat }} in {{ type }}"'
    assert validate_fingerprinting(rules) == []
    event = exc_event(("E", "v"))
    event["release"] = "2.1"
    apply(rules, event)
    assert event["fingerprint"] == [
        "<unrecognized-variable-dog>",
        "<unrecognized-variable-release>",
    ]
    assert event["title"] == "<unrecognized-variable-cat> in E"


def test_trailing_comma() -> None:
    assert validate_fingerprinting("error.type:X -> a,") == []
    event = exc_event(("X", "v"))
    apply("error.type:X -> a, b ,", event)
    assert event["fingerprint"] == ["a", "b"]


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("thread.name:main -> main-thread", "thread matchers (thread.name) are not supported"),
        ("thread.crashed:true -> crashed", "thread matchers (thread.crashed) are not supported"),
        ("[ function:caller ] | function:foo -> x", "caller/callee matchers"),
        ("function:foo | [ function:callee ] -> x", "caller/callee matchers"),
    ],
)
def test_unsupported_sentry_forms_are_refused_by_name(rule: str, fragment: str) -> None:
    with pytest.raises(FingerprintSyntaxError) as info:
        parse_fingerprinting(rule)
    assert fragment in info.value.reason


# --- escapes in quoted values ----------------------------------------------------------------------


def test_escaped_glob_characters_match_literally() -> None:
    event = {"logentry": {"formatted": "{[*?]}"}}
    apply(r'message:"\{\[\*\?\]\}" -> escaped, {{ message }}', event)
    assert event["fingerprint"] == ["escaped", "{[*?]}"]


def test_escaped_star_is_not_a_wildcard() -> None:
    rule = r'error.value:"Invalid selector: div\*" -> bad-selector'
    assert apply(rule, exc_event(("SyntaxError", "Invalid selector: divX"))) is None
    assert apply(rule, exc_event(("SyntaxError", "Invalid selector: div*"))) is not None


def test_standard_escapes_are_decoded() -> None:
    event = exc_event(("E", "line one\nline\ttwo"))
    apply(r'error.value:"line one\nline\ttwo" -> "a\tb"', event)
    assert event["fingerprint"] == ["a\tb"]


# --- sdk: Sentry's normalized SDK name ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("sentry.python.django", "sentry.python"),
        ("sentry.java.android", "sentry.java"),
        ("sentry.javascript.nextjs", "sentry.javascript.nextjs"),
        ("sentry.javascript.react.expo", "sentry.javascript.react"),
        ("sentry.native.android", "sentry.native.android"),
        ("sentry-python", "sentry.python"),
        ("sentry.unknownsdk", "other"),
        ("acme.sdk", "other"),
    ],
)
def test_normalize_sdk_name(name: str, normalized: str) -> None:
    assert normalize_sdk_name(name) == normalized


def test_sdk_matcher_uses_the_normalized_name() -> None:
    django = {"sdk": {"name": "sentry.python.django"}, **exc_event(("OperationalError", "x"))}
    assert apply("sdk:sentry.python type:OperationalError -> python-db", django) is not None
    android = {"sdk": {"name": "sentry.java.android"}, **exc_event(("ANR", "x"))}
    assert apply("sdk:sentry.java -> java", android) is not None
    assert apply("sdk:other -> none", {"message": "no sdk"}) is not None


# --- path and package ignore case ------------------------------------------------------------------


def test_path_and_package_ignore_case() -> None:
    windows = exc_event(
        ("E", "v"), frames=[{"abs_path": "C:\\Projects\\MyApp\\Services\\Billing.cs"}]
    )
    assert apply("path:**/myapp/services/*.cs -> billing", windows) is not None
    uikit = exc_event(
        ("E", "v"), frames=[{"package": "/System/Library/Frameworks/UIKit.framework/UIKit"}]
    )
    assert apply("package:**/uikit.framework/* -> uikit", uikit) is not None
    # Other frame matchers stay case-sensitive.
    assert (
        apply("function:charge -> x", exc_event(("E", "v"), frames=[{"function": "Charge"}]))
        is None
    )


# --- a missing level is `error` ----------------------------------------------------------------------


def test_missing_level_is_error() -> None:
    event = {"platform": "native", **exc_event(("EXC_BAD_ACCESS", "crash"))}
    apply("level:error type:EXC_BAD_ACCESS -> crash, {{ level }}", event)
    assert event["fingerprint"] == ["crash", "error"]
    assert apply("level:warning -> w", {"message": "m", "level": "warning"}) is not None


# --- values stripped before matching ----------------------------------------------------------------


def test_values_message_tags_and_release_are_stripped() -> None:
    value = exc_event(("OSError", "connection refused\n"))
    assert apply('error.value:"connection refused" -> refused', value) is not None
    assert (
        apply('message:"connection refused" -> refused', exc_event(("E", " connection refused")))
        is not None
    )
    message = {"logentry": {"formatted": "  cache miss storm\n"}}
    assert apply('message:"cache miss storm" -> storm', message) is not None
    tagged = {"message": "m", "tags": {"region": " eu-west-1 "}, "release": "1.0 \n"}
    assert apply("tags.region:eu-west-1 release:1.0 -> r", tagged) is not None


# --- only a whole `{{ var }}` value is a variable ------------------------------------------------------


def test_release_is_not_a_variable_so_releases_group_together() -> None:
    a = {"logentry": {"formatted": "Yay, dogs!"}, "release": "2.1"}
    b = {"logentry": {"formatted": "Yay, dogs!"}, "release": "2.2"}
    apply("message:*dogs* -> dogs-are-great, {{ release }}", a)
    apply("message:*dogs* -> dogs-are-great, {{ release }}", b)
    assert a["fingerprint"] == b["fingerprint"]


def test_text_around_a_variable_stays_literal() -> None:
    rule = 'type:TimeoutError -> "timeouts in {{ transaction }}", "{{ transaction }}"'
    event = {**exc_event(("TimeoutError", "t")), "transaction": "/a"}
    apply(rule, event)
    assert event["fingerprint"] == ["timeouts in {{ transaction }}", "/a"]
