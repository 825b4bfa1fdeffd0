from __future__ import annotations

import pytest

from relay.processing.normalize import MAX_TEMPLATE_INPUT, message_template


@pytest.mark.parametrize(
    ("message", "template"),
    [
        ("user 123 failed", "user <int> failed"),
        ("user 456 failed", "user <int> failed"),
        ("took 3.25s", "took <float>s"),
        ("timeout after 30s (1500ms)", "timeout after <int>s (<int>ms)"),
        ("utf8 sha256 v2 order_123 id=42", "utf8 sha256 v2 order_<int> id=<int>"),
        (
            "request 123e4567-e89b-12d3-a456-426614174000 timed out",
            "request <uuid> timed out",
        ),
        ("job 123e4567e89b12d3a456426614174000 lost", "job <uuid> lost"),
        ("object at 0x7f4bce429620", "object at <hex>"),
        ("commit 5f2b8c9e1a7d failed", "commit <hex> failed"),
        ("deadbeef cafebabe", "deadbeef cafebabe"),
        ("mail to alice.smith@example.com bounced", "mail to <email> bounced"),
        ("from 192.0.2.10:8080 via 10.0.0.1", "from <ip> via <ip>"),
        ("from 2001:db8::1 and ::1", "from <ip> and <ip>"),
        ("at 2024-05-01T12:30:00Z and 12:30:45", "at <date> and <date>"),
        (
            "can't find user 'bob' in 'admins', don't retry",
            "can't find user <quoted_str> in <quoted_str>, don't retry",
        ),
        ('said "hello world" to x', "said <quoted_str> to x"),
        (
            "Payment webhook from 198.51.100.23 had card 4111-1111-1111-1111",
            "Payment webhook from <ip> had card <int>-<int>-<int>-<int>",
        ),
        ("no variables here", "no variables here"),
    ],
)
def test_message_template(message: str, template: str) -> None:
    assert message_template(message) == template


def test_same_template_for_different_values() -> None:
    a = message_template("order 17 for bob@example.com failed after 2.5s at 2024-01-02")
    b = message_template("order 9042 for eve@example.org failed after 11.0s at 2025-12-31")
    assert a == b == "order <int> for <email> failed after <float>s at <date>"


def test_input_is_capped() -> None:
    long = "x " * MAX_TEMPLATE_INPUT
    assert len(message_template(long)) == MAX_TEMPLATE_INPUT
