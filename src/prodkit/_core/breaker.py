"""A circuit breaker with timeouts for backend calls, so a dead dependency costs microseconds.

Without it, every request that touches a refused or black-holed Redis waits for a socket or
command timeout. With it, after ``failure_threshold`` consecutive failures the breaker *opens*
and calls fail at once with :class:`~prodkit.BackendUnavailableError`; after
``recovery_time`` seconds it is *half-open* and lets exactly one probe call through: success
closes it, failure opens it again for another ``recovery_time``. So once the dependency is
back, the first call made ``recovery_time`` (0.5 s by default) or more after the last failure
uses it again. :meth:`CircuitBreaker.probe` lets a background job try sooner.

A breaker logs one warning when it opens (``circuit breaker opened``) and one when it closes
again (``circuit breaker closed``), never one per refused call.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, counter, gauge
from prodkit._core.exceptions import BackendError, BackendUnavailableError
from prodkit._core.logs import safe_logger

T = TypeVar("T")


class BreakerState(enum.IntEnum):
    """Breaker states; the integer is the value of the state gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


def _breaker_metrics(
    name: str, registry: CollectorRegistry | None, metric_prefix: str
) -> tuple[Gauge, Counter, Counter]:
    """The breaker's children of the state gauge and the failure and rejection counters."""
    state = gauge(
        f"{metric_prefix}circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        ["breaker"],
        registry=registry,
        multiprocess_mode="max",
    ).labels(name)
    failures = counter(
        f"{metric_prefix}circuit_breaker_failures_total",
        "Backend calls that failed or timed out behind a circuit breaker.",
        ["breaker"],
        registry=registry,
    ).labels(name)
    rejections = counter(
        f"{metric_prefix}circuit_breaker_rejections_total",
        "Calls refused at once because the circuit breaker was open.",
        ["breaker"],
        registry=registry,
    ).labels(name)
    return state, failures, rejections


class CircuitBreaker:
    """Guard calls to one backend; see the module docstring for the state machine.

    Arguments:
        name: the backend's name, used as the ``breaker`` metric label (``"redis-cache"``) and
            in the log lines.
        failure_threshold: consecutive failures that open the breaker (default ``5``).
        recovery_time: seconds the breaker stays open before a half-open probe (default
            ``0.5``). It bounds how long a backend that is back stays unused (while requests
            keep coming); each probe of a black-holed backend holds one call for up to
            ``timeout``.
        timeout: seconds a guarded call may take before it counts as a failure
            (default ``1.0``; ``None``: no limit beyond the driver's own).
        failure_exceptions: exception types that count as backend failures; anything else
            (a bug, a cancellation) passes through without touching the breaker.
        registry: the Prometheus registry of the ``{metric_prefix}circuit_breaker_state`` gauge
            and the ``{metric_prefix}circuit_breaker_failures_total`` counter.
        metric_prefix: put in front of those metric names (default ``"prodkit_"``).
        clock: monotonic clock, replaceable in tests.
        logger: a structlog logger for the opened and closed warnings (default: structlog's
            ``prodkit.breaker`` logger).
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        recovery_time: float = 0.5,
        timeout: float | None = 1.0,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        logger: Any | None = None,
    ) -> None:
        valid.positive_int("failure_threshold", failure_threshold, example=5)
        valid.positive_seconds("recovery_time", recovery_time, example=0.5)
        if timeout is not None:
            valid.positive_seconds("timeout", timeout, example=1.0)
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_time = recovery_time
        self.timeout = timeout
        self.failure_exceptions = failure_exceptions
        self.logger = safe_logger("prodkit.breaker", logger)
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0  # the last time it opened (again)
        self._down_since = 0.0  # the time it opened after being closed
        self._probing = False
        self._state_gauge, self._failures_total, self._rejections_total = _breaker_metrics(
            name, registry, metric_prefix
        )
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
        """Report a successful call: the breaker closes and the failure count resets.

        Closing a breaker that was open or half-open logs ``circuit breaker closed``
        (warning, with ``breaker`` and ``down_seconds``).
        """
        self._close()

    def record_failure(self, error: BaseException | None = None) -> None:
        """Report a failed call: a probe's failure or enough consecutive ones open the breaker.

        Opening a closed breaker logs ``circuit breaker opened`` (warning, with ``breaker``,
        ``failures`` and ``error``, the failure's text when given); a failed probe reopens it
        silently.
        """
        self._failures_total.inc()
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            self._probing = False
            self._open(error)

    def _close(self) -> None:
        # A half-open probe still in flight when a background probe closed the breaker is an
        # ordinary call from then on: its failure counts towards the threshold like any other.
        self._probing = False
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)
            self.logger.warning(
                "circuit breaker closed",
                breaker=self.name,
                down_seconds=round(max(0.0, self._clock() - self._down_since), 3),
            )

    def _open(self, error: BaseException | None) -> None:
        """Open (or keep open) for another ``recovery_time``; log only if it was closed."""
        self._opened_at = self._clock()
        if self._state is BreakerState.CLOSED:
            self._down_since = self._opened_at
            self.logger.warning(
                "circuit breaker opened",
                breaker=self.name,
                failures=self._failures,
                error=_describe(error),
                probe_in_seconds=self.recovery_time,
            )
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
                # Inline rather than through _timed: one frame less on every guarded call.
                try:
                    async with asyncio.timeout(self.timeout):
                        result = await func()
                except TimeoutError as exc:
                    raise _Timeout(f"{self.name}: call timed out after {self.timeout}s") from exc
        except BaseException as exc:
            if not self._counts(exc):
                # A bug or a cancellation says nothing about the backend, but a probe slot
                # must not stay taken forever.
                self._probing = False
                raise
            self.record_failure(exc)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        self.record_success()
        return result

    async def probe(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` now, whatever the state, with the timeout: a background check.

        For a job that no request waits on (retrying a write, say): it may try an open
        breaker's backend sooner than ``recovery_time``. Success closes the breaker; failure
        counts like a call's and keeps an open breaker open for another ``recovery_time``.
        It neither takes nor frees the half-open slot of :meth:`call`. Raises
        :class:`~prodkit.BackendError` (the cause chained) when the call fails or times out.
        """
        try:
            result = await self._timed(func)
        except BaseException as exc:
            if not self._counts(exc):
                raise
            self._failures_total.inc()
            self._failures += 1
            if self._state is not BreakerState.CLOSED or self._failures >= self.failure_threshold:
                self._open(exc)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        self._close()
        return result

    def _counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a backend failure (a timeout always is; a cancellation never)."""
        if isinstance(exc, asyncio.CancelledError):
            return False
        return isinstance(exc, (_Timeout, *self.failure_exceptions))

    async def _timed(self, func: Callable[[], Awaitable[T]]) -> T:
        if self.timeout is None:
            return await func()
        try:
            async with asyncio.timeout(self.timeout):
                return await func()
        except TimeoutError as exc:
            raise _Timeout(f"{self.name}: call timed out after {self.timeout}s") from exc


class _Timeout(BackendError):
    """A guarded call outlived the breaker's timeout (a backend failure, whatever the filter)."""


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return str(error) or type(error).__name__


__all__ = ["BreakerState", "CircuitBreaker"]
