"""Redaction of free text and of tracebacks: what an exception's message may spell out.

The Redactor's key and query-string rules are covered in ``tests/logging/test_config.py``; here,
the secrets written out in text (issue 21 item 5: an ``httpx.HTTPStatusError`` carries its URL,
``?api_key=...`` included) and the tracebacks of exception chains, notes and groups.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodkit._core.redaction import REDACTED, Redactor, exception_text

SECRET = "sk_live_planted-fake-secret-42"  # noqa: S105 - a fake secret that must never be rendered


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        # Query parameters in a URL (what httpx's HTTPStatusError says).
        (
            f"Client error '401' for url 'https://api.example.com/v1?api_key={SECRET}&x=1'",
            "Client error '401' for url 'https://api.example.com/v1?api_key=[REDACTED]&x=1'",
        ),
        # Credentials of an Authorization value; the scheme stays.
        (f"sent Authorization: Bearer {SECRET}", "sent Authorization: Bearer [REDACTED]"),
        (f"Basic {SECRET}==", "Basic [REDACTED]"),
        # A URL's password: the user and host stay.
        (f"redis://app:{SECRET}@cache:6379/0", "redis://app:[REDACTED]@cache:6379/0"),
        (f"postgresql://:{SECRET}@db/app", "postgresql://:[REDACTED]@db/app"),
        # Secret keys spelled out: a dict's repr, JSON, keyword arguments, libpq DSNs.
        (f"{{'api_key': '{SECRET}', 'n': 1}}", "{'api_key': '[REDACTED]', 'n': 1}"),
        (f'{{"db_password": "{SECRET}"}}', '{"db_password": "[REDACTED]"}'),
        (f'{{"X-API-Key": "{SECRET}"}}', '{"X-API-Key": "[REDACTED]"}'),
        (f"Settings(client_secret='{SECRET}')", "Settings(client_secret='[REDACTED]')"),
        (f"host=db password={SECRET} user=app", "host=db password=[REDACTED] user=app"),
        # A header written out, to the end of its line.
        (f"X-API-Key: {SECRET}\nnext line", "X-API-Key: [REDACTED]\nnext line"),
        (f"cookie: session={SECRET}; theme=dark", "cookie: [REDACTED]"),
        # Left alone: names that are not secrets, and secrets' names without a value.
        ("tokens_used=3 keyboard=us", "tokens_used=3 keyboard=us"),
        ("KeyError: 'authorization'", "KeyError: 'authorization'"),
    ],
)
def test_secrets_written_out_in_text_are_redacted(text: str, redacted: str) -> None:
    assert Redactor().redact_text(text) == redacted


SPELLINGS = [
    "https://h/p?api_key={}",
    "https://h/p?a=1&token={}",
    "Authorization: Bearer {}",
    "redis://user:{}@host",
    "{{'password': '{}'}}",
    '{{"access_token": "{}"}}',
    "Config(db_password='{}')",
    "secret={}",
    "x-api-key: {}",
]


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(
    st.sampled_from(SPELLINGS),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_", min_size=8, max_size=40),
    st.text(alphabet="abc xyz.,:;()", max_size=20),
    st.text(alphabet="abc xyz.,;()", max_size=20),
)
def test_a_spelled_out_secret_never_survives(
    spelling: str, secret: str, before: str, after: str
) -> None:
    text = before + " " + spelling.format(secret) + " " + after
    assert secret not in Redactor().redact_text(text)


def test_the_replacement_and_the_names_follow_the_configuration() -> None:
    redactor = Redactor(keys=["pin"], headers=["x-card"], query_params=["otp"], replacement="***")
    assert redactor.redact_text("GET /?otp=123456 pin=1234 X-Card: 4111") == (
        "GET /?otp=*** pin=*** X-Card: ***"
    )
    assert redactor.redact_text("password=visible") == "password=visible"


def _raise_chain() -> None:
    token = SECRET  # a local: never rendered
    try:
        raise KeyError(f"Bearer {token}")
    except KeyError as exc:
        exc.add_note(f"while calling https://api.example.com/?api_key={token}")
        raise RuntimeError(f"charge failed at redis://:{token}@cache") from exc


def test_exception_text_has_the_chain_and_notes_and_no_locals() -> None:
    try:
        _raise_chain()
    except RuntimeError as exc:
        text = exception_text(exc)
    assert text is not None
    assert text.startswith("Traceback (most recent call last):\n")
    assert "The above exception was the direct cause of the following exception" in text
    assert "KeyError" in text
    assert "while calling https://api.example.com/?api_key=" in text  # the note
    assert "token = " not in text  # code lines only, never a frame's variables
    redacted = Redactor().redact_text(text)
    assert SECRET not in redacted
    assert redacted.endswith("RuntimeError: charge failed at redis://:[REDACTED]@cache")


def test_exception_text_covers_groups_and_every_exc_info_form() -> None:
    group = ExceptionGroup(
        "two calls failed", [ValueError(f"api_key={SECRET}"), OSError(f"Bearer {SECRET}")]
    )
    text = exception_text(group)
    assert text is not None
    assert "ValueError" in text
    assert "OSError" in text
    assert SECRET not in Redactor().redact_text(text)
    handled = ValueError("handled")
    forms: list[str | None] = []
    try:
        raise handled
    except ValueError:
        forms = [exception_text(True), exception_text((ValueError, handled, None))]
    assert forms == [exception_text(handled)] * 2
    assert exception_text(True) is None  # nothing is being handled
    assert exception_text(False) is None


def test_the_processor_renders_exc_info_as_redacted_text() -> None:
    try:
        _raise_chain()
    except RuntimeError:
        event = Redactor()(None, "error", {"event": "failed", "exc_info": True})
    assert "exc_info" not in event
    assert event["exception"].startswith("Traceback (most recent call last):")
    assert SECRET not in event["exception"]
    assert REDACTED in event["exception"]


# The processor's hot path remembers which keys are plain and how each constant message reads,
# and looks into values only when one is a container: every line must come out as the
# Redactor's own methods write it (keys by redact_mapping, the message by redact_text).
_KEYS = st.sampled_from(
    ["event", "status", "path", "password", "api_key", "Authorization", "user", "tokens_used"]
)
_TEXTS = st.sampled_from(
    ["request completed", "plain", f"url https://h/p?api_key={SECRET}", f"Bearer {SECRET}"]
)
_FIELD_VALUES = st.recursive(
    st.none() | st.integers() | _TEXTS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=6,
)


@given(lines=st.lists(st.dictionaries(_KEYS, _FIELD_VALUES, max_size=5), min_size=1, max_size=8))
def test_the_processor_writes_what_the_redactors_methods_write(
    lines: list[dict[str, object]],
) -> None:
    processor = Redactor()
    for line in lines:
        expected = Redactor().redact_mapping(line)
        event = line.get("event")
        if isinstance(event, str):
            expected["event"] = Redactor().redact_text(event)
        assert processor(None, "info", dict(line)) == expected
