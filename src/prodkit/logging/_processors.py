"""The processors every prodkit line goes through, and the JSON renderer at the end of the chain.

structlog's and the standard library's lines share :func:`shared_processors`: context-local
values, :func:`add_standard_fields`, the user's extra processors and the redactor, so that both
kinds of line have the same fields.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from prodkit._core.context import get_request_id, get_trace_id
from prodkit.logging._redaction import Redactor

_HOSTNAME = socket.gethostname()

# The pid is read once per process (and again in a forked child), not once per line.
_process = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _process.__setitem__(0, os.getpid()))

# ISO 8601 timestamps: the text up to the seconds changes once a second; only the
# microseconds are formatted per line (structlog's TimeStamper builds a datetime each time).
# One tuple replaced whole, so that a thread never pairs one second's text with another's.
_second: list[tuple[int, str]] = [(-1, "")]


def _iso_now() -> str:
    micros = time.time_ns() // 1000
    whole = micros // 1_000_000
    cached = _second[0]
    if whole != cached[0]:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _second[0] = cached
    return "%s.%06dZ" % (cached[1], micros % 1_000_000)  # noqa: UP031 - faster than format


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


def add_process_info(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding ``pid`` and ``hostname``."""
    event_dict["pid"] = _process[0]
    event_dict["hostname"] = _HOSTNAME
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
    event_dict["timestamp"] = _iso_now()
    # add_process_info and add_request_context inlined: this runs for every line.
    event_dict["pid"] = _process[0]
    event_dict["hostname"] = _HOSTNAME
    if "request_id" not in event_dict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    if "trace_id" not in event_dict:
        trace_id = get_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


def drop_color_message(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor removing uvicorn's ``color_message``.

    uvicorn attaches a second, ANSI-coloured copy of its message to every record.
    """
    event_dict.pop("color_message", None)
    return event_dict


def only_with_exceptions(renderer: Processor) -> Processor:
    """Run ``renderer`` only on events that carry ``exc_info`` (most lines skip the call)."""

    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        if "exc_info" in event_dict:
            return renderer(logger, method_name, event_dict)
        return event_dict

    return render


def _json_fallback(obj: Any) -> Any:
    # What structlog's JSONRenderer does with objects JSON cannot hold.
    method = getattr(obj, "__structlog__", None)
    return method() if method is not None else repr(obj)


class JSONRenderer:
    """Render an event as one compact JSON line (orjson when installed, else :mod:`json`).

    Objects JSON cannot hold are rendered by their ``__structlog__()`` or ``repr()``, as with
    :class:`structlog.processors.JSONRenderer`.
    """

    def __init__(self) -> None:
        try:
            import orjson
        except ImportError:  # pragma: no cover - orjson is optional
            self._orjson: Any = None
        else:
            self._orjson = orjson.dumps

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        if self._orjson is not None:
            try:
                return str(self._orjson(event_dict, default=_json_fallback).decode())
            except TypeError:  # non-string keys, integers beyond 64 bits: let json decide
                pass
        return json.dumps(event_dict, default=_json_fallback, separators=(",", ":"))


def shared_processors(
    redactor: Redactor | None = None, extra: Sequence[Processor] = ()
) -> list[Processor]:
    """The processors every line goes through before rendering, structlog's and stdlib's alike.

    Context-local values (structlog's own
    :func:`~structlog.contextvars.merge_contextvars`), :func:`add_standard_fields`, the
    ``extra`` processors, then the ``redactor`` last, so that it also sees what the extra
    processors added.
    """
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_standard_fields,
        *extra,
    ]
    if redactor is not None:
        chain.append(redactor)
    return chain


__all__ = [
    "JSONRenderer",
    "add_process_info",
    "add_request_context",
    "add_standard_fields",
    "drop_color_message",
    "only_with_exceptions",
    "shared_processors",
]
