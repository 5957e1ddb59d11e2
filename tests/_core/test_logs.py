"""safe_logger: what every concern's lines look like by the time structlog's processors get them.

The same lines under five whole logging setups (and unconfigured, as JSON) are in
``tests/logging/test_any_setup.py``.
"""

from __future__ import annotations

from typing import Any

import structlog

from prodkit._core.logs import SafeLogger, safe_logger

SECRET = "sk_live_planted-fake-secret-42"  # noqa: S105 - a fake secret that must never be rendered


class Recorder:
    """A logger a middleware was given (``logger=``): records what it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.calls.append((level, event, fields))

        return record


def test_fields_message_and_bound_values_are_redacted_before_the_logger_sees_them() -> None:
    given = Recorder()
    log = safe_logger("prodkit.cache", given).bind(dsn=f"redis://:{SECRET}@cache:6379/0")
    log.warning(
        f"store at https://h/?token={SECRET} refused",
        error=f"Bearer {SECRET}",
        nested={"db_password": SECRET, "hosts": [f"?api_key={SECRET}"]},
        count=3,
    )
    [(level, event, fields)] = given.calls
    assert SECRET not in repr(given.calls)
    assert (level, event) == ("warning", "store at https://h/?token=[REDACTED] refused")
    assert fields == {
        "dsn": "redis://:[REDACTED]@cache:6379/0",
        "error": "Bearer [REDACTED]",
        "nested": {"db_password": "[REDACTED]", "hosts": ["?api_key=[REDACTED]"]},
        "count": 3,
    }


def test_an_exception_becomes_redacted_text_at_error_level() -> None:
    given = Recorder()
    log = safe_logger("prodkit.lifespan", given)
    try:
        raise ConnectionError(f"postgresql://app:{SECRET}@db/app refused")
    except ConnectionError as exc:
        log.exception("start-up failed")
        log.warning("again", exc_info=exc)
    log.exception("nothing is being handled")
    [(first_level, _, first), (second_level, _, second), (_, _, last)] = given.calls
    assert (first_level, second_level) == ("error", "warning")
    for fields in (first, second):
        assert "exc_info" not in fields
        assert fields["exception"].startswith("Traceback (most recent call last):")
        assert fields["exception"].endswith(
            "ConnectionError: postgresql://app:[REDACTED]@db/app refused"
        )
    assert last == {}


def test_the_default_logger_is_structlogs_once_configured() -> None:
    log = safe_logger("prodkit.breaker")
    assert isinstance(log, SafeLogger)
    assert safe_logger("prodkit.breaker", log) is log
    with structlog.testing.capture_logs() as events:
        log.info("circuit breaker closed", password=SECRET)
    assert events == [
        {"event": "circuit breaker closed", "password": "[REDACTED]", "log_level": "info"}
    ]


def test_an_event_that_is_not_text_is_redacted_as_the_text_it_renders_as() -> None:
    given = Recorder()
    log = safe_logger("prodkit.errors", given)
    error = ConnectionError(f"postgresql://app:{SECRET}@db/app refused")
    log.error(error)  # type: ignore[arg-type]  # what an untyped caller may pass
    log.warning({"url": f"https://h/?token={SECRET}"})  # type: ignore[arg-type]
    assert [event for _, event, _ in given.calls] == [
        "postgresql://app:[REDACTED]@db/app refused",
        "{'url': 'https://h/?token=[REDACTED]'}",
    ]
