"""Per-request context (request id, trace id) in contextvars, always reset after the request."""

from __future__ import annotations

from contextvars import ContextVar

#: Set by the request-id middleware for the duration of a request, and reset after it.
request_id_var: ContextVar[str | None] = ContextVar("prodkit.request_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("prodkit.trace_id", default=None)
span_id_var: ContextVar[str | None] = ContextVar("prodkit.span_id", default=None)


def get_request_id() -> str | None:
    """Return the current request's id (set by :class:`~prodkit.RequestIdMiddleware`), or ``None``."""
    return request_id_var.get()


def get_trace_id() -> str | None:
    """Return the W3C trace id of the current request's valid ``traceparent``, or ``None``."""
    return trace_id_var.get()


def get_parent_span_id() -> str | None:
    """Return the parent span id of the current request's valid ``traceparent``, or ``None``."""
    return span_id_var.get()


__all__ = [
    "get_parent_span_id",
    "get_request_id",
    "get_trace_id",
    "request_id_var",
    "span_id_var",
    "trace_id_var",
]
