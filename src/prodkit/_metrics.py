"""Prometheus collectors shared by prodkit's parts, created once per registry.

Each prodkit component takes an optional ``registry`` (default: prometheus-client's global
``REGISTRY``) and a ``prefix`` for its own metric names (default ``prodkit_``). Two components
that need the same metric in the same registry get the same collector instead of a
"Duplicated timeseries" error, and tests can pass a fresh ``CollectorRegistry`` per case.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from prodkit.errors import ConfigurationError

#: Prefix of prodkit's own metric names (not of the standard HTTP ones).
DEFAULT_PREFIX = "prodkit_"

M = TypeVar("M", bound=MetricWrapperBase)

_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, MetricWrapperBase]] = (
    weakref.WeakKeyDictionary()
)


def get_metric(
    kind: type[M],
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    **kwargs: object,
) -> M:
    """Return the collector ``name`` of ``kind`` in ``registry``, creating it on first use."""
    target = REGISTRY if registry is None else registry
    with _lock:
        known = _by_registry.setdefault(target, {})
        metric = known.get(name)
        if metric is None:
            metric = kind(name, documentation, labelnames=labelnames, registry=target, **kwargs)  # type: ignore[arg-type]
            known[name] = metric
    if not isinstance(metric, kind):
        raise ConfigurationError(
            f"metric {name!r} is already registered as a {type(metric).__name__}, "
            f"not a {kind.__name__}; choose another prefix"
        )
    return metric


def counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> Counter:
    """Shorthand for :func:`get_metric` with :class:`~prometheus_client.Counter`."""
    return get_metric(Counter, name, documentation, labelnames, registry=registry)


def gauge(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    multiprocess_mode: str = "livesum",
) -> Gauge:
    """Shorthand for :func:`get_metric` with :class:`~prometheus_client.Gauge`."""
    return get_metric(
        Gauge,
        name,
        documentation,
        labelnames,
        registry=registry,
        multiprocess_mode=multiprocess_mode,
    )


def histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    """Shorthand for :func:`get_metric` with :class:`~prometheus_client.Histogram`."""
    return get_metric(
        Histogram, name, documentation, labelnames, registry=registry, buckets=buckets
    )


__all__ = ["DEFAULT_PREFIX", "counter", "gauge", "get_metric", "histogram"]
