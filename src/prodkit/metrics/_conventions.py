"""Prometheus naming rules and default buckets, shared by the recording and business metrics."""

from __future__ import annotations

import re

from prodkit._core.exceptions import ConfigurationError

#: Duration buckets in seconds (prometheus-client's defaults, 5 ms to 10 s).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: Request and response size buckets in bytes (64 B to 16 MiB, factor 4).
SIZE_BUCKETS: tuple[float, ...] = tuple(float(64 * 4**i) for i in range(10))

# Classic names only: prometheus-client also accepts UTF-8 ones, which PromQL must quote.
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def check_prefix(metric_prefix: str) -> None:
    """Raise :class:`ConfigurationError` unless ``metric_prefix`` can start a metric name."""
    if metric_prefix and not METRIC_NAME.match(metric_prefix):
        raise ConfigurationError(
            f"metric_prefix {metric_prefix!r} is not a valid start of a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
        )


__all__ = ["DEFAULT_BUCKETS", "LABEL_NAME", "METRIC_NAME", "SIZE_BUCKETS", "check_prefix"]
