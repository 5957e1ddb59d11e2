"""prodkit's collectors: get-or-create, and the lock-free HTTP histogram and gauge."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prodkit import ConfigurationError
from prodkit._core.collectors import counter, histogram, loop_gauge, loop_histogram


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(
    values=st.lists(
        st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.sampled_from([0.005, 64.0]),
        max_size=40,
    ),
    labels=st.sampled_from([("GET", "/a"), ("POST", "/b")]),
)
def test_loop_histogram_exposes_what_a_prometheus_histogram_does(
    values: list[float], labels: tuple[str, str]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = [0.005, 0.5, 64.0, 1024.0]
    loop = loop_histogram("h", "help", ["m", "r"], registry=ours, buckets=buckets)
    reference = Histogram("h", "help", ["m", "r"], registry=theirs, buckets=buckets)
    for value in values:
        loop.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        text = generate_latest(registry).decode()
        return [
            (sample.name, sample.labels, round(sample.value, 6))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.name.endswith("_created")
        ]

    assert samples(ours) == samples(theirs)
    with pytest.raises(ConfigurationError):
        loop_gauge("h", "help", registry=ours)


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
