"""Read a service's request histogram from its ``/metrics`` page and judge a time window of it.

The rollout controller scrapes the baseline and the canary at the start of a bake window and
again during it, and works from the *differences* between two scrapes (counters only grow, so
the difference is what happened in the window). Requests are counted from the
``http_request_duration_seconds{method,route,status_code}`` histogram that prodkit's metrics
middleware exports: its ``_count`` gives requests and 5xx responses, its ``_bucket`` series give
the latency distribution, from which a quantile is estimated the way PromQL's
``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from prodkit._core.exceptions import ProdkitError
from prodkit.metrics import HTTP_REQUEST_DURATION, HTTP_REQUEST_DURATION_LABELS

#: The request histogram the rollout reads (published by prodkit's metrics concern).
DEFAULT_HISTOGRAM = HTTP_REQUEST_DURATION
#: Routes that are not user traffic: probes and the scrape itself are left out of the verdict.
DEFAULT_EXCLUDED_ROUTES = ("/metrics", "/livez", "/readyz", "/healthz")


class ScrapeError(ProdkitError):
    """A ``/metrics`` page could not be fetched or parsed."""


@dataclass(frozen=True)
class Series:
    """One labelled series of the request histogram: its request count and cumulative buckets."""

    count: float = 0.0
    buckets: Mapping[float, float] = field(default_factory=dict)


#: ``(method, route, status_code)`` -> series (the histogram's published label names, in order).
SeriesKey = tuple[str, ...]


@dataclass(frozen=True)
class Scrape:
    """The request histogram of one target at one moment."""

    series: Mapping[SeriesKey, Series]

    def delta(self, earlier: Scrape) -> Scrape:
        """What happened between ``earlier`` and this scrape, series by series.

        A series that shrank belongs to a restarted process; as PromQL's ``rate`` does, its
        whole current value counts as the increase.
        """
        out: dict[SeriesKey, Series] = {}
        for key, now in self.series.items():
            before = earlier.series.get(key)
            if before is None or now.count < before.count:
                out[key] = now
                continue
            out[key] = Series(
                count=now.count - before.count,
                buckets={
                    le: value - before.buckets.get(le, 0.0) for le, value in now.buckets.items()
                },
            )
        return Scrape(out)


def parse_scrape(text: str, histogram: str = DEFAULT_HISTOGRAM) -> Scrape:
    """Parse a Prometheus text exposition and keep the series of ``histogram``.

    Series are keyed by the published labels (``method``, ``route``, ``status_code``); series
    that differ only in labels the rollout does not know (a tenant, a region) are summed, as
    ``sum by (method, route, status_code, le)`` would, so a label added to the metrics never
    changes the numbers a decision is made on.

    Raises :class:`ScrapeError` when the text is not valid exposition format. A page without
    the histogram parses to an empty scrape (a process that has served nothing yet).
    """
    counts: dict[SeriesKey, float] = {}
    buckets: dict[SeriesKey, dict[float, float]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ScrapeError(f"not a Prometheus text exposition: {exc}") from exc
    for family in families:
        if family.name != histogram:
            continue
        for sample in family.samples:
            labels = sample.labels
            key = tuple(labels.get(name, "") for name in HTTP_REQUEST_DURATION_LABELS)
            if sample.name == f"{histogram}_count":
                counts[key] = counts.get(key, 0.0) + float(sample.value)
            elif sample.name == f"{histogram}_bucket":
                series = buckets.setdefault(key, {})
                le = float(labels["le"])
                series[le] = series.get(le, 0.0) + float(sample.value)
    keys = set(counts) | set(buckets)
    return Scrape(
        {
            key: Series(
                count=counts.get(key, buckets.get(key, {}).get(math.inf, 0.0)),
                buckets=buckets.get(key, {}),
            )
            for key in keys
        }
    )


def fetch_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` with the standard library; return the status and the body as text.

    An HTTP error status is returned, not raised; a connection failure raises
    :class:`ScrapeError`.
    """
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})  # noqa: S310 - the URL is the operator's own
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        raise ScrapeError(f"GET {url} failed: {exc}") from exc


def scrape(url: str, histogram: str = DEFAULT_HISTOGRAM, timeout: float = 5.0) -> Scrape:
    """Fetch ``url`` (a ``/metrics`` page) and parse it with :func:`parse_scrape`."""
    status, text = fetch_text(url, timeout)
    if status != 200:
        raise ScrapeError(f"GET {url} answered {status}")
    return parse_scrape(text, histogram)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Estimate the ``q``-quantile from cumulative bucket counts, as PromQL does.

    ``buckets`` maps each upper bound ``le`` (``math.inf`` included) to the number of
    observations at most that large. The quantile is interpolated linearly inside the bucket
    where the rank falls; a rank in the ``+Inf`` bucket answers the highest finite bound. Returns
    ``None`` when there are no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    # A histogram read from two scrapes can be momentarily non-monotonic; PromQL fixes that up.
    cumulative: list[float] = []
    for le in bounds:
        cumulative.append(max(buckets[le], cumulative[-1] if cumulative else 0.0))
    total = cumulative[-1]
    if total <= 0:
        return None
    if len(bounds) < 2:
        return None
    rank = q * total
    index = next(i for i, value in enumerate(cumulative) if value >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    lower = bounds[index - 1] if index > 0 else 0.0
    below = cumulative[index - 1] if index > 0 else 0.0
    if index == 0 and upper <= 0:
        return upper
    in_bucket = cumulative[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


@dataclass(frozen=True)
class WindowStats:
    """Requests, 5xx errors and a latency quantile of one target over one window."""

    requests: float
    errors: float
    latency_quantile: float | None

    @property
    def error_ratio(self) -> float | None:
        """5xx responses per request, or ``None`` without requests."""
        return self.errors / self.requests if self.requests > 0 else None

    def as_dict(self) -> dict[str, float | None]:
        """A JSON-ready form (for the deployment record)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_ratio": self.error_ratio,
            "latency_quantile_seconds": self.latency_quantile,
        }


def window_stats(
    window: Scrape,
    *,
    quantile: float = 0.99,
    excluded_routes: Iterable[str] = DEFAULT_EXCLUDED_ROUTES,
) -> WindowStats:
    """Sum a window (a :meth:`Scrape.delta`) over all its series except ``excluded_routes``.

    Errors are responses with a 5xx status code; buckets are summed by bound, like
    ``sum by (le) (...)``, before the quantile is estimated.
    """
    excluded = set(excluded_routes)
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for (_method, route, status), series in window.series.items():
        if route in excluded:
            continue
        requests += series.count
        if status.startswith("5"):
            errors += series.count
        for le, value in series.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + value
    return WindowStats(requests, errors, histogram_quantile(quantile, buckets))


__all__ = [
    "DEFAULT_EXCLUDED_ROUTES",
    "DEFAULT_HISTOGRAM",
    "Scrape",
    "ScrapeError",
    "Series",
    "WindowStats",
    "fetch_text",
    "histogram_quantile",
    "parse_scrape",
    "scrape",
    "window_stats",
]
