"""Per-request context (request id, trace id) in contextvars, always reset after the request."""

from __future__ import annotations

from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("prodkit.request_id", default=None)
_trace_id: ContextVar[str | None] = ContextVar("prodkit.trace_id", default=None)
_span_id: ContextVar[str | None] = ContextVar("prodkit.span_id", default=None)


def get_request_id() -> str | None:
    """Return the current request's id (set by :class:`RequestIdMiddleware`), or ``None``."""
    return _request_id.get()


def get_trace_id() -> str | None:
    """Return the W3C trace id of the current request's valid ``traceparent``, or ``None``."""
    return _trace_id.get()


def get_parent_span_id() -> str | None:
    """Return the parent span id of the current request's valid ``traceparent``, or ``None``."""
    return _span_id.get()


__all__ = ["get_parent_span_id", "get_request_id", "get_trace_id"]
