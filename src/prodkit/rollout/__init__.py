"""Health-based progressive rollout: shift traffic to a canary while its metrics stay healthy.

See :mod:`prodkit.rollout.controller` for the procedure, :mod:`prodkit.rollout.routers` for the
traffic routers (HAProxy, any command), :mod:`prodkit.rollout.prometheus` for reading the
metrics from a Prometheus server and ``prodkit rollout --help`` for the command line.
"""

from __future__ import annotations

from prodkit.rollout.controller import (
    EXIT_STATUS,
    DeploymentRecord,
    MetricsReader,
    RolloutCancelled,
    RolloutController,
    RolloutPolicy,
    Target,
    Verdict,
    judge,
    read_records,
)
from prodkit.rollout.metrics import (
    Scrape,
    ScrapeError,
    WindowStats,
    histogram_quantile,
    parse_scrape,
    window_stats,
)
from prodkit.rollout.prometheus import PrometheusReader
from prodkit.rollout.routers import CommandRouter, HAProxyRouter, RouterError, TrafficRouter

__all__ = [
    "EXIT_STATUS",
    "CommandRouter",
    "DeploymentRecord",
    "HAProxyRouter",
    "MetricsReader",
    "PrometheusReader",
    "RolloutCancelled",
    "RolloutController",
    "RolloutPolicy",
    "RouterError",
    "Scrape",
    "ScrapeError",
    "Target",
    "TrafficRouter",
    "Verdict",
    "WindowStats",
    "histogram_quantile",
    "judge",
    "parse_scrape",
    "read_records",
    "window_stats",
]
