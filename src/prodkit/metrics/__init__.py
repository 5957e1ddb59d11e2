"""Prometheus metrics: recording HTTP requests, serving ``/metrics``, business metrics, multiprocess."""

from __future__ import annotations

from prodkit.metrics._middleware import (
    DEFAULT_BUCKETS,
    SIZE_BUCKETS,
    BusinessMetrics,
    HTTPMetricsMiddleware,
    MetricsApp,
    MetricsEndpointMiddleware,
    business_counter,
    business_gauge,
    business_histogram,
    mark_process_dead,
    remove_dead_process_files,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "SIZE_BUCKETS",
    "BusinessMetrics",
    "HTTPMetricsMiddleware",
    "MetricsApp",
    "MetricsEndpointMiddleware",
    "business_counter",
    "business_gauge",
    "business_histogram",
    "mark_process_dead",
    "remove_dead_process_files",
]
