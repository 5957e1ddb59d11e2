"""A circuit breaker with timeouts for backend calls, so a dead dependency costs microseconds.

Without it, every request that touches a refused or black-holed Redis waits for a socket or
command timeout. With it, after ``failure_threshold`` consecutive failures the breaker *opens*
and calls fail at once with :class:`~prodkit.BackendUnavailableError`; after
``recovery_time`` seconds it is *half-open* and lets exactly one probe call through: success
closes it, failure opens it again for another ``recovery_time``.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry

from prodkit._core.collectors import DEFAULT_PREFIX, counter, gauge
from prodkit._core.exceptions import BackendError, BackendUnavailableError, ConfigurationError

T = TypeVar("T")


class BreakerState(enum.IntEnum):
    """Breaker states; the integer is the value of the state gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Guard calls to one backend; see the module docstring for the state machine.

    Arguments:
        name: the backend's name, used as the ``breaker`` metric label (``"redis-cache"``).
        failure_threshold: consecutive failures that open the breaker.
        recovery_time: seconds the breaker stays open before a half-open probe.
        timeout: seconds a guarded call may take before it counts as a failure
            (``None``: no limit beyond the driver's own).
        failure_exceptions: exception types that count as backend failures; anything else
            (a bug, a cancellation) passes through without touching the breaker.
        registry: the Prometheus registry of the ``{metric_prefix}circuit_breaker_state`` gauge
            and the ``{metric_prefix}circuit_breaker_failures_total`` counter.
        metric_prefix: put in front of those metric names.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        recovery_time: float = 5.0,
        timeout: float | None = 1.0,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigurationError("failure_threshold must be at least 1")
        if recovery_time <= 0:
            raise ConfigurationError("recovery_time must be a positive number of seconds")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("timeout must be positive seconds, or None")
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_time = recovery_time
        self.timeout = timeout
        self.failure_exceptions = failure_exceptions
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._state_gauge = gauge(
            f"{metric_prefix}circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ["breaker"],
            registry=registry,
            multiprocess_mode="max",
        ).labels(name)
        self._failures_total = counter(
            f"{metric_prefix}circuit_breaker_failures_total",
            "Backend calls that failed or timed out behind a circuit breaker.",
            ["breaker"],
            registry=registry,
        ).labels(name)
        self._rejections_total = counter(
            f"{metric_prefix}circuit_breaker_rejections_total",
            "Calls refused at once because the circuit breaker was open.",
            ["breaker"],
            registry=registry,
        ).labels(name)
        self._state_gauge.set(0)

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker past ``recovery_time`` reads as half-open)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.recovery_time
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self._state_gauge.set(int(state))

    def allow(self) -> bool:
        """Whether a call may go through now; a half-open breaker admits one probe at a time."""
        if self._state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def record_success(self) -> None:
        """Report a successful call: the breaker closes and the failure count resets."""
        self._failures = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """Report a failed call: a probe's failure or enough consecutive ones open the breaker."""
        self._failures_total.inc()
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            self._probing = False
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    async def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` through the breaker, with the timeout.

        Raises :class:`BackendUnavailableError` at once while open, and
        :class:`~prodkit.BackendError` (the cause chained) when the call fails or times out.
        """
        if not self.allow():
            self._rejections_total.inc()
            raise BackendUnavailableError(f"{self.name}: circuit breaker is open")
        try:
            if self.timeout is None:
                result = await func()
            else:
                async with asyncio.timeout(self.timeout):
                    result = await func()
        except TimeoutError as exc:
            self.record_failure()
            raise BackendError(f"{self.name}: call timed out after {self.timeout}s") from exc
        except asyncio.CancelledError:
            # The caller went away; that says nothing about the backend, but a probe slot
            # must not stay taken forever.
            self._probing = False
            raise
        except self.failure_exceptions as exc:
            self.record_failure()
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._probing = False
            raise
        self.record_success()
        return result


__all__ = ["BreakerState", "CircuitBreaker"]
