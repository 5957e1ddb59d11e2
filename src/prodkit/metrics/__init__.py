"""Prometheus metrics: recording HTTP requests, serving ``/metrics``, business metrics, multiprocess."""

from __future__ import annotations

from prodkit.metrics._business import (
    BusinessMetrics,
    business_counter,
    business_gauge,
    business_histogram,
)
from prodkit.metrics._conventions import (
    DEFAULT_BUCKETS,
    HTTP_REQUEST_DURATION,
    HTTP_REQUEST_DURATION_LABELS,
    SIZE_BUCKETS,
)
from prodkit.metrics._endpoint import (
    MetricsApp,
    MetricsEndpointKeywords,
    MetricsEndpointMiddleware,
    MetricsEndpointOptions,
)
from prodkit.metrics._multiprocess import mark_process_dead, remove_dead_process_files
from prodkit.metrics._recording import (
    HTTPMetricsKeywords,
    HTTPMetricsMiddleware,
    HTTPMetricsOptions,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "HTTP_REQUEST_DURATION",
    "HTTP_REQUEST_DURATION_LABELS",
    "SIZE_BUCKETS",
    "BusinessMetrics",
    "HTTPMetricsKeywords",
    "HTTPMetricsMiddleware",
    "HTTPMetricsOptions",
    "MetricsApp",
    "MetricsEndpointKeywords",
    "MetricsEndpointMiddleware",
    "MetricsEndpointOptions",
    "business_counter",
    "business_gauge",
    "business_histogram",
    "mark_process_dead",
    "remove_dead_process_files",
]
