"""Prometheus naming rules and default buckets, shared by the recording and business metrics."""

from __future__ import annotations

import re

from prodkit._core.options import METRIC_NAME

#: Duration buckets in seconds (prometheus-client's defaults, 5 ms to 10 s).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: Request and response size buckets in bytes (64 B to 16 MiB, factor 4).
SIZE_BUCKETS: tuple[float, ...] = tuple(float(64 * 4**i) for i in range(10))

# The published schema of the HTTP metrics: what dashboards, alert rules and the rollout
# controller read. Readers must tolerate labels beyond these (they sum over the ones they do
# not know), so a label can be added without breaking them.
#: The request-duration histogram (its ``_count`` also counts requests and their statuses).
HTTP_REQUEST_DURATION = "http_request_duration_seconds"
#: Its label names, in order.
HTTP_REQUEST_DURATION_LABELS: tuple[str, ...] = ("method", "route", "status_code")
#: The in-flight gauge and its label names.
HTTP_REQUESTS_IN_FLIGHT = "http_requests_in_flight"
HTTP_REQUESTS_IN_FLIGHT_LABELS: tuple[str, ...] = ("method",)
#: Request and response body-size histograms and their label names.
HTTP_REQUEST_SIZE = "http_request_size_bytes"
HTTP_RESPONSE_SIZE = "http_response_size_bytes"
HTTP_SIZE_LABELS: tuple[str, ...] = ("method", "route")
#: Exceptions raised by the app, by type name, and its label names.
HTTP_EXCEPTIONS = "http_exceptions_total"
HTTP_EXCEPTIONS_LABELS: tuple[str, ...] = ("route", "exception_type")

#: A label name (Prometheus data model); ``METRIC_NAME`` is a metric's, from the core.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


__all__ = [
    "DEFAULT_BUCKETS",
    "HTTP_EXCEPTIONS",
    "HTTP_EXCEPTIONS_LABELS",
    "HTTP_REQUESTS_IN_FLIGHT",
    "HTTP_REQUESTS_IN_FLIGHT_LABELS",
    "HTTP_REQUEST_DURATION",
    "HTTP_REQUEST_DURATION_LABELS",
    "HTTP_REQUEST_SIZE",
    "HTTP_RESPONSE_SIZE",
    "HTTP_SIZE_LABELS",
    "LABEL_NAME",
    "METRIC_NAME",
    "SIZE_BUCKETS",
]
