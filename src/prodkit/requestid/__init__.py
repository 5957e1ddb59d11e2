"""Request ids and W3C trace context: ``RequestIdMiddleware`` and the context getters."""

from __future__ import annotations

from prodkit._core.context import get_parent_span_id, get_request_id, get_trace_id
from prodkit.requestid._middleware import (
    RequestIdKeywords,
    RequestIdMiddleware,
    RequestIdOptions,
    generate_request_id,
    is_valid_request_id,
    parse_traceparent,
)

__all__ = [
    "RequestIdKeywords",
    "RequestIdMiddleware",
    "RequestIdOptions",
    "generate_request_id",
    "get_parent_span_id",
    "get_request_id",
    "get_trace_id",
    "is_valid_request_id",
    "parse_traceparent",
]
