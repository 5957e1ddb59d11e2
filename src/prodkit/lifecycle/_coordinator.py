"""Graceful shutdown: readiness off at once, keep serving through a drain, then let the server stop.

ASGI's ``lifespan.shutdown`` arrives only after the server has stopped accepting connections,
and servers stop accepting the moment SIGTERM arrives, while a load balancer (or Kubernetes,
which removes a pod's endpoints concurrently with sending SIGTERM) still routes traffic to the
process. :class:`ShutdownCoordinator` puts itself in front of the server's own signal handling:

1. SIGTERM / SIGINT: the state becomes ``DRAINING``; readiness answers 503 at once while every
   other request is still served normally (HTTP/1.x responses get ``Connection: close`` so
   clients reconnect elsewhere).
2. After ``drain`` seconds the signal is given back to the server's own handling and raised
   again (see :mod:`prodkit.lifecycle._signals`: a ``signal.signal`` handler such as
   uvicorn's, or an event loop handler such as hypercorn's and granian's), and the server
   stops as it always does: it closes its listener and waits for in-flight requests.
   Requests that still reach the app on open connections (accepted a moment before the
   listener closed, or pipelined) are served too, with ``Connection: close``: a client that
   sent one has no other answer coming. Once the server starts its lifespan shutdown (its
   pools are about to close), or past the hard deadline, they get a fast 503
   ``SHUTTING_DOWN``.
3. At ``timeout`` seconds after the signal, requests still running are cancelled and logged,
   so the server can finish before the orchestrator's SIGKILL.

One coordinator per process (each worker of a multi-process server has its own). It is shared
by :class:`~prodkit.lifecycle.GracefulShutdownMiddleware` (tracks requests),
:class:`~prodkit.health.HealthMiddleware` (readiness) and
:class:`~prodkit.lifecycle.LifespanMiddleware` (hooks around the app's lifespan). Its signal
handling is installed in one place, :meth:`ShutdownCoordinator.install`, which both middlewares
call when lifespan start-up completes.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, counter, gauge
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit._core.types import Scope
from prodkit.lifecycle._signals import SignalHold

#: Seconds served after the signal while readiness answers 503 (``ShutdownCoordinator(drain=)``).
DEFAULT_DRAIN = 2.0

#: Loop passes after install() during which the wakeup descriptor is claimed back (see
#: ShutdownCoordinator._claim_for): granian's lifespan run ends a handful of passes after it.
_CLAIM_PASSES = 32


class ShutdownState(enum.IntEnum):
    """Where the process is in its shutdown (the gauge ``…shutdown_state`` reports the value)."""

    RUNNING = 0  #: serving, ready
    DRAINING = 1  #: signal received: not ready, still serving everything normally
    STOPPING = 2  #: the server has been told to stop; requests that still arrive are served
    #: with ``Connection: close`` until its lifespan shutdown (then 503 SHUTTING_DOWN)
    STOPPED = 3  #: lifespan shutdown ran


@dataclass(eq=False, slots=True)
class InFlight:
    """One request being served: what the coordinator may cancel at the hard deadline."""

    method: str
    path: str
    started: float
    task: asyncio.Task[Any] | None
    cancelled_at_deadline: bool = field(default=False)


def _signal_numbers(signals: Iterable[int]) -> tuple[int, ...]:
    """``signals`` as a tuple, each checked to be a signal of this platform."""
    numbers = tuple(signals)
    for sig in numbers:
        try:
            signal.Signals(sig)
        except ValueError as exc:
            raise ConfigurationError(
                f"signals={numbers!r}: {sig!r} is not a signal number; write e.g. "
                "signals=(signal.SIGTERM, signal.SIGINT)"
            ) from exc
    return numbers


def _shutdown_metrics(
    registry: CollectorRegistry | None, metric_prefix: str
) -> tuple[Gauge, Counter, Counter]:
    """The state gauge and the counters of refused and cancelled requests."""
    state = gauge(
        f"{metric_prefix}shutdown_state",
        "Shutdown state of the process: 0 running, 1 draining, 2 stopping, 3 stopped.",
        registry=registry,
        multiprocess_mode="max",
    )
    rejected = counter(
        f"{metric_prefix}shutdown_rejected_requests_total",
        "Requests answered 503 SHUTTING_DOWN because the server was stopping.",
        registry=registry,
    )
    cancelled = counter(
        f"{metric_prefix}shutdown_cancelled_requests_total",
        "Requests cancelled because they were still running at the shutdown deadline.",
        registry=registry,
    )
    return state, rejected, cancelled


class ShutdownCoordinator:
    """Drive one process's graceful shutdown: readiness, drain, hand-over and hard deadline.

    Arguments:
        drain: seconds to keep serving normally after the signal while readiness answers 503,
            so load balancers stop routing here before the listener closes. Match it to the
            time your load balancer needs to notice (readiness ``periodSeconds`` x
            ``failureThreshold``, plus endpoint propagation) (default :data:`DEFAULT_DRAIN`,
            2 s, as ``StackSettings.shutdown_drain_seconds``). Two seconds is what several
            workers behind one socket need (``uvicorn --workers``, gunicorn,
            ``prodkit serve``): long enough for every busy keep-alive connection to get one
            response with ``Connection: close`` and reconnect to another worker. 0 hands the
            signal on at once (readiness still turns 503, and the deadline still applies), at
            the price of requests cut on connections the server closes.
        timeout: seconds from the signal to the hard deadline at which requests still running
            are cancelled (default ``30.0``, as ``StackSettings.shutdown_timeout_seconds``).
            Keep it below Kubernetes' ``terminationGracePeriodSeconds``, which is also 30 s
            unless set: raise the grace period. At least ``drain``.
        signals: the signals that start a drain (SIGTERM and SIGINT).
        retry_after: ``Retry-After`` seconds on 503 answers while shutting down (default
            ``5``).
        logger: a structlog logger (default: structlog's ``prodkit.shutdown`` logger).
        registry: the Prometheus registry of the ``{metric_prefix}shutdown_*`` metrics.
        metric_prefix: put in front of those metric names.
    """

    def __init__(
        self,
        *,
        drain: float = DEFAULT_DRAIN,
        timeout: float = 30.0,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        retry_after: int = 5,
        logger: Any | None = None,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        valid.non_negative_seconds("drain", drain, example=DEFAULT_DRAIN)
        valid.positive_seconds("timeout", timeout, example=30)
        if timeout < drain:
            raise ConfigurationError(
                f"timeout={timeout!r}: shorter than drain={drain!r}; it counts from the signal "
                "and includes the drain: write at least the drain, e.g. timeout=30"
            )
        valid.non_negative_int("retry_after", retry_after, example=5)
        self.drain = float(drain)
        self.timeout = float(timeout)
        self.signals = _signal_numbers(signals)
        self.retry_after = retry_after
        self.logger = safe_logger("prodkit.shutdown", logger)
        self._state = ShutdownState.RUNNING
        self._in_flight: set[InFlight] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hold: SignalHold | None = None
        self._installed = False
        self._refusing = False  # the server's lifespan shutdown began, or the deadline passed
        self._reclaim = False  # see request_started()
        self._timers: list[asyncio.TimerHandle] = []
        self._idle: asyncio.Event | None = None
        self._state_gauge, self._rejected, self._cancelled = _shutdown_metrics(
            registry, metric_prefix
        )
        self._state_gauge.set(0)

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> ShutdownState:
        """The current :class:`ShutdownState`."""
        return self._state

    @property
    def ready(self) -> bool:
        """Whether this process should receive new traffic (false from the signal on)."""
        return self._state is ShutdownState.RUNNING

    @property
    def accepting(self) -> bool:
        """Whether new requests are still served (refused once the server's lifespan shutdown
        began, or past the hard deadline)."""
        return not self._refusing and self._state < ShutdownState.STOPPED

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        return len(self._in_flight)

    def _set_state(self, state: ShutdownState) -> None:
        if state > self._state:
            self._state = state
            self._state_gauge.set(int(state))

    def restart(self) -> None:
        """Serve again after a completed lifespan (a new lifespan start-up on the same app).

        Servers run one lifespan per process, but test clients and embedding tools may start
        the same app again after shutting it down; the new serving period starts ready. A
        coordinator that is still draining or stopping is left alone.
        """
        if self._state is ShutdownState.STOPPED:
            self._state = ShutdownState.RUNNING
            self._refusing = False
            self._state_gauge.set(int(ShutdownState.RUNNING))

    def count_rejected(self) -> None:
        """Count one request answered 503 ``SHUTTING_DOWN``."""
        self._rejected.inc()

    # -- requests ---------------------------------------------------------------------------

    def request_started(self, scope: Scope) -> InFlight:
        """Register a request (call :meth:`request_finished` in ``finally``)."""
        if self._reclaim:
            # The first request runs in the loop run that serves. A server that starts the
            # loop once for lifespan start-up and again to serve (granian) on uvloop, which
            # registers a fresh wakeup descriptor on every start, gets it claimed back here.
            self._reclaim = False
            if self._hold is not None:
                self._hold.claim()
        try:
            task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:
            task = None
        # Positional: this runs for every request.
        record = InFlight(
            str(scope.get("method", "")), str(scope.get("path", "")), time.monotonic(), task
        )
        self._in_flight.add(record)
        return record

    def request_finished(self, record: InFlight) -> None:
        """Unregister a request; wakes :meth:`wait_idle` when it was the last one."""
        self._in_flight.discard(record)
        if not self._in_flight and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no request is in flight (returns at once if none is)."""
        if not self._in_flight:
            return
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        await self._idle.wait()

    # -- signals ----------------------------------------------------------------------------

    def install(self) -> None:
        """Start a serving period: ready again, and the shutdown signals held for the drain.

        The one place the coordinator's signal handling is installed. Call it from the running
        event loop once the server has installed its own handlers (every server does so before
        lifespan start-up): :class:`~prodkit.lifecycle.LifespanMiddleware` and
        :class:`~prodkit.lifecycle.GracefulShutdownMiddleware` call it when lifespan start-up
        completes, and when both are in the stack the second call does nothing. Idempotent
        until :meth:`stopped` (or :meth:`uninstall`) ends the serving period. A coordinator
        that stopped after an earlier lifespan is ready again (see :meth:`restart`).
        """
        loop = asyncio.get_running_loop()
        if self._installed:
            return
        self._installed = True
        self.restart()
        names = [signal.Signals(s).name for s in self.signals]
        if threading.current_thread() is not threading.main_thread():
            self.logger.warning("shutdown signals not held: not in the main thread", signals=names)
            return
        self._loop = loop
        self._hold = SignalHold(self.signals, self._on_signal)
        self._hold.install(loop)
        self._reclaim = True
        loop.call_soon(self._claim_for, _CLAIM_PASSES)
        self.logger.info("shutdown signals held for the drain", signals=names)

    def _claim_for(self, passes: int) -> None:
        # uvloop registers a fresh wakeup descriptor every time its loop starts running, and
        # granian starts the loop once for lifespan start-up, then again to serve. Callbacks
        # still queued when a run ends are the first to run in the next one, so claiming the
        # descriptor back for the next few loop passes covers that restart without a timer.
        if self._hold is None:
            return
        self._hold.claim()
        if passes > 1 and self._loop is not None:
            self._loop.call_soon(self._claim_for, passes - 1)

    def uninstall(self) -> None:
        """Give the signals back to the handlers that were in place before :meth:`install`."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.give_back()
        self._installed = False
        self._reclaim = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal.signal handler runs between two bytecodes of the main thread, possibly in
        # the middle of the event loop's own code: only schedule work from here.
        loop = self._loop
        if loop is None or loop.is_closed():
            self._chain(signum)
            return
        loop.call_soon_threadsafe(self.begin_shutdown, signum)

    def begin_shutdown(self, signum: int | None = None) -> None:
        """Start the drain as if ``signum`` had arrived (a second call stops the drain early).

        Call from the event loop. With ``signum`` ``None`` (a programmatic shutdown) nothing is
        handed to the server when the drain ends; the state just becomes ``STOPPING``.
        """
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._state is ShutdownState.DRAINING and signum is not None:
            # A second signal during the drain: the operator insists, stop now.
            self.logger.warning(
                "second shutdown signal, ending the drain early",
                signal=signal.Signals(signum).name,
            )
            self._end_drain(signum)
            return
        if self._state is not ShutdownState.RUNNING:
            if signum is not None:
                self._chain(signum)
            return
        self._set_state(ShutdownState.DRAINING)
        self.logger.info(
            "shutdown signal received, draining",
            signal=signal.Signals(signum).name if signum is not None else None,
            drain_seconds=self.drain,
            timeout_seconds=self.timeout,
            in_flight=len(self._in_flight),
        )
        self._timers.append(loop.call_later(self.drain, self._end_drain, signum))
        self._timers.append(loop.call_later(self.timeout, self._deadline))

    def _end_drain(self, signum: int | None) -> None:
        if self._state >= ShutdownState.STOPPING:
            return
        self._set_state(ShutdownState.STOPPING)
        self.logger.info("drain finished, stopping the server", in_flight=len(self._in_flight))
        if signum is not None:
            self._chain(signum)

    def _chain(self, signum: int) -> None:
        """Hand ``signum`` to the server's own handler (the default action if it had none)."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.give_back(signum)

    def _deadline(self) -> None:
        self._refusing = True
        leftover = [record for record in self._in_flight if not record.cancelled_at_deadline]
        now = time.monotonic()
        self.logger.warning("shutdown deadline reached", in_flight=len(leftover))
        for record in leftover:
            self.logger.warning(
                "request cancelled at shutdown deadline",
                method=record.method,
                path=record.path,
                running_seconds=round(now - record.started, 3),
            )
            self._cancelled.inc()
            if record.task is not None and not record.task.done():
                record.cancelled_at_deadline = True
                record.task.cancel()

    def lifespan_shutdown(self) -> None:
        """The server sent ``lifespan.shutdown``: it stops, whatever the signal path, and the
        app's resources are about to close, so requests that still arrive are refused."""
        self._refusing = True
        self._set_state(ShutdownState.STOPPING)

    def stopped(self) -> None:
        """Lifespan shutdown finished: cancel timers and give the signals back."""
        self._set_state(ShutdownState.STOPPED)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.uninstall()


__all__ = ["DEFAULT_DRAIN", "InFlight", "ShutdownCoordinator", "ShutdownState"]
