"""Read a deployment's request histogram from a Prometheus server instead of its ``/metrics``.

The rollout controller judges windows of the ``http_request_duration_seconds`` histogram. By
default it scrapes each deployment's own page, which must show every request of the deployment
(one process, or one multiprocess page per host). A deployment of several pods or hosts has no
such page, but a Prometheus server that scrapes them all has the sum:
:class:`PrometheusReader` asks its HTTP API for it, with the standard library only, and answers
the same :class:`~prodkit.rollout.Scrape` the one page would give — the same
:class:`~prodkit.rollout.WindowStats` once two of them are subtracted.

Each read is a few instant queries at one evaluation time:

* ``up{<selector>}``: every target the selector names must be up (a target Prometheus cannot
  scrape is missing from the sums, as a page that cannot be fetched is a failed scrape);
* ``sum by (method, route, status_code, le) (http_request_duration_seconds_bucket{<selector>})``
  and the same over ``_count``: the histogram, summed over the targets and over every label the
  rollout does not know, keyed like :func:`~prodkit.rollout.parse_scrape` keys a page.

Prometheus answers with what it scraped last: a read is up to one scrape interval old, so keep
the controller's ``check_interval`` above the scrape interval. A process restarted within a
window shows as fewer requests in that window (the sum shrinks by the restarted counters), not
as a reset.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from prodkit._core.exceptions import ConfigurationError
from prodkit.metrics import HTTP_REQUEST_DURATION_LABELS
from prodkit.rollout.controller import Target
from prodkit.rollout.metrics import DEFAULT_HISTOGRAM, Scrape, ScrapeError, Series, SeriesKey

# Label matchers, not a whole selector: `job="funds", track=~"canary|canary-2"`.
_MATCHER = r'[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"'
_MATCHERS = re.compile(rf"\s*{_MATCHER}(?:\s*,\s*{_MATCHER})*\s*,?\s*")
_METRIC = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*\Z")


def _check_selector(name: str, selector: str) -> str:
    """``selector`` without its braces, once it is a list of label matchers."""
    inner = selector.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    if not _MATCHERS.fullmatch(inner):
        raise ConfigurationError(
            f"the selector of {name!r} must be PromQL label matchers such as "
            f'job="funds",track="canary"; got {selector!r}'
        )
    return inner.strip().rstrip(",").strip()


class PrometheusReader:
    """Read each rollout target's request histogram from a Prometheus server's HTTP API.

    Pass it to :class:`~prodkit.rollout.RolloutController` as ``metrics=``; the targets' own
    ``metrics_url`` is then not used (their ``ready_url`` still is).

    Arguments:
        url: the Prometheus server's base URL, e.g. ``http://prometheus:9090`` (the API is
            under ``/api/v1``).
        selectors: label matchers per target name, e.g. ``{"baseline": 'job="funds",
            track="stable"', "canary": 'job="funds",track="canary"'}``, with or without braces.
            Each must pick every target (pod, host) of that deployment and nothing else.
        histogram: the request-duration histogram (default :data:`DEFAULT_HISTOGRAM`).
        timeout: seconds for each HTTP request.
        headers: extra request headers, e.g. ``{"Authorization": "Bearer …"}``.

    Raises :class:`~prodkit.ConfigurationError` for a selector that is not label matchers or
    a histogram name that is not a metric name. :meth:`read` raises
    :class:`~prodkit.rollout.ScrapeError` when Prometheus cannot be asked, answers an error,
    names no target for the selector, or one of its targets is down.
    """

    def __init__(
        self,
        url: str,
        selectors: Mapping[str, str],
        *,
        histogram: str = DEFAULT_HISTOGRAM,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the Prometheus URL must be http(s)://host:port, got {url!r}")
        if not _METRIC.match(histogram):
            raise ConfigurationError(f"{histogram!r} is not a Prometheus metric name")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        self.url = url.rstrip("/")
        self.selectors = {name: _check_selector(name, value) for name, value in selectors.items()}
        self.histogram = histogram
        self.timeout = timeout
        self.headers = dict(headers or {})

    def __call__(self, target: Target) -> Scrape:
        """Same as :meth:`read` (a reader is a ``Target -> Scrape`` callable)."""
        return self.read(target)

    def read(self, target: Target) -> Scrape:
        """The histogram of every target ``selectors[target.name]`` picks, summed, as of now."""
        selector = self.selectors.get(target.name)
        if selector is None:
            raise ScrapeError(f"no Prometheus selector for the {target.name!r} target")
        up = self._query(f"up{{{selector}}}")
        if not up:
            raise ScrapeError(f"Prometheus has no target for {{{selector}}}")
        down = sorted(s["metric"].get("instance", "?") for s in up if float(s["value"][1]) != 1)
        if down:
            raise ScrapeError(f"Prometheus cannot scrape {', '.join(down)} of {{{selector}}}")
        at = str(up[0]["value"][0])  # one evaluation time for every query of the read
        by = ", ".join(HTTP_REQUEST_DURATION_LABELS)
        counts = self._query(f"sum by ({by}) ({self.histogram}_count{{{selector}}})", at)
        buckets = self._query(f"sum by ({by}, le) ({self.histogram}_bucket{{{selector}}})", at)
        series: dict[SeriesKey, dict[float, float]] = {}
        totals: dict[SeriesKey, float] = {}
        for sample in counts:
            totals[_key(sample)] = float(sample["value"][1])
        for sample in buckets:
            le = float(sample["metric"].get("le", "+Inf"))
            series.setdefault(_key(sample), {})[le] = float(sample["value"][1])
        return Scrape(
            {
                key: Series(
                    count=totals.get(key, series.get(key, {}).get(float("inf"), 0.0)),
                    buckets=series.get(key, {}),
                )
                for key in set(totals) | set(series)
            }
        )

    def _query(self, expr: str, at: str | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": at} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "application/json", **self.headers}
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the operator's URL
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()  # the API explains its 4xx and 5xx in JSON
        except (OSError, ValueError) as exc:
            raise ScrapeError(f"Prometheus at {self.url} cannot be asked: {exc}") from exc
        try:
            answer = json.loads(body)
            if answer.get("status") != "success":
                raise ScrapeError(
                    f"Prometheus answered {answer.get('errorType', 'an error')}: "
                    f"{answer.get('error', '')} (query {expr!r})"
                )
            result: list[dict[str, Any]] = answer["data"]["result"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ScrapeError(f"Prometheus at {self.url} answered no query result: {exc}") from exc
        return result


def _key(sample: Mapping[str, Any]) -> SeriesKey:
    labels = sample["metric"]
    return tuple(str(labels.get(name, "")) for name in HTTP_REQUEST_DURATION_LABELS)


__all__ = ["PrometheusReader"]
