"""prodkit's collectors: get-or-create, and the lock-free HTTP histogram and gauge."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from prodkit import ConfigurationError
from prodkit._core.collectors import counter, histogram, loop_gauge, loop_histogram
from prodkit.metrics import DEFAULT_BUCKETS, SIZE_BUCKETS

# LoopHistogram and LoopGauge are prodkit's lock-free stand-ins for prometheus-client's
# Histogram and Gauge on the event loop: the same observations must expose the same text, in
# both exposition formats, line for line (prometheus-client's ``_created`` samples aside).

_LABEL_NAMES = st.lists(st.sampled_from(["method", "route", "status_code"]), unique=True)
_LABEL_VALUE = st.text(max_size=6) | st.sampled_from(['a"b', "c\\d", "e\nf", "/items/{id}"])
# Durations are floats; the size histograms observe byte counts, integers.
_VALUES = (
    st.floats()
    | st.integers(-(2**60), 2**60)
    | st.sampled_from([0.0, -0.0, 0.005, 64.0, 1024.0, 0, 1024, 10**6])
)
_BUCKETS = st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6, unique=True).map(sorted) | (
    st.sampled_from([list(DEFAULT_BUCKETS), list(SIZE_BUCKETS)])  # the HTTP metrics' own
)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """Both formats' text without the ``_created`` samples only prometheus-client writes."""
    openmetrics: bytes = openmetrics_latest(registry)  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode() + openmetrics.decode()
    # Split on newlines only: a label value may hold U+0085 and friends.
    return [line for line in text.split("\n") if not _CREATED.match(line)]


_CREATED = re.compile(r"(# [A-Z]+ )?[a-z]+_created[ {]")


@given(
    labelnames=_LABEL_NAMES,
    buckets=_BUCKETS,
    observations=st.lists(st.tuples(st.integers(0, 2), _VALUES), max_size=30),
    series=st.lists(st.lists(_LABEL_VALUE, min_size=3, max_size=3), min_size=1, max_size=3),
)
def test_loop_histogram_exposes_what_a_prometheus_histogram_does(
    labelnames: list[str],
    buckets: list[float],
    observations: list[tuple[int, float]],
    series: list[list[str]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = loop_histogram("h", "help", labelnames, registry=ours, buckets=buckets)
    reference = Histogram("h", "help", labelnames, registry=theirs, buckets=buckets)
    for index, value in observations:
        labels = series[index % len(series)][: len(labelnames)]
        if labelnames:
            loop.labels(*labels).observe(value)
            reference.labels(*labels).observe(value)
        else:
            loop.labels().observe(value)
            reference.observe(value)
    assert _exposition(ours) == _exposition(theirs)
    with pytest.raises(ConfigurationError):
        loop_gauge("h", "help", registry=ours)


@given(
    labelnames=_LABEL_NAMES,
    changes=st.lists(st.tuples(st.integers(0, 2), st.booleans(), _VALUES), max_size=30),
    series=st.lists(st.lists(_LABEL_VALUE, min_size=3, max_size=3), min_size=1, max_size=3),
)
def test_loop_gauge_exposes_what_a_prometheus_gauge_does(
    labelnames: list[str], changes: list[tuple[int, bool, float]], series: list[list[str]]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = loop_gauge("g", "help", labelnames, registry=ours)
    reference = Gauge("g", "help", labelnames, registry=theirs)
    for index, up, amount in changes:
        labels = series[index % len(series)][: len(labelnames)]
        ours_child = loop.labels(*labels)
        theirs_child = reference.labels(*labels) if labelnames else reference
        if up:
            ours_child.inc(amount)
            theirs_child.inc(amount)
        else:
            ours_child.dec(amount)
            theirs_child.dec(amount)
    assert _exposition(ours) == _exposition(theirs)


def test_the_default_amount_is_one_as_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = loop_gauge("g", "help", ["method"], registry=ours)
    reference = Gauge("g", "help", ["method"], registry=theirs)
    for gauge_child in (loop.labels("GET"), reference.labels("GET")):
        gauge_child.inc()
        gauge_child.inc()
        gauge_child.dec()
    assert _exposition(ours) == _exposition(theirs)


@pytest.mark.parametrize(
    ("make", "again"),
    [
        # A second component asking for one name with other label names (say, a tenant label
        # added on one side only) would record into series the first never reads.
        (
            lambda r: counter("c_total", "help", ["route"], registry=r),
            lambda r: counter("c_total", "help", ["route", "tenant"], registry=r),
        ),
        (
            lambda r: histogram("h", "help", ["route"], registry=r, buckets=[0.1, 1.0]),
            lambda r: histogram("h", "help", ["route"], registry=r, buckets=[0.1, 2.0]),
        ),
        (
            lambda r: loop_histogram("lh", "help", ["m"], registry=r, buckets=[0.1, 1.0]),
            lambda r: loop_histogram("lh", "help", ["m", "r"], registry=r, buckets=[0.1, 1.0]),
        ),
        (
            lambda r: loop_gauge("g", "help", ["m"], registry=r),
            lambda r: loop_gauge("g", "help", [], registry=r),
        ),
    ],
)
def test_get_or_create_refuses_another_label_set_or_buckets(make: Any, again: Any) -> None:
    registry = CollectorRegistry()
    make(registry)
    with pytest.raises(ConfigurationError, match="already registered with labels"):
        again(registry)


def test_get_or_create_returns_the_same_collector_for_the_same_shape() -> None:
    registry = CollectorRegistry()
    first = histogram("h", "help", ["route"], registry=registry, buckets=[0.1, 1.0])
    # The same bounds written with the implicit +Inf are the same buckets.
    again = histogram("h", "help", ["route"], registry=registry, buckets=[0.1, 1.0, math.inf])
    assert again is first
    assert counter("c_total", "help", ["a"], registry=registry) is counter(
        "c_total", "help", ["a"], registry=registry
    )
