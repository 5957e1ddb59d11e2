"""The process's life: lifespan start-up and clean-up, graceful shutdown with a drain."""

from __future__ import annotations

from prodkit.lifecycle._coordinator import InFlight, ShutdownCoordinator, ShutdownState
from prodkit.lifecycle._drain import SHUTTING_DOWN, GracefulShutdownMiddleware
from prodkit.lifecycle._lifespan import LifespanMiddleware

__all__ = [
    "SHUTTING_DOWN",
    "GracefulShutdownMiddleware",
    "InFlight",
    "LifespanMiddleware",
    "ShutdownCoordinator",
    "ShutdownState",
]
