"""Fingerprint matcher globs follow Sentry's flags key by key: `release`, `path` and
`package` are path globs (case-insensitive, `*` stops at `/`, `**` crosses it only as a
whole path segment, `\\` read as `/` in the value and the pattern); `sdk` and `family`
compare names exactly; the other keys are plain globs whose `*` crosses `/`."""

from __future__ import annotations

from typing import Any

import pytest

from relay.processing.fingerprint import compile_fingerprinting, validate_fingerprinting


def matches(rule: str, event: dict[str, Any]) -> bool:
    return compile_fingerprinting(f"{rule} -> hit").match(event) is not None


def frame_event(**frame: Any) -> dict[str, Any]:
    return {"exception": {"values": [{"type": "E", "stacktrace": {"frames": [frame]}}]}}


# --- release: a path glob -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "release", "expected"),
    [
        ('"shop/*"', "shop/1.4.2", True),
        ('"shop/*"', "shop/1.4/rc1", False),  # `*` stops at `/`
        ('"shop/**"', "shop/1.4/rc1", True),
        ('"**/rc1"', "shop/1.4/rc1", True),
        ('"SHOP/*"', "shop/1.4.2", True),  # case-insensitive
        ("shop@*", "shop@1.4.2", True),
        ("shop\\1.*", "shop\\1.4", True),  # `\` is a separator, not an escape
        ("shop\\1.*", "shop/1.4", True),
        ("shop\\1.*", "shop1.4", False),
        ('"/1.4.2"', "1.4.2", True),  # a value without a leading `/` is also tried with one
        ("shop**rc1", "shop/1.4/rc1", False),  # `**` inside a segment is `*`
        ("shop**rc1", "shop-1.4-rc1", True),
    ],
)
def test_release_is_a_path_glob(pattern: str, release: str, expected: bool) -> None:
    assert matches(f"release:{pattern}", {"message": "m", "release": release}) is expected


# --- path and package: `\` and `**` -------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "frame", "expected"),
    [
        ("path:C:\\Users\\*\\app.py", {"abs_path": "C:\\Users\\me\\app.py"}, True),
        ("path:C:\\Users\\*\\app.py", {"abs_path": "C:/Users/me/app.py"}, True),
        ("path:C:\\Users\\*", {"abs_path": "C:\\Users\\me\\app.py"}, False),
        ("path:**.py", {"abs_path": "/srv/app/cli.py"}, False),
        ("path:**.py", {"filename": "cli.py"}, True),
        ("path:/srv/**.py", {"abs_path": "/srv/app/cli.py"}, False),
        ("path:/srv/**.py", {"abs_path": "/srv/cli.py"}, True),
        ("path:/srv/**/cli.py", {"abs_path": "/srv/app/cli.py"}, True),
        ("path:/srv/**/cli.py", {"abs_path": "/srv/cli.py"}, True),
        ("path:/srv/**", {"abs_path": "/srv/app/cli.py"}, True),
        ("path:{**/cli.py,x}", {"abs_path": "/srv/app/cli.py"}, True),
        ("package:**\\libssl*", {"package": "C:\\Windows\\libssl-3.dll"}, True),
        ("package:*libssl*", {"package": "/usr/lib/libssl.so"}, False),
    ],
)
def test_path_and_package_globs(rule: str, frame: dict[str, Any], expected: bool) -> None:
    assert matches(rule, frame_event(**frame)) is expected


def test_a_trailing_backslash_is_a_separator_in_path_keys() -> None:
    assert validate_fingerprinting("path:C:\\srv\\ -> x") == []
    assert validate_fingerprinting("release:shop\\ -> x") == []
    assert validate_fingerprinting("module:shop\\ -> x") != []  # still an escape elsewhere


# --- sdk and family: names, not globs -------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("sdk:sentry.python", True),
        ("sdk:sentry.*", False),
        ("sdk:sentry.java,sentry.python", True),
        ("sdk:all", True),
        ("family:other", True),
        ("family:oth*", False),
        ("family:OTHER", False),
    ],
)
def test_sdk_and_family_compare_names(rule: str, expected: bool) -> None:
    event = {"message": "m", "platform": "python", "sdk": {"name": "sentry.python.django"}}
    assert matches(rule, event) is expected


# --- the plain globs: `*` crosses `/`, case as Sentry's -------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("type:app/*", True),
        ("type:APP/*", False),
        ("value:*DISK/FULL*", True),
        ('message:"*DISK/FULL*"', True),
        ("logger:svc/*", True),
        ("logger:SVC/*", False),
        ("level:FATAL", True),
        ("tags.route:/api/*", True),
        ("tags.route:/API/*", False),
        ("module:app/*", True),
        ("module:APP/*", False),
        ("function:app/*", True),
        ("function:APP/*", False),
    ],
)
def test_plain_globs(rule: str, expected: bool) -> None:
    event = {
        "exception": {
            "values": [
                {
                    "type": "app/errors/DiskFull",
                    "value": "disk/full on /var",
                    "stacktrace": {"frames": [{"module": "app/x/y", "function": "app/x/run"}]},
                }
            ]
        },
        "logger": "svc/a/b",
        "level": "fatal",
        "tags": {"route": "/api/v1/items"},
    }
    assert matches(rule, event) is expected
