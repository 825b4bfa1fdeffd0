"""`pii_config` as Sentry's Relay applies it (getsentry/relay relay-pii): its test vectors.

Each test names the Relay test or code it follows.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.rules import validate_pii_config
from tests.processing.scrub.conftest import OFF, cfg


def run(event: dict[str, Any], **section: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    compile_scrubber(cfg(**section)).scrub_event(out, report=False)
    return out


# --- safe fields narrow the default scrubbing only (convert.rs test_convert_exclude_field) ---


@pytest.mark.parametrize("safe", ["customer_email", "extra.customer_email"])
def test_safe_field_keeps_explicit_rules(safe: str) -> None:
    event = {"extra": {"customer_email": "jane.roe@example.com", "other": "x@example.com"}}
    pii = {"applications": {"extra.customer_email": ["@anything:remove"]}}
    out = run(event, safe_fields=[safe], pii_config=pii)
    assert out["extra"]["customer_email"] is None
    # Without the rule, the safe field is exempt from the default detectors.
    assert run(event, safe_fields=[safe])["extra"] == {
        "customer_email": "jane.roe@example.com",
        "other": "[email]",
    }


@pytest.mark.parametrize("safe", ["customer_email", "extra.customer_email"])
def test_safe_field_keeps_value_type_rules(safe: str) -> None:
    event = {"extra": {"customer_email": "mail jane.roe@example.com", "password": "hunter2"}}
    pii = {"applications": {"$string": ["@email:replace"]}}
    out = run(event, emails=False, safe_fields=[safe, "password"], pii_config=pii)
    assert out["extra"] == {"customer_email": "mail [email]", "password": "hunter2"}


def test_safe_container_keeps_rules_on_itself_and_below() -> None:
    event = {"extra": {"blob": {"a": "1234", "password": "hunter2"}}}
    pii = {
        "rules": {
            "digits": {
                "type": "pattern",
                "pattern": "[0-9]+",
                "redaction": {"method": "replace", "text": "#"},
            }
        },
        "applications": {"extra.blob.a": ["digits"]},
    }
    out = run(event, safe_fields=["blob"], pii_config=pii)
    # The safe container's own children are still walked (denylist included).
    assert out["extra"]["blob"] == {"a": "#", "password": "[Filtered]"}
    out = run(event, safe_fields=["blob"], pii_config={"applications": {"$object": ["@anything"]}})
    assert out["extra"] is None


# --- `$message` selects logentry.formatted / message (processor.rs test_logentry_value_types) ---


@pytest.mark.parametrize(
    "selector", ["$message", "$logentry.formatted && $message", "$logentry.message", "$string"]
)
def test_message_type_selects_logentry_fields(selector: str) -> None:
    event = {"logentry": {"formatted": "Hello world!", "message": "Hello %s!", "params": ["x"]}}
    out = run(event, **OFF, pii_config={"applications": {selector: ["@anything:remove"]}})
    assert out["logentry"]["formatted"] is None or selector == "$logentry.message"
    assert out["logentry"]["message"] is None or "formatted" in selector
    if selector == "$message":
        assert out["logentry"]["params"] == ["x"]


# --- `**` selects top-level fields (selector.rs matches_path; test_no_field_upsert) ---


def test_deep_wildcard_selects_top_level_fields() -> None:
    event = {"server_name": "jane.roe@example.com", "extra": {"a": "x@example.com"}}
    out = run(event, **OFF, pii_config={"applications": {"**": ["@email:replace"]}})
    assert out == {"server_name": "[email]", "extra": {"a": "[email]"}}


def test_deep_wildcard_removes_top_level_container() -> None:
    event = {"extra": {"myvalue": "foobar"}, "event_id": "a" * 32}
    out = run(event, **{**OFF, "meta": True}, pii_config={"applications": {"**": ["@anything"]}})
    assert out["extra"] is None and out["event_id"] == "a" * 32
    assert out["_meta"] == {"extra": {"": {"rem": [["@anything", "x"]]}}}


# --- selector spellings Relay accepts (selector.pest, processor/attrs.rs) ---


@pytest.mark.parametrize(
    "selector",
    [
        "(debug_meta.images.**.code_file & $string)",
        "$string & !$frame.filename",
        "extra.a | extra.b",
        "~extra.a",
        "$stack.frames.**",
        "$bool",
        "$list",
        "$trace_metric",
    ],
)
def test_relay_selector_spellings_are_accepted(selector: str) -> None:
    assert validate_pii_config({"applications": {selector: ["@anything:remove"]}}) == []


def test_single_character_operators_apply() -> None:
    event = {"extra": {"a": "1", "b": "2", "c": "3"}}
    pii = {"applications": {"extra.a | extra.b": ["@anything:remove"]}}
    assert run(event, **OFF, pii_config=pii)["extra"] == {"a": None, "b": None, "c": "3"}
    pii = {"applications": {"$string & ~extra.a": ["@anything:remove"]}}
    assert run(event, **OFF, pii_config=pii)["extra"] == {"a": "1", "b": None, "c": None}


# --- a hashed IP address becomes the user id (processor.rs test_ip_address_hashing) ---

IP_HASH = "AE12FE3B5F129B5CC4CDD2B136B7B7947C4D2741"


def test_ip_hash_moves_to_user_id() -> None:
    event = {"user": {"ip_address": "127.0.0.1"}}
    pii = {"applications": {"$user.ip_address": ["@ip:hash"]}}
    out = run(event, **{**OFF, "meta": True}, pii_config=pii)
    assert out["user"] == {"ip_address": None, "id": IP_HASH}
    assert out["_meta"] == {
        "user": {
            "id": {"": {"rem": [["@ip:hash", "p", 0, 40]], "len": 9}},
            "ip_address": {"": {"rem": [["project:0", "x"]]}},
        }
    }


@pytest.mark.parametrize(
    "user",
    [
        {"ip_address": "127.0.0.1", "username": "jane"},
        {"ip_address": "127.0.0.1", "id": "7"},
        {"ip_address": "not an address"},
    ],
)
def test_ip_hash_stays_when_the_user_has_an_id(user: dict[str, Any]) -> None:
    pii = {"applications": {"$user.ip_address": ["@anything:hash"]}}
    out = run({"user": user}, **OFF, pii_config=pii)
    assert out["user"].keys() == user.keys()
    assert out["user"]["ip_address"] not in (None, user["ip_address"])


def test_removed_ip_is_not_moved() -> None:
    event = {"user": {"ip_address": "127.0.0.1"}}
    out = run(event, **OFF, pii_config={"applications": {"$user.ip_address": ["@ip:remove"]}})
    assert "id" not in out["user"] and not out["user"]["ip_address"]
    assert run(event)["user"] == {"ip_address": None}


# --- rules that select an attachment apply to its text (attachments.rs) ---


def _attachment_envelope(filename: str, body: bytes) -> Any:
    from relay.protocol.envelope import make_envelope, parse_envelope

    header = {"type": "attachment", "filename": filename, "content_type": "text/plain"}
    return parse_envelope(
        make_envelope(
            {"event_id": "fe4272fa94e54186acc6e75b1bb21a2c"}, [(header, body)]
        ).serialize()
    )


ORDER_RULE = {
    "order": {
        "type": "pattern",
        "pattern": "ORD-[0-9]{8}",
        "redaction": {"method": "replace", "text": "[order]"},
    }
}


@pytest.mark.parametrize(
    ("selector", "scrubbed"),
    [
        ("$attachments.'app.log'", True),
        ("$attachments.**", True),
        ("$binary", True),
        ("**", True),
        ("$attachments.'other.log'", False),
        ("$string", False),  # an attachment is binary to Sentry's selectors
    ],
)
def test_pii_config_rule_applies_to_text_attachment(selector: str, scrubbed: bool) -> None:
    env = _attachment_envelope("app.log", b"shipped ORD-12345678 to jane@example.com\n")
    pii = {"rules": ORDER_RULE, "applications": {selector: ["order"]}}
    report = compile_scrubber(cfg(**{**OFF, "emails": True}, pii_config=pii)).scrub_envelope(env)
    payload = env.items[0].payload
    if scrubbed:
        assert payload == b"shipped [order] to [email]\n"
        assert [r.rule for r in report.redactions] == ["order", "@email:replace"]
    else:
        assert payload == b"shipped ORD-12345678 to [email]\n"


def test_redact_pair_on_the_file_name_redacts_the_attachment() -> None:
    env = _attachment_envelope("secret.txt", b"the whole file\n")
    pii = {
        "rules": {
            "files": {
                "type": "redact_pair",
                "keyPattern": "secret",
                "redaction": {"method": "replace", "text": "[Filtered]"},
            }
        },
        "applications": {"$attachments.*": ["files"]},
    }
    compile_scrubber(cfg(**OFF, pii_config=pii)).scrub_envelope(env)
    assert env.items[0].payload == b"[Filtered]"


# --- debug images and frame modules are pii "maybe"; paths keep their file name ---
# (relay-event-schema debugmeta.rs, stacktrace.rs; processor.rs process_native_image_path,
# test_replace_debugmeta_path, test_remove_debugmeta_path,
# test_debugmeta_path_not_addressible_with_wildcard_selector)

IMAGES_EVENT: dict[str, Any] = {
    "debug_meta": {
        "images": [
            {
                "type": "symbolic",
                "code_file": "C:\\Windows\\System32\\ntdll.dll",
                "debug_id": "971f98e5-ce60-41ff-b2d7-235bbeb34578-1",
                "debug_file": "wntdll.pdb",
                "arch": "arm64",
            }
        ]
    }
}


def test_debug_image_paths_replace_keeps_the_file_name() -> None:
    pii = {
        "applications": {
            "debug_meta.images.*.code_file": ["@anything:replace"],
            "debug_meta.images.*.debug_file": ["@anything:replace"],
        }
    }
    out = run(IMAGES_EVENT, **{**OFF, "meta": True}, pii_config=pii)
    image = out["debug_meta"]["images"][0]
    assert image["code_file"] == "[Filtered]\\ntdll.dll"
    assert image["debug_file"] == "wntdll.pdb"  # no directory: left alone
    assert out["_meta"]["debug_meta"]["images"]["0"]["code_file"] == {
        "": {"rem": [["@anything:replace", "s", 0, 10]], "len": 19}
    }


def test_debug_image_path_remove_leaves_the_file_name() -> None:
    pii = {"applications": {"debug_meta.images.*.code_file": ["@anything:remove"]}}
    out = run(IMAGES_EVENT, **OFF, pii_config=pii)
    assert out["debug_meta"]["images"][0]["code_file"] == "ntdll.dll"


def test_debug_image_paths_are_out_of_reach_of_wildcards() -> None:
    pii = {
        "applications": {
            "$string": ["@anything:remove"],
            "**": ["@anything:remove"],
            "debug_meta.**": ["@anything:remove"],
        }
    }
    out = run({"debug_meta": IMAGES_EVENT["debug_meta"]}, **OFF, pii_config=pii)
    assert out == IMAGES_EVENT
    assert run(IMAGES_EVENT) == IMAGES_EVENT


def test_frame_paths_keep_the_file_name_and_module_is_selectable() -> None:
    frame = {
        "abs_path": "/home/jane/app/views.py",
        "filename": "app/views.py",
        "module": "/home/jane/project/src/billing",
    }
    event = {"stacktrace": {"frames": [frame]}}
    pii = {
        "applications": {
            "$frame.abs_path || $frame.filename": ["@anything:replace"],
            "$frame.module": ["@userpath:replace"],
        }
    }
    out = run(event, **OFF, pii_config=pii)
    assert out["stacktrace"]["frames"][0] == {
        "abs_path": "[Filtered]/views.py",
        "filename": "[Filtered]/views.py",
        "module": "/home/[user]/project/src/billing",
    }
    # Default scrubbing and `$string` leave module alone (pii "maybe").
    out = run(event, **OFF, pii_config={"applications": {"$string": ["@anything:remove"]}})
    assert out == event


# --- the User-Agent header: exempt from the default scrubbing only (request.rs, convert.rs) ---

UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 jane@example.com"


@pytest.mark.parametrize("selector", ["$http.headers.**", "$string", "$http.headers.*"])
def test_rules_reach_the_user_agent_header(selector: str) -> None:
    event = {"request": {"headers": {"User-Agent": UA, "X-Trace": "abc"}}}
    out = run(event, **OFF, pii_config={"applications": {selector: ["@anything:remove"]}})
    assert out["request"]["headers"] == {"User-Agent": None, "X-Trace": None}


def test_default_scrubbing_leaves_the_user_agent_alone() -> None:
    event = {"request": {"headers": {"User-Agent": UA, "X-Client": "from 10.1.2.3"}}}
    headers = run(event)["request"]["headers"]
    assert headers == {"User-Agent": UA, "X-Client": "from [ip]"}
    pii = {"applications": {"$string": ["@ip:replace"]}}
    out = run(event, pii_config=pii)
    assert out["request"]["headers"]["User-Agent"] == UA.replace("120.0.0.0", "[ip]")


# --- `[name, value]` pairs: in free data below the pair's index, in pair-list fields not ---
# (processor.rs process_array, test_tuple_array_scrubbed_with_path_selector; utils.rs
# process_pairlist)


def test_pair_in_free_data_is_selected_below_its_index() -> None:
    event = {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", "Bearer x1"]]}}]}}
    for selector, hit in (
        ("$frame.vars.headers.0.authorization", True),
        ("vars.headers.*.authorization", True),
        ("vars.headers.0.1", True),  # by its index, when no rule selects it by its name
        ("vars.headers.authorization", False),
    ):
        out = run(event, **OFF, pii_config={"applications": {selector: ["@anything:replace"]}})
        value = out["stacktrace"]["frames"][0]["vars"]["headers"][0][1]
        assert value == ("[Filtered]" if hit else "Bearer x1"), selector
    pii = {
        "applications": {
            "vars.headers.0.authorization": ["@anything:replace"],
            "vars.headers.0.1": ["@anything:remove"],
        }
    }
    out = run(event, **OFF, pii_config=pii)
    assert out["stacktrace"]["frames"][0]["vars"]["headers"] == [["authorization", "[Filtered]"]]


def test_pair_list_fields_select_pairs_by_name() -> None:
    event = {
        "request": {"headers": [["X-Api-Key", "k1"]], "query_string": [["token", "t1"]]},
        "tags": [["customer", "jane"]],
    }
    pii = {
        "applications": {
            "$http.headers.x-api-key || $http.query_string.token || tags.customer": [
                "@anything:replace"
            ]
        }
    }
    out = run(event, **OFF, pii_config=pii)
    assert out["request"]["headers"] == [["X-Api-Key", "[Filtered]"]]
    assert out["request"]["query_string"] == [["token", "[Filtered]"]]
    assert out["tags"] == [["customer", "[Filtered]"]]
