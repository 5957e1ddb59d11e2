"""The access log's fast path: the same line as the bound logger's, only under prodkit's setup."""

from __future__ import annotations

import contextvars
import io
import json
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from prodkit.logging._config import configure_logging
from prodkit.logging._direct import direct_writer
from prodkit.testing import capture_log_output, capture_logs


def _direct_and_usual(stream: io.StringIO, fields: dict[str, Any]) -> tuple[Any, Any]:
    write = direct_writer("prodkit.access", "warning")
    assert callable(write)
    write("request completed", dict(fields))
    structlog.get_logger("prodkit.access").warning("request completed", **fields)
    direct, usual = (json.loads(line) for line in stream.getvalue().split("\n")[:2])
    assert direct.pop("timestamp") <= usual.pop("timestamp")
    return direct, usual


# The access log writes its lines without structlog's per-call wrapper while prodkit's own
# configuration is in place; the line must be the one the bound logger would have written.
_SAFE_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(
    fields=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda key: key not in ("event", "level", "timestamp", "logger")
        ),
        st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False), _SAFE_TEXT, st.none()),
        max_size=6,
    )
)
def test_direct_access_lines_equal_structlog_lines(fields: dict[str, Any]) -> None:
    stream = io.StringIO()
    with capture_log_output():  # puts the previous setup back afterwards
        configure_logging("info", "json", stream=stream)
        direct, usual = _direct_and_usual(stream, fields)
    assert list(direct.items()) == list(usual.items())  # same keys, values and order


def _bound_values_line() -> tuple[Any, Any]:
    structlog.contextvars.bind_contextvars(user_id="alice", status="bound")
    stream = io.StringIO()
    with capture_log_output():
        configure_logging("info", "json", stream=stream)
        return _direct_and_usual(stream, {"status": 200, "path": "/x"})


def test_direct_access_lines_carry_context_values_like_structlog_lines() -> None:
    direct, usual = contextvars.copy_context().run(_bound_values_line)
    assert list(direct.items()) == list(usual.items())
    assert (direct["user_id"], direct["status"]) == ("alice", 200)  # the call's value wins


def test_direct_access_lines_follow_the_configuration() -> None:
    with capture_log_output():  # puts the previous setup back afterwards
        configure_logging("warning", "json", stream=io.StringIO())
        assert direct_writer("prodkit.access", "info") is False  # filtered, as the logger would
        assert callable(direct_writer("prodkit.access", "error"))
        with capture_logs() as captured:  # capture changes the processors in place
            assert direct_writer("prodkit.access", "error") is True
            structlog.get_logger("prodkit.access").error("seen")
        assert [event["event"] for event in captured] == ["seen"]
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        assert direct_writer("prodkit.access", "error") is True  # someone else's configuration
        structlog.reset_defaults()


def test_a_replaced_wrapper_or_factory_is_someone_elses_configuration() -> None:
    with capture_log_output():
        configure_logging("info", "json", stream=io.StringIO())
        assert callable(direct_writer("prodkit.access", "info"))
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
        assert direct_writer("prodkit.access", "info") is True
        configure_logging("info", "json", stream=io.StringIO())
        structlog.configure(logger_factory=structlog.PrintLoggerFactory())
        assert direct_writer("prodkit.access", "info") is True


def test_an_earlier_setup_put_back_gets_its_direct_path_back() -> None:
    stream = io.StringIO()
    with capture_log_output():  # the outermost block puts the test run's setup back
        configure_logging("info", "json", stream=stream)
        with capture_log_output() as output:  # a second installation for the inner block
            write = direct_writer("prodkit.access", "info")
            assert callable(write)
            write("inside", {})
        assert [line["event"] for line in output.events()] == ["inside"]
        write = direct_writer("prodkit.access", "info")  # the first installation again
        assert callable(write)
        write("after", {})
    assert [json.loads(line)["event"] for line in stream.getvalue().split("\n") if line] == [
        "after"
    ]
