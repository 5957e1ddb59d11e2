"""Prometheus collectors shared by prodkit's parts, created once per registry.

Each prodkit component takes an optional ``registry`` (default: prometheus-client's global
``REGISTRY``) and a ``metric_prefix`` for its own metric names (default ``prodkit_``). Two components
that need the same metric in the same registry get the same collector instead of a
"Duplicated timeseries" error, and tests can pass a fresh ``CollectorRegistry`` per case.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from prodkit._core.exceptions import ConfigurationError

#: Prefix of prodkit's own metric names (not of the standard HTTP ones).
DEFAULT_PREFIX = "prodkit_"

M = TypeVar("M", bound=MetricWrapperBase)

#: The variable that puts prometheus-client in multiprocess mode (its documented switch).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client still honours the deprecated lower-case spelling, so it counts here too.
_LEGACY_MULTIPROC_ENV = "prometheus_multiproc_dir"
# prometheus-client picks its value class once, when first imported (normally by the import
# above): reading the environment here gives the same answer, and both ignore later changes.
_MULTIPROCESS = MULTIPROC_ENV in os.environ or _LEGACY_MULTIPROC_ENV in os.environ

_lock = threading.Lock()
# Per registry: name -> (collector, the label names and buckets it was made with).
_by_registry: weakref.WeakKeyDictionary[
    CollectorRegistry, dict[str, tuple[object, tuple[object, ...]]]
] = weakref.WeakKeyDictionary()


def _shape(labelnames: Sequence[str], buckets: Sequence[float] | None = None) -> tuple[object, ...]:
    # What a caller asks of a collector beyond its name: its label names and, for a histogram,
    # its bucket bounds (``+Inf`` added, as both histogram kinds do).
    if buckets is None:
        return (tuple(labelnames),)
    bounds = [float(b) for b in buckets]
    if bounds and bounds[-1] != math.inf:
        bounds.append(math.inf)
    return (tuple(labelnames), tuple(bounds))


def _get_or_create(
    kind: type[Any],
    name: str,
    registry: CollectorRegistry | None,
    shape: tuple[object, ...],
    create: Callable[[CollectorRegistry], object],
) -> Any:
    """The collector ``name`` in ``registry``, made (and registered) by ``create`` first.

    A second caller gets the same collector only if it asks for the same kind, label names and
    buckets: otherwise its observations would land in series it does not expect (or fail on
    the first ``labels()`` call, far from the cause), so it is refused here with a
    :class:`ConfigurationError`.
    """
    target = REGISTRY if registry is None else registry
    with _lock:
        known = _by_registry.setdefault(target, {})
        found = known.get(name)
        if found is None:
            found = known[name] = (create(target), shape)
    metric, registered_shape = found
    if not isinstance(metric, kind):
        raise ConfigurationError(
            f"metric {name!r} is already registered as a {type(metric).__name__}, "
            f"not a {kind.__name__}; choose another prefix"
        )
    if registered_shape != shape:
        raise ConfigurationError(
            f"metric {name!r} is already registered with "
            f"{_describe(registered_shape)}, not {_describe(shape)}: use the same ones, another "
            "metric_prefix, or a registry of its own"
        )
    return metric


def _describe(shape: tuple[object, ...]) -> str:
    described = f"labels {shape[0]}"
    return described if len(shape) == 1 else f"{described}, buckets {shape[1]}"


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
    buckets = kwargs.get("buckets")
    return _get_or_create(  # type: ignore[no-any-return]
        kind,
        name,
        registry,
        _shape(labelnames, buckets if isinstance(buckets, Sequence) else None),
        lambda target: kind(name, documentation, labelnames=labelnames, registry=target, **kwargs),  # type: ignore[arg-type]
    )


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


class LoopHistogram:
    """A labelled histogram kept in plain lists, for hot paths on one event loop.

    prometheus-client's histogram takes a lock for its sum and for its bucket on every
    observation, and validates the child first; at several observations per request that is
    a measurable share of a middleware's cost. Here an observation is a bisection and two list
    updates. Only the event loop's thread records (through :meth:`labels` children); a scrape from another thread (prometheus's
    own HTTP server) copies each series, which CPython does atomically, so it never sees a
    torn list: at worst an observation's count without its sum, as with prometheus-client.
    It is exposed as an ordinary histogram (``_bucket``, ``_count``, ``_sum``), without
    ``_created`` samples. It does not work across processes: in prometheus-client's
    multiprocess mode use :class:`~prometheus_client.Histogram` (see :func:`loop_metrics_ok`).

    Arguments:
        name, documentation, labelnames: as for :class:`~prometheus_client.Histogram`.
        buckets: increasing upper bounds; ``+Inf`` is added.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(bounds):
            raise ConfigurationError(f"{name}: buckets must be a non-empty increasing list")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self._negative = bounds[0] < 0
        # Per label tuple: one count per bucket (not cumulative), then the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.labelnames:  # exposed from the start, as prometheus-client's are
            _new_series(self, (), len(self.bounds) + 1)

    def labels(self, *values: str) -> LoopHistogramChild:
        """The child of these label values (created empty), as prometheus-client's ``labels``."""
        found = self._series.get(values) or _new_series(self, values, len(self.bounds) + 1)
        return LoopHistogramChild(self.bounds, found)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self._series.items()):
            counts = list(series)
            total = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, counts, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric(list(labels), buckets, counts[-1])
            if self._negative:
                # add_metric leaves out ``_count`` with ``_sum`` below a negative bucket;
                # prometheus-client's Histogram leaves out only ``_sum``.
                named = dict(zip(self.labelnames, labels, strict=True))
                family.add_sample(f"{self.name}_count", named, total)
        return [family]


class LoopGauge:
    """A labelled gauge kept in plain lists, the companion of :class:`LoopHistogram`.

    Arguments:
        name, documentation, labelnames: as for :class:`~prometheus_client.Gauge`.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.labelnames:  # exposed from the start, as prometheus-client's are
            _new_series(self, (), 1)

    def labels(self, *values: str) -> LoopGaugeChild:
        """The child of these label values (created at 0), as prometheus-client's ``labels``."""
        return LoopGaugeChild(self._series.get(values) or _new_series(self, values, 1))

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, cell in list(self._series.items()):
            family.add_metric(list(labels), cell[0])
        return [family]


class LoopHistogramChild:
    """One series of a :class:`LoopHistogram`."""

    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: tuple[float, ...], series: list[float]) -> None:
        self._bounds = bounds
        self._series = series

    def observe(self, value: float) -> None:
        """Record ``value``."""
        series = self._series
        if value == value:  # NaN is in no bucket, only in the sum (as with prometheus-client)
            series[bisect_left(self._bounds, value)] += 1
        series[-1] += value


class LoopGaugeChild:
    """One series of a :class:`LoopGauge`."""

    __slots__ = ("_cell",)

    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        self._cell[0] += amount

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``."""
        self._cell[0] -= amount


def _new_series(
    metric: LoopHistogram | LoopGauge, values: tuple[str, ...], size: int
) -> list[float]:
    if len(values) != len(metric.labelnames):
        raise ValueError(f"{metric.name}: expected labels {metric.labelnames}")
    series = metric._series[values] = [0.0] * size
    return series


def loop_metrics_ok() -> bool:
    """Whether :class:`LoopHistogram` can be used: prometheus-client is not in multiprocess mode.

    That mode is on when ``PROMETHEUS_MULTIPROC_DIR`` was set as the process imported
    prometheus-client (the test prometheus-client documents and applies itself); only its own
    metrics then write the files that a scrape sums over the workers.
    """
    return not _MULTIPROCESS


def _registered(metric: LoopHistogram | LoopGauge, target: CollectorRegistry) -> object:
    target.register(metric)  # a Collector by its collect() and describe()
    return metric


def loop_histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> LoopHistogram:
    """:func:`histogram`'s counterpart for a :class:`LoopHistogram`."""
    return _get_or_create(  # type: ignore[no-any-return]
        LoopHistogram,
        name,
        registry,
        _shape(labelnames, buckets),
        lambda target: _registered(LoopHistogram(name, documentation, labelnames, buckets), target),
    )


def loop_gauge(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> LoopGauge:
    """:func:`gauge`'s counterpart for a :class:`LoopGauge`."""
    return _get_or_create(  # type: ignore[no-any-return]
        LoopGauge,
        name,
        registry,
        _shape(labelnames),
        lambda target: _registered(LoopGauge(name, documentation, labelnames), target),
    )


__all__ = [
    "DEFAULT_PREFIX",
    "MULTIPROC_ENV",
    "LoopGauge",
    "LoopHistogram",
    "counter",
    "gauge",
    "get_metric",
    "histogram",
    "loop_gauge",
    "loop_histogram",
    "loop_metrics_ok",
]
