"""Graceful shutdown and health: per-request overhead of the tracking, and probe answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from benchmarks.bench_core import raw_app, starlette_app
from benchmarks.harness import Case
from prodkit import GracefulShutdownMiddleware, HealthMiddleware
from prodkit.asgi import ASGIApp
from prodkit.lifecycle import ShutdownCoordinator


async def _ping() -> None:
    return None


def _stack(app: ASGIApp) -> ASGIApp:
    registry = CollectorRegistry()
    coordinator = ShutdownCoordinator(registry=registry)
    health = HealthMiddleware(
        GracefulShutdownMiddleware(app, coordinator=coordinator),
        coordinator=coordinator,
        registry=registry,
        key="k" * 24,
    )
    health.add_check("postgres", _ping)
    health.add_check("redis", _ping, critical=False)
    return health


def cases() -> list[Case]:
    """Shutdown tracking + health pass-through on the app's routes, and the probes themselves."""
    return [
        Case("raw: bare", raw_app),
        Case("raw: health + shutdown", lambda: _stack(raw_app()), baseline="raw: bare"),
        Case("starlette: bare", starlette_app),
        Case(
            "starlette: health + shutdown",
            lambda: _stack(starlette_app()),
            baseline="starlette: bare",
        ),
        Case("probe: /livez", lambda: _stack(raw_app()), path="/livez"),
        Case("probe: /readyz (cached checks)", lambda: _stack(raw_app()), path="/readyz"),
        Case(
            "probe: /healthz detailed (cached checks)",
            lambda: _stack(raw_app()),
            path="/healthz",
            headers=[("X-Health-Key", "k" * 24)],
        ),
    ]
