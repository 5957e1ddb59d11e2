"""Business metrics: get-or-create, prefixes, kinds and the names they refuse."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prodkit import ConfigurationError
from prodkit.metrics import (
    BusinessMetrics,
    MetricsApp,
    business_counter,
    business_gauge,
    business_histogram,
)
from tests.conftest import ClientFactory


async def test_business_counter_for_the_example(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    labels = ["status", "idempotency_status", "model_version"]
    created = business_counter("fund_creations_total", "Funds created.", labels, registry=registry)
    again = business_counter("fund_creations_total", "Funds created.", labels, registry=registry)
    assert created is again
    created.labels(status="201", idempotency_status="created", model_version="v3").inc()
    again.labels(status="201", idempotency_status="replayed", model_version="v3").inc()
    text = (await make_client(MetricsApp(registry)).get("/metrics")).text
    samples = {
        (s.labels["idempotency_status"], s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fund_creations_total"
    }
    assert samples == {("created", 1.0), ("replayed", 1.0)}


def test_business_metrics_prefix_kinds_and_errors(registry: CollectorRegistry) -> None:
    metrics = BusinessMetrics(registry=registry, metric_prefix="funds_")
    metrics.histogram("projection_seconds", "Projection time.", buckets=[0.1, 1.0]).observe(0.5)
    metrics.gauge("open_rounds", "Rounds open.", ["stage"]).labels("seed").set(3)
    business_histogram("h_seconds", "h", registry=registry).observe(1)
    business_gauge("g_value", "g", registry=registry).set(2)
    assert registry.get_sample_value("funds_projection_seconds_bucket", {"le": "1.0"}) == 1
    assert registry.get_sample_value("funds_open_rounds", {"stage": "seed"}) == 3
    assert registry.get_sample_value("g_value") == 2
    with pytest.raises(ConfigurationError, match="not a Counter"):
        metrics.counter("open_rounds", "clash")
    with pytest.raises(ConfigurationError, match="bad-name"):
        metrics.counter("bad-name", "invalid")
    with pytest.raises(ConfigurationError, match="list of names"):
        metrics.counter("one_total", "x", "status")
    with pytest.raises(ConfigurationError, match="prefix"):
        BusinessMetrics(metric_prefix="bad prefix")
