"""Reading samples back from a registry, shared by the metrics tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

DURATION = "http_request_duration_seconds"


def series(
    registry: CollectorRegistry, sample_name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``sample_name``, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == sample_name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def count(registry: CollectorRegistry, method: str, route: str, status: str) -> float | None:
    return registry.get_sample_value(
        f"{DURATION}_count", {"method": method, "route": route, "status_code": status}
    )
