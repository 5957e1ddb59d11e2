"""safe_logger: what every concern's lines look like by the time structlog's processors get them.

The same lines under five whole logging setups (and unconfigured, as JSON) are in
``tests/logging/test_any_setup.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import re
import uuid
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from prodkit._core.logs import (
    SafeLogger,
    add_standard_fields,
    iso_timestamp,
    json_dumps,
    json_dumps_stdlib,
    json_renderer,
    safe_logger,
)

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


# -- prodkit's timestamps and JSON against the standard library's and structlog's --------------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: The last instant the ISO text has four digits of year for: 9999-12-31T23:59:59.999999Z.
_LAST = datetime.datetime(10000 - 1, 12, 31, 23, 59, 59, 999_999, tzinfo=datetime.UTC) - _EPOCH
_LAST_MICROS = _LAST // datetime.timedelta(microseconds=1)


@given(micros=st.integers(0, _LAST_MICROS - 2_000_000), later=st.integers(0, 2_000_000))
def test_iso_timestamp_is_the_standard_librarys_iso_text(micros: int, later: int) -> None:
    # The second's and the millisecond's texts are cached: another instant, in the same
    # millisecond or not, in the same second or not.
    for instant in (micros, micros + later, micros + later % 1000):
        expected = (_EPOCH + datetime.timedelta(microseconds=instant)).isoformat(
            timespec="microseconds"
        )
        assert iso_timestamp(instant) == expected.replace("+00:00", "Z")


def test_line_timestamps_are_structlogs_iso_utc_timestamps_with_every_digit() -> None:
    # structlog's TimeStamper(fmt="iso", utc=True) writes the same text, except that it leaves
    # out ".000000" on a whole second (the stdlib's isoformat() does); prodkit's keep a fixed
    # width, so that lines sort as text.
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    before = stamper(None, "info", {})["timestamp"]
    ours = add_standard_fields(None, "info", {})["timestamp"]
    after = stamper(None, "info", {})["timestamp"]
    parsed = [datetime.datetime.fromisoformat(text) for text in (before, ours, after)]
    assert parsed == sorted(parsed)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ours)


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Weight(float):
    """A float subclass (numpy's float64 is one): orjson leaves it to ``default``."""


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Rendered:
    def __structlog__(self) -> str:
        return "rendered by __structlog__"


# What structlog's JSONRenderer writes the same way: JSON's own values, and other objects by
# their __structlog__() or repr().
_PLAIN = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too (orjson refuses those: the standard library writes them)
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),  # surrogates
    st.builds(Rendered),
    st.builds(Point, st.integers(), st.integers()),  # repr, as structlog's renderer does
    st.frozensets(st.integers(0, 9), max_size=1),
    st.binary(max_size=4),
)
# What prodkit writes its own way, with orjson and without.
_OWN = st.one_of(
    st.floats(),  # NaN and the infinities: null
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
    st.uuids(),
    st.sampled_from(Color),
    st.floats(allow_nan=False).map(Weight),
)


def _values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )


_KEYS = st.text(max_size=8)


@given(st.dictionaries(_KEYS, _values(_PLAIN), max_size=6))
def test_a_json_line_is_what_structlogs_json_renderer_writes(event: dict[str, Any]) -> None:
    theirs = structlog.processors.JSONRenderer()(None, "info", dict(event))
    ours = json_renderer()(None, "info", dict(event))
    assert isinstance(ours, str)
    assert json.loads(ours) == json.loads(theirs)


@given(
    st.dictionaries(_KEYS | st.integers(), _values(_PLAIN | _OWN), max_size=6),
)
def test_a_json_line_is_the_same_with_and_without_orjson(event: dict[Any, Any]) -> None:
    # Keys that are not strings go to the standard library on both paths (orjson refuses them).
    with_orjson, without = json_dumps(event), json_dumps_stdlib(event)
    assert json.loads(with_orjson) == json.loads(without)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (float("nan"), None),  # structlog writes NaN, which is not JSON
        (float("-inf"), None),
        ([1.5, float("inf")], [1.5, None]),
        (datetime.date(2024, 2, 29), "2024-02-29"),  # structlog: its repr()
        (
            datetime.datetime(2024, 2, 29, 12, 0, 0, 5, tzinfo=datetime.UTC),
            "2024-02-29T12:00:00.000005+00:00",
        ),
        (uuid.UUID(int=255), "00000000-0000-0000-0000-0000000000ff"),
        (Color.PAIR, [1, 2]),
        (Weight(2.5), 2.5),
    ],
)
def test_json_lines_write_what_json_has_no_word_for_readably(value: Any, written: Any) -> None:
    for dumps in (json_dumps, json_dumps_stdlib):
        assert json.loads(dumps({"value": value})) == {"value": written}


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
