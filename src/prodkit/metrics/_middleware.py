"""The metrics concern's old single module, kept only while importers outside it move.

``prodkit.stack``, ``benchmarks/bench_observability.py`` and ``tests/logging/test_access.py``
still import from here; each should import from :mod:`prodkit.metrics` instead, and then this
module goes. New code: :mod:`prodkit.metrics` (the implementation is in ``_recording``,
``_endpoint``, ``_business`` and ``_multiprocess``).
"""

from __future__ import annotations

from prodkit.metrics._business import (
    BusinessMetrics,
    business_counter,
    business_gauge,
    business_histogram,
)
from prodkit.metrics._conventions import DEFAULT_BUCKETS, SIZE_BUCKETS
from prodkit.metrics._endpoint import (
    METHOD_NOT_ALLOWED,
    METRICS_FORBIDDEN,
    METRICS_UNAUTHORIZED,
    MetricsApp,
    MetricsEndpointMiddleware,
)
from prodkit.metrics._multiprocess import mark_process_dead, remove_dead_process_files
from prodkit.metrics._recording import OTHER_EXCEPTION, HTTPMetricsMiddleware

__all__ = [
    "DEFAULT_BUCKETS",
    "METHOD_NOT_ALLOWED",
    "METRICS_FORBIDDEN",
    "METRICS_UNAUTHORIZED",
    "OTHER_EXCEPTION",
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
