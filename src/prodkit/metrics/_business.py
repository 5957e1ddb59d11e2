"""Application (business) metrics: get-or-create counters, histograms and gauges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prodkit._core import options as valid
from prodkit._core.collectors import M, get_metric
from prodkit._core.exceptions import ConfigurationError
from prodkit.metrics._conventions import DEFAULT_BUCKETS, LABEL_NAME, METRIC_NAME


class BusinessMetrics:
    """Get-or-create application metrics in one registry, under one prefix.

    Creating the same metric twice (a module imported again, two app instances in tests) returns
    the existing collector instead of failing with "Duplicated timeseries". Works unchanged in
    multiprocess mode (gauges default to ``livesum``, the sum over live workers).

    Example::

        from prometheus_client import CollectorRegistry

        from prodkit.metrics import BusinessMetrics

        registry = CollectorRegistry()  # or leave it out: prometheus-client's global one
        metrics = BusinessMetrics(registry=registry)
        fund_creations = metrics.counter(
            "fund_creations_total", "Funds created.", ["status", "model_version"]
        )
        fund_creations.labels(status="201", model_version="v3").inc()
        # Asked for again (a module imported twice, a second app in tests): the same counter.
        assert metrics.counter(
            "fund_creations_total", "Funds created.", ["status", "model_version"]
        ) is fund_creations
        labels = {"status": "201", "model_version": "v3"}
        assert registry.get_sample_value("fund_creations_total", labels) == 1

    Arguments:
        registry: where metrics are registered (default: prometheus-client's global
            ``REGISTRY``).
        metric_prefix: put in front of every name (default ``""``: none).
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, metric_prefix: str = ""
    ) -> None:
        valid.metric_prefix("metric_prefix", metric_prefix)
        self.registry = registry
        self.metric_prefix = metric_prefix

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """Return the counter ``metric_prefix + name`` (``_total`` is added in the exposition if missing)."""
        return self._get(Counter, name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Return the histogram ``metric_prefix + name``."""
        return self._get(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        multiprocess_mode: str = "livesum",
    ) -> Gauge:
        """Return the gauge ``metric_prefix + name`` (``multiprocess_mode`` says how workers combine)."""
        return self._get(Gauge, name, documentation, labels, multiprocess_mode=multiprocess_mode)

    def _get(
        self, kind: type[M], name: str, documentation: str, labels: Sequence[str], **extra: Any
    ) -> M:
        if isinstance(labels, str):
            raise ConfigurationError(f"{name}: labels take a list of names, not one string")
        if not METRIC_NAME.match(self.metric_prefix + name):
            raise ConfigurationError(
                f"metric name {self.metric_prefix + name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        for label in labels:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ConfigurationError(
                    f"{name}: label {label!r} must match [a-zA-Z_][a-zA-Z0-9_]* "
                    "and not start with '__'"
                )
        try:
            return get_metric(
                kind,
                self.metric_prefix + name,
                documentation,
                labels,
                registry=self.registry,
                **extra,
            )
        except ValueError as exc:
            raise ConfigurationError(f"metric {self.metric_prefix + name!r}: {exc}") from exc


def business_counter(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
) -> Counter:
    """Return (creating once) an application counter; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).counter(
        name, documentation, labels
    )


def business_histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> Histogram:
    """Return (creating once) an application histogram; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).histogram(
        name, documentation, labels, buckets=buckets
    )


def business_gauge(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
    multiprocess_mode: str = "livesum",
) -> Gauge:
    """Return (creating once) an application gauge; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).gauge(
        name, documentation, labels, multiprocess_mode=multiprocess_mode
    )


__all__ = ["BusinessMetrics", "business_counter", "business_gauge", "business_histogram"]
