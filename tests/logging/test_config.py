"""configure_logging, Redactor and prodkit.testing: real rendered lines, structlog and stdlib."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from prodkit import ConfigurationError, RequestIdMiddleware, StackSettings
from prodkit._core.redaction import REDACTED, Redactor
from prodkit.asgi import Receive, Scope, Send
from prodkit.logging._config import configure_logging, parse_level
from prodkit.testing import capture_log_output, capture_logs
from tests.conftest import ClientFactory
from tests.servers import free_port, run_server

FAKE = "s3cr3t"  # a fake secret that must never be rendered
VISIBLE = "visible"  # a value that redaction was told to leave alone
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_structlog_and_stdlib_lines_have_the_same_shape(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        structlog.get_logger("myapp").info("from structlog", answer=42)
        logging.getLogger("uvicorn.error").warning("from stdlib %s", "args")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with capture_log_output() as output:
        client = make_client(RequestIdMiddleware(app))
        await client.get("/", headers={"X-Request-ID": "rid-1", "traceparent": TRACEPARENT})
    native, foreign = output.events("from structlog")[0], output.events("from stdlib args")[0]
    for line in (native, foreign):
        assert set(line) >= {"timestamp", "level", "event", "logger", "pid", "hostname"}
        assert line["request_id"] == "rid-1"
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert line["timestamp"].endswith("Z")
    assert (native["logger"], native["level"], native["answer"]) == ("myapp", "info", 42)
    assert (foreign["logger"], foreign["level"]) == ("uvicorn.error", "warning")
    assert "color_message" not in foreign


def test_lines_outside_a_request_have_no_request_id_and_a_true_timestamp() -> None:
    with capture_log_output() as output:
        before = datetime.now(UTC).replace(microsecond=0)
        structlog.get_logger().info("idle")
        after = datetime.now(UTC)
    [line] = output.events("idle")
    assert "request_id" not in line
    assert "trace_id" not in line
    assert before <= datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")) <= after


def test_level_and_format_come_from_the_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("LOG_FORMAT", "console")
    ignored = io.StringIO()
    with capture_log_output():  # only settings read the environment
        configure_logging(stream=ignored, cache_loggers=False)
        structlog.get_logger().info("shown", key="value")
    assert json.loads(ignored.getvalue().splitlines()[0])["event"] == "shown"

    settings = StackSettings.from_env()
    stream = io.StringIO()
    with capture_log_output():  # restores the previous setup afterwards
        configure_logging(
            settings.log_level, settings.log_format, stream=stream, cache_loggers=False
        )
        structlog.get_logger().info("hidden")
        structlog.get_logger().warning("shown", key="value")
        logging.getLogger("other").info("hidden too")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "shown" in text
    assert "key=value" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"level": "loud"}, "log level"), ({"format": "xml"}, "log format")],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        configure_logging(stream=io.StringIO(), **kwargs)


def test_parse_level() -> None:
    assert parse_level("Debug") == logging.DEBUG
    assert parse_level("30") == logging.WARNING
    assert parse_level(logging.ERROR) == logging.ERROR


def test_exceptions_are_plain_tracebacks_without_local_variables() -> None:
    with capture_log_output() as output:
        try:
            local_secret = "hunter2-local"  # noqa: S105 - must not be rendered
            raise ValueError(f"bad value {len(local_secret)}")
        except ValueError:
            structlog.get_logger().exception("failed")
        try:
            raise KeyError("stdlib")
        except KeyError:
            logging.getLogger("lib").exception("stdlib failed")
    assert "hunter2-local" not in output.text
    line = output.events("failed")[0]
    assert line["level"] == "error"
    assert line["exception"].startswith("Traceback (most recent call last):\n")
    assert line["exception"].endswith("\nValueError: bad value 13")
    assert output.events("stdlib failed")[0]["exception"].endswith("\nKeyError: 'stdlib'")


def test_uvicorn_access_log_is_replaced_unless_asked_for() -> None:
    with capture_log_output() as output:
        logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?token=abc HTTP/1.1" 200')
    assert output.lines() == []
    with capture_log_output(uvicorn_access_log=True) as output:
        logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?token=abc HTTP/1.1" 200')
    [line] = output.events()
    assert line["event"] == '127.0.0.1 - "GET /?token=[REDACTED] HTTP/1.1" 200'


def test_configuring_twice_keeps_one_handler() -> None:
    with capture_log_output() as output:
        configure_logging(stream=io.StringIO(), cache_loggers=False)
        configure_logging(stream=io.StringIO(), cache_loggers=False)
        flagged = [h for h in logging.getLogger().handlers if hasattr(h, "_prodkit_handler")]
        assert len(flagged) == 1
    assert output.lines() == []


def test_secrets_are_redacted_at_any_depth_in_rendered_lines() -> None:
    payload = {
        "user": {"name": "ann", "Password": "s3cr3t", "tokens": [{"TOKEN": "s3cr3t"}]},
        "headers": {"Authorization": "Bearer s3cr3t", "X-Health-Key": "s3cr3t", "Accept": "*/*"},
    }
    with capture_log_output() as output:
        structlog.get_logger().info(
            "GET /login?password=s3cr3t&next=/home",
            payload=payload,
            db_password=FAKE,
            client_secret=FAKE,
            secret=FAKE,
            tokens_used=3,
        )
        logging.getLogger("lib").info("header Authorization: Bearer s3cr3t")
    assert "s3cr3t" not in output.text
    line, stdlib_line = output.events()
    assert line["event"] == f"GET /login?password={REDACTED}&next=/home"
    assert line["payload"]["user"] == {
        "name": "ann",
        "Password": REDACTED,
        "tokens": [{"TOKEN": REDACTED}],
    }
    assert line["payload"]["headers"]["Accept"] == "*/*"
    assert line["tokens_used"] == 3
    assert stdlib_line["event"] == f"header Authorization: Bearer {REDACTED}"
    # The caller's objects are never changed.
    assert payload["user"]["Password"] == FAKE  # type: ignore[index]


def test_redaction_can_be_configured_or_turned_off() -> None:
    custom = Redactor(keys=["pin"], headers=[], query_params=["otp"], replacement="***")
    with capture_log_output(redact=custom) as output:
        structlog.get_logger().info("login?otp=123456", pin="1234", password=VISIBLE)
    [line] = output.events()
    assert (line["event"], line["pin"], line["password"]) == ("login?otp=***", "***", "visible")
    with capture_log_output(redact=False) as output:
        structlog.get_logger().info("x", password=VISIBLE)
    assert output.events()[0]["password"] == VISIBLE


def test_redactor_rejects_a_single_string() -> None:
    with pytest.raises(ConfigurationError, match="list of names"):
        Redactor(keys="password")


SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=20)
SECRET_KEYS = st.sampled_from(
    ["password", "PASSWORD", "token", "Secret", "db_password", "access-token", "Authorization"]
)
PLAIN_KEYS = st.sampled_from(["name", "id", "path", "count"])


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(st.lists(st.sampled_from(["dict", "list"]), max_size=6), SECRET_KEYS, SECRET, PLAIN_KEYS)
def test_a_secret_key_is_redacted_wherever_it_is_nested(
    path: list[str], key: str, secret: str, plain: str
) -> None:
    node: Any = {key: secret, plain: 1}
    for kind in reversed(path):
        node = {plain: node} if kind == "dict" else [1, node]
    event = Redactor()(None, "info", {"event": "e", "data": node})
    assert secret not in json.dumps(event)


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(
    st.lists(st.tuples(PLAIN_KEYS, st.text("abc123", max_size=5)), max_size=4),
    st.sampled_from(["token", "Password", "api_key", "SIGNATURE", "key", "access_token"]),
    SECRET,
)
def test_secret_query_values_never_survive(
    plain: list[tuple[str, str]], name: str, secret: str
) -> None:
    params = [f"{k}={v}" for k, v in plain]
    params.insert(len(params) // 2, f"{name}={secret}")
    query = "&".join(params)
    redactor = Redactor()
    assert secret not in redactor.redact_query(query)
    assert secret not in redactor.redact_text(f"GET /path?{query} HTTP/1.1")


@settings(deadline=None)  # the suite asserts behaviour, never time (a busy machine is slow)
@given(
    st.sampled_from(
        ["token", "Password", "api_key", "SIGNATURE", "access_token", "x-amz-signature"]
    ),
    st.data(),
    SECRET,
)
def test_percent_encoded_secret_names_are_redacted(
    name: str, data: st.DataObject, secret: str
) -> None:
    # The app decodes ?access%5Ftoken=... to access_token, so the log must read it that way too.
    encoded = "".join(
        f"%{ord(char):02{data.draw(st.sampled_from('xX'))}}" if data.draw(st.booleans()) else char
        for char in name
    )
    query = f"page=2&{encoded}={secret}&sort=name"
    redactor = Redactor()
    assert secret not in redactor.redact_query(query)
    assert secret not in redactor.redact_text(f"GET /path?{query} HTTP/1.1")
    assert "page=2" in redactor.redact_query(query)


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("access%5Ftoken=s3cret", "access%5Ftoken=[REDACTED]"),  # the case of issue #16
        ("%61ccess_token=s3cret", "%61ccess_token=[REDACTED]"),
        ("ACCESS%2dTOKEN=s3cret", "ACCESS%2dTOKEN=[REDACTED]"),
        ("access+token=visible", "access+token=visible"),  # decodes to "access token"
        ("tokens=visible", "tokens=visible"),
    ],
)
def test_encoded_query_names_are_read_as_the_app_reads_them(query: str, redacted: str) -> None:
    redactor = Redactor()
    assert redactor.redact_query(query) == redacted
    assert redactor.redact_text(f"GET /p?{query} HTTP/1.1") == f"GET /p?{redacted} HTTP/1.1"


def test_capture_logs_applies_redaction_and_request_context() -> None:
    token = structlog.contextvars.bind_contextvars(tenant="t1")
    try:
        with capture_logs() as events:
            structlog.get_logger().warning("login", password=FAKE)
    finally:
        structlog.contextvars.reset_contextvars(**token)
    assert events == [
        {"event": "login", "password": REDACTED, "tenant": "t1", "log_level": "warning"}
    ]
    with capture_logs(redact=False) as events:
        structlog.get_logger().info("raw", password=FAKE)
    assert events[0]["password"] == FAKE


def test_extra_processors_run_before_redaction() -> None:
    def add_credentials(logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["api_key"] = FAKE
        event_dict["service"] = "funds"
        return event_dict

    with capture_log_output(processors=[add_credentials]) as output:
        structlog.get_logger().info("hello")
    [line] = output.events()
    assert (line["api_key"], line["service"]) == (REDACTED, "funds")


@pytest.mark.server
def test_a_real_uvicorn_process_writes_only_json_lines(tmp_path: Path) -> None:
    port = free_port()
    args = ["uvicorn", "tests.servers.logging_app:app", "--host", "127.0.0.1", "--port", str(port)]
    env = {"LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        response = httpx.get(
            f"{server.base_url}/items/42?token={FAKE}&page=1",
            headers={"Authorization": f"Bearer {FAKE}", "X-Request-ID": "srv-1"},
            timeout=20,
        )
        assert response.status_code == 200
    output = server.output()
    assert FAKE not in output
    lines = [json.loads(text) for text in output.splitlines() if text.strip()]
    assert all({"timestamp", "level", "event", "pid", "hostname"} <= set(line) for line in lines)
    by_event = {line["event"]: line for line in lines}
    started = next(line for line in lines if line["event"].startswith("Started server process"))
    assert (started["logger"], started["level"]) == ("uvicorn.error", "info")
    handled = by_event["handled item"]
    assert (handled["logger"], handled["request_id"], handled["item"]) == (
        "funds.handler",
        "srv-1",
        "42",
    )
    access = by_event["request completed"]
    assert access["route"] == "/items/{item_id}"
    assert access["item"] == "42"
    assert access["query"] == "token=[REDACTED]&page=1"
    assert not [line for line in lines if line.get("logger") == "uvicorn.access"]


def test_captured_json_lines_keep_unicode_line_separators() -> None:
    with capture_log_output() as output:
        structlog.get_logger("t").info("split\u2028here", note="a\x85b")
    assert [event["event"] for event in output.events()] == ["split\u2028here"]


def test_capture_log_output_puts_the_root_handlers_back_as_they_were() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with capture_log_output():
        with capture_log_output() as inner:
            logging.getLogger("app").warning("inside")
        assert root.handlers != before
        assert [line["event"] for line in inner.events()] == ["inside"]
    assert root.handlers == before
