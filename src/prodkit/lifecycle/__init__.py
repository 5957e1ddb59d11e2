"""The process's life: lifespan start-up and clean-up, graceful shutdown with a drain."""

from __future__ import annotations

from prodkit.lifecycle._coordinator import InFlight, ShutdownCoordinator, ShutdownState
from prodkit.lifecycle._drain import (
    SHUTTING_DOWN,
    GracefulShutdownKeywords,
    GracefulShutdownMiddleware,
    GracefulShutdownOptions,
)
from prodkit.lifecycle._lifespan import LifespanKeywords, LifespanMiddleware, LifespanOptions

__all__ = [
    "SHUTTING_DOWN",
    "GracefulShutdownKeywords",
    "GracefulShutdownMiddleware",
    "GracefulShutdownOptions",
    "InFlight",
    "LifespanKeywords",
    "LifespanMiddleware",
    "LifespanOptions",
    "ShutdownCoordinator",
    "ShutdownState",
]
