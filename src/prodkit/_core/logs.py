"""How a line prodkit writes leaves prodkit: its fields, its JSON, and the redaction first.

Every concern logs through :func:`safe_logger`. Whatever the application did with structlog and
the standard library (nothing at all, its own processors, a renderer that shows local variables),
prodkit's own lines are redacted before any processor sees them, and carry an exception as the
plain traceback text (``exception``), never as ``exc_info`` that a renderer could expand into
frames and their values. While structlog has not been configured, prodkit's lines are written
as JSON lines on standard output (the shape :func:`prodkit.logging.configure_logging` gives
every line), not in structlog's default console format: a service that never configured
logging still writes one parseable, redacted line per event.

The line's fields (:func:`add_standard_fields`) and the JSON renderer live here too, shared by
that default output and by ``configure_logging``.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from prodkit._core.context import get_request_id, get_trace_id, request_id_var, trace_id_var
from prodkit._core.redaction import Redactor, exception_text

_HOSTNAME = socket.gethostname()

# The pid is read once per process (and again in a forked child), not once per line.
_process = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _process.__setitem__(0, os.getpid()))

# ISO 8601 timestamps: the text up to the millisecond changes at most once a millisecond, up
# to the second once a second; only the last three digits are looked up per line (structlog's
# TimeStamper builds a datetime each time). Each cache is one tuple replaced whole, so that a
# thread never pairs one instant's text with another's.
_second: list[tuple[int, str]] = [(-1, "")]
_millisecond: list[tuple[int, str]] = [(-1, "")]
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def iso_timestamp(micros: int) -> str:
    """The ISO 8601 UTC text of ``micros`` microseconds since the epoch (always 6 digits, ``Z``).

    What ``datetime.fromtimestamp(micros / 1e6, timezone.utc).isoformat(timespec="microseconds")``
    writes, with ``Z`` for ``+00:00``, in a fraction of the time (see ``_millisecond``).
    """
    milli = micros // 1000
    cached = _millisecond[0]
    if milli != cached[0]:
        whole = milli // 1000
        second = _second[0]
        if whole != second[0]:
            second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
            _second[0] = second
        cached = (milli, second[1] + _THREE_DIGITS[milli % 1000])
        _millisecond[0] = cached
    return cached[1] + _THREE_DIGITS[micros % 1000] + "Z"


def add_request_context(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """A structlog processor adding ``request_id`` and ``trace_id`` of the current request."""
    if "request_id" not in event_dict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    if "trace_id" not in event_dict:
        trace_id = get_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


def add_standard_fields(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """A structlog processor adding every prodkit line's fields in one step.

    ``logger`` (the name given to ``get_logger``), ``level``, ``timestamp`` (ISO 8601, UTC,
    microseconds), ``pid``, ``hostname`` and, during a request, ``request_id`` and ``trace_id``.
    """
    if "logger" not in event_dict:
        name = getattr(logger, "name", None)
        if name:
            event_dict["logger"] = name
    event_dict["level"] = "error" if method_name == "exception" else method_name
    event_dict["timestamp"] = iso_timestamp(time.time_ns() // 1000)
    # add_request_context inlined: this runs for every line.
    event_dict["pid"] = _process[0]
    event_dict["hostname"] = _HOSTNAME
    # The context's variables read directly (get_request_id() and get_trace_id() are calls).
    if "request_id" not in event_dict:
        request_id = request_id_var.get()
        if request_id is not None:
            event_dict["request_id"] = request_id
    if "trace_id" not in event_dict:
        trace_id = trace_id_var.get()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


def json_default(obj: Any) -> Any:
    """What a JSON line holds for an object JSON cannot hold.

    Its ``__structlog__()`` (as :class:`structlog.processors.JSONRenderer` does); a date or time
    as its ISO 8601 text; a UUID as its text; an enum member as its value; anything else as its
    ``repr()`` (as structlog does). orjson writes UUIDs and enum members that way itself, so a
    line is the same with and without orjson.
    """
    method = getattr(obj, "__structlog__", None)
    if method is not None:
        return method()
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, float):  # a float subclass orjson does not take (numpy's float64)
        return float(obj)
    return repr(obj)


def _finite(value: Any, parents: frozenset[int] = frozenset()) -> Any:
    """``value`` with NaN and the infinities replaced by None (in lists, tuples and dicts)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple) and id(value) not in parents:  # a cycle: json says so
        inner = parents | {id(value)}
        if isinstance(value, dict):
            return {key: _finite(item, inner) for key, item in value.items()}
        return [_finite(item, inner) for item in value]
    return value


def json_dumps_stdlib(obj: Any, *, default: Callable[[Any], Any] = json_default) -> str:
    """One compact JSON text by :func:`json.dumps`; NaN and the infinities as ``null``.

    The standard library would write ``NaN`` and ``Infinity``, which JSON does not have (and
    orjson writes ``null``).
    """
    try:
        return json.dumps(obj, default=default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a float out of JSON's range (or a cycle, which json reports again)
        return json.dumps(_finite(obj), default=default, separators=(",", ":"), allow_nan=False)


try:
    import orjson
except ImportError:  # pragma: no cover - orjson is optional (the ``fast`` extra)
    _orjson_dumps: Any = None
else:
    _orjson_dumps = orjson.dumps
    # Dates and dataclasses go to ``default`` as they do with json.dumps.
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def json_dumps(obj: Any, *, default: Callable[[Any], Any] = json_default) -> str:
    """One compact JSON text: by orjson when installed, else :func:`json_dumps_stdlib`.

    The serializer of :func:`json_renderer`. Whatever orjson refuses (integers beyond 64 bits,
    keys that are not strings, lone surrogates) is written by the standard library; the text
    parses to the same value either way (``tests/_core/test_logs.py`` proves it).
    """
    if _orjson_dumps is not None:
        try:
            return str(_orjson_dumps(obj, default=default, option=_ORJSON_OPTIONS).decode())
        except TypeError:
            pass
    return json_dumps_stdlib(obj, default=default)


def json_renderer() -> Processor:
    """structlog's :class:`~structlog.processors.JSONRenderer` writing with :func:`json_dumps`."""
    return structlog.processors.JSONRenderer(serializer=json_dumps, default=json_default)


#: What prodkit's own lines are redacted with before they leave prodkit.
REDACTOR = Redactor()

#: ``write(event, fields)``: put an event through a chain of processors and write the line.
LineWriter = Callable[[str, dict[str, Any]], None]

#: The levels written while structlog is not configured (``configure_logging``'s default).
_UNCONFIGURED_LEVELS = frozenset({"info", "warning", "error", "critical"})
#: The chain of those lines: the fields of every prodkit line, redaction, one JSON line.
_UNCONFIGURED_CHAIN: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    add_standard_fields,
    REDACTOR,
    json_renderer(),
)
_write_lock = threading.Lock()
_unconfigured_writers: dict[tuple[str, str], LineWriter | None] = {}


class _Named:
    """The logger the processors see: only its name (``add_standard_fields`` reads it)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def unconfigured_writer(name: str, level: str) -> LineWriter | None:
    """How ``get_logger(name)`` writes at ``level`` while structlog is not configured.

    A function ``write(event, fields)`` writing one JSON line on the current standard output,
    with the fields :func:`add_standard_fields` adds and :data:`REDACTOR` applied; ``None`` for
    ``debug``, which is not written. ``fields`` is consumed.
    """
    key = (name, level)
    if key in _unconfigured_writers:
        return _unconfigured_writers[key]
    writer: LineWriter | None = None
    if level in _UNCONFIGURED_LEVELS:
        named = _Named(name)

        def write(event: str, fields: dict[str, Any]) -> None:
            fields["event"] = event
            line: Any = fields
            for processor in _UNCONFIGURED_CHAIN:
                line = processor(named, level, line)
            stream = sys.stdout  # read per line: a test or a daemon may swap it
            if stream is None:  # pythonw, a closed console: nowhere to write
                return
            with _write_lock:
                stream.write(line + "\n")
                stream.flush()

        writer = write
    _unconfigured_writers[key] = writer
    return writer


class SafeLogger:
    """The logger every prodkit concern writes its lines through.

    It takes structlog's calling convention (``logger.warning("event", key=value, ...)``,
    ``exc_info=``, ``logger.exception(...)``) and, before the line reaches any processor:

    * redacts the message and every field with :data:`REDACTOR` (secret keys at any depth, and
      the secrets written out in any text: query parameters, credentials, URL passwords);
    * replaces ``exc_info`` by ``exception``, the traceback as Python prints it (causes, notes
      and groups included, local variables never), redacted: a renderer further on (structlog's
      console renderer with Rich shows every frame's variables) has no exception to expand.

    With ``logger`` given, the line then goes to that logger. Otherwise it goes to
    ``structlog.get_logger(name)`` once structlog is configured, and is written as a JSON line
    on standard output (:func:`unconfigured_writer`) while it is not.

    Arguments:
        name: the logger's name (``prodkit.errors``), the ``logger`` field of its lines.
        logger: a structlog logger to write to instead (a middleware's ``logger=`` option).
    """

    __slots__ = ("_context", "_given", "_logger", "name")

    def __init__(
        self, name: str, logger: Any | None = None, *, context: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self._given = logger is not None
        self._logger: Any = logger if logger is not None else structlog.get_logger(name)
        self._context = context or {}

    def bind(self, **values: Any) -> SafeLogger:
        """A logger whose lines also carry ``values`` (redacted like the rest)."""
        logger = self._logger if self._given else None
        return SafeLogger(self.name, logger, context={**self._context, **values})

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at debug level."""
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at info level."""
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at warning level."""
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at error level (with ``exc_info=``, its traceback as ``exception``)."""
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """Log ``event`` at critical level."""
        self._log("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at error level with the exception being handled as ``exception``."""
        fields.setdefault("exc_info", True)
        self._log("error", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        exc_info = fields.pop("exc_info", None)
        if self._context:
            fields = {**self._context, **fields}
        safe = REDACTOR.redact_fields(fields)
        if exc_info:
            text = exception_text(exc_info)
            if text is not None:
                safe["exception"] = REDACTOR.redact_text(text)
        # An event that is not text (an exception, a dict) is redacted as the text it renders as.
        message = REDACTOR.redact_text(event if isinstance(event, str) else str(event))
        if self._given or structlog.is_configured():
            getattr(self._logger, level)(message, **safe)
            return
        write = unconfigured_writer(self.name, level)
        if write is not None:
            write(message, safe)


def safe_logger(name: str, logger: Any | None = None) -> SafeLogger:
    """The :class:`SafeLogger` a concern logs through: ``logger`` if given, else ``name``'s."""
    return logger if isinstance(logger, SafeLogger) else SafeLogger(name, logger)


__all__ = [
    "REDACTOR",
    "LineWriter",
    "SafeLogger",
    "add_request_context",
    "add_standard_fields",
    "iso_timestamp",
    "json_default",
    "json_dumps",
    "json_dumps_stdlib",
    "json_renderer",
    "safe_logger",
    "unconfigured_writer",
]
