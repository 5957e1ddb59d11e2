"""Liveness, readiness and a detailed health report, answered before the app is reached.

* ``GET /livez``: the process is alive and its event loop turns. Touches no dependency, so a
  database outage never gets a healthy process restarted.
* ``GET /readyz``: 503 while the process drains (see :class:`~prodkit.lifecycle.ShutdownCoordinator`) or
  while a *critical* check fails; 200 otherwise.
* ``GET /healthz``: every registered check with its status and latency. The detail is shown
  only to callers presenting the configured key in ``X-Health-Key``; others get the summary.

Checks run with a timeout, concurrently, and their results are cached for ``cache_ttl``
seconds; concurrent probes share one in-flight check, so probes cannot overload a dependency.
A run ends at its timeout even when the check does not stop when told to (a driver cancelling
a query over a dead connection), so readiness follows a dependency within ``cache_ttl`` +
``timeout``. A check going from passing to failing, and back, is logged once each (a warning
on the ``prodkit.health`` logger), not once per probe.
Every answer is JSON with ``Cache-Control: no-store``; 503 answers carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

from prometheus_client import CollectorRegistry

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, gauge, histogram
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import scope_header
from prodkit._core.logs import safe_logger
from prodkit._core.options import build_options
from prodkit._core.routing import route_path, set_route_template
from prodkit._core.types import ASGIApp, Receive, Scope, Send

CheckFunc = Callable[[], Awaitable[Any]]


class Readiness(Protocol):
    """What readiness needs from the process's shutdown coordinator.

    :class:`prodkit.lifecycle.ShutdownCoordinator` is one; health does not import it, so that
    the two concerns stay independent.
    """

    @property
    def ready(self) -> bool:
        """Whether the process should receive new traffic."""
        ...

    @property
    def state(self) -> enum.Enum:
        """The shutdown state, reported by name in the detailed report."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        ...


def _resolve(target: Any, method: str) -> Any:
    # A pool is usually created at lifespan start-up, after the checks were registered: a
    # zero-argument callable returning it (``lambda: state.pool``) is resolved on every run.
    if not hasattr(target, method) and callable(target):
        target = target()
    if target is None:
        raise RuntimeError("not connected yet")
    return target


def postgres_check(pool: Any, query: str = "SELECT 1") -> CheckFunc:
    """A check that runs ``query`` on an asyncpg pool or connection (anything with ``fetchval``).

    ``pool`` may also be a zero-argument callable returning the pool (for pools opened at
    start-up, after the check is registered). The driver is not imported: duck typing.
    """

    async def check() -> None:
        await _resolve(pool, "fetchval").fetchval(query)

    return check


def redis_check(client: Any) -> CheckFunc:
    """A check that sends ``PING`` through a redis-py asyncio client (anything with ``ping``).

    ``client`` may also be a zero-argument callable returning the client.
    """

    async def check() -> None:
        if not await _resolve(client, "ping").ping():
            raise RuntimeError("PING was not answered with PONG")

    return check


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check run: ``ok``, its latency, when it ran, and the error if any."""

    name: str
    ok: bool
    critical: bool
    latency: float
    checked_at: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The detailed JSON form of the result."""
        return {
            "status": "pass" if self.ok else "fail",
            "critical": self.critical,
            "latency_ms": round(self.latency * 1000, 3),
            "checked_at": round(self.checked_at, 3),
            "error": self.error,
        }


#: Runs of one check left behind at their timeout (not stopped when cancelled) before the
#: check fails without calling its function again.
MAX_ABANDONED = 4
#: The shortest ``key`` that unlocks the detailed report (a guessable one would leak it).
MIN_KEY_LENGTH = 16


class HealthCheck:
    """One named dependency check with its timeout, result cache and shared in-flight run.

    A run ends ``timeout`` seconds after it started, failed, even if the check function does
    not stop when cancelled (asyncpg, for one, waits for the server to acknowledge a cancelled
    query, which over a dead connection takes its own ``command_timeout``): the function is
    cancelled and left to finish in the background. So every probe that arrives more than
    ``cache_ttl`` seconds after a dependency stopped answering gets a failing result within
    ``timeout`` seconds.

    When a run fails after the check passed (or on its first run), one warning
    ``health check failing`` is logged (structlog logger ``prodkit.health``, with ``check``,
    ``critical`` and ``error``); when a run passes after failing, one warning
    ``health check passing again`` (with ``failed_for``, the seconds since the first failing
    run). Runs that do not change the outcome log nothing.

    Arguments:
        name: how the check appears in reports, metrics and logs (``postgres``, ``redis``...).
        func: an async callable that returns normally when the dependency is healthy and
            raises (or takes longer than ``timeout``) when it is not.
        critical: whether a failure makes the process not ready (default ``True``).
        timeout: seconds before the check counts as failed (default ``2.0``).
        cache_ttl: seconds a result is reused (default ``1.0``).
    """

    def __init__(
        self,
        name: str,
        func: CheckFunc,
        *,
        critical: bool = True,
        timeout: float = 2.0,
        cache_ttl: float = 1.0,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigurationError(
                f"name={name!r}: not a non-empty string; write e.g. name='postgres'"
            )
        valid.positive_seconds("timeout", timeout, example=2.0)
        valid.non_negative_seconds("cache_ttl", cache_ttl, example=1.0)
        self.name = name
        self.func = func
        self.critical = critical
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._last: CheckResult | None = None
        self._last_at = 0.0
        self._failing_since: float | None = None
        self._running: asyncio.Future[CheckResult] | None = None
        # Runs that outlived their timeout, kept referenced until they finish by themselves.
        self._abandoned: set[asyncio.Future[Any]] = set()

    def cached(self) -> CheckResult | None:
        """The last result while it is fresh (younger than ``cache_ttl``), else ``None``."""
        if self._last is not None and time.monotonic() - self._last_at < self.cache_ttl:
            return self._last
        return None

    async def result(self) -> CheckResult:
        """The cached result if fresh, else the result of a (shared) new run."""
        fresh = self.cached()
        if fresh is not None:
            return fresh
        running = self._running
        if running is None or running.done():
            running = asyncio.ensure_future(self._run())
            self._running = running
        # shield: one probe giving up (client gone) must not cancel the run others wait for.
        return await asyncio.shield(running)

    async def _run(self) -> CheckResult:
        started = time.monotonic()
        error: str | None
        if len(self._abandoned) >= MAX_ABANDONED:
            # A dependency that does not even let cancelled calls go is not sent more of them.
            error = f"{len(self._abandoned)} runs abandoned after {self.timeout}s have not stopped"
        else:
            error = await self._call()
        finished = time.monotonic()
        result = CheckResult(
            self.name, error is None, self.critical, finished - started, time.time(), error
        )
        self._report_change(result, finished)
        self._last = result
        self._last_at = finished
        return result

    async def _call(self) -> str | None:
        """Run the check function once, within the timeout; the error text, or ``None``."""
        error: str | None = None
        call: asyncio.Future[Any]
        try:
            call = asyncio.ensure_future(self.func())
        except Exception as exc:  # a plain callable that raised instead of returning an awaitable
            call = asyncio.get_running_loop().create_future()
            call.set_exception(exc)
        try:
            done, _ = await asyncio.wait((call,), timeout=self.timeout)
        except BaseException:
            call.cancel()
            raise
        if not done:
            # Not awaited after cancelling: a function that takes its time to stop must not
            # hold readiness (nor the probes waiting for this run) past the timeout.
            call.cancel()
            self._abandoned.add(call)
            call.add_done_callback(self._forget)
            error = f"timed out after {self.timeout}s"
        elif call.cancelled():
            error = "cancelled"
        elif (failure := call.exception()) is not None:
            error = f"{type(failure).__name__}: {failure}"
        return error

    def _forget(self, call: asyncio.Future[Any]) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved, so asyncio does not report it as never retrieved

    def _report_change(self, result: CheckResult, now: float) -> None:
        """Log the two transitions, failing and passing again; nothing for a repeat."""
        previous = self._last
        if not result.ok and (previous is None or previous.ok):
            self._failing_since = now
            safe_logger("prodkit.health").warning(
                "health check failing",
                check=self.name,
                critical=self.critical,
                error=result.error,
            )
        elif result.ok and previous is not None and not previous.ok:
            since, self._failing_since = self._failing_since or now, None  # set when it failed
            safe_logger("prodkit.health").warning(
                "health check passing again",
                check=self.name,
                critical=self.critical,
                failed_for=round(now - since, 3),
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthOptions:
    """The options of :class:`HealthMiddleware`, checked when made.

    Attributes:
        coordinator: the process's :class:`~prodkit.lifecycle.ShutdownCoordinator` (any
            :class:`Readiness`); readiness is 503 once it drains.
        checks: :class:`HealthCheck` objects (more with :meth:`HealthMiddleware.add_check`),
            kept as a tuple.
        key: the secret that unlocks the detailed report, sent by callers in ``X-Health-Key``
            (compared in constant time; at least 16 printable characters; default ``None``: the
            detail is never shown).
        livez_path: where liveness answers (default ``"/livez"``).
        readyz_path: where readiness answers (default ``"/readyz"``).
        healthz_path: where the detailed report answers (default ``"/healthz"``).
        timeout: the timeout of the checks :meth:`HealthMiddleware.add_check` adds without one
            (default ``2.0``).
        cache_ttl: the result lifetime of the checks :meth:`HealthMiddleware.add_check` adds
            without one (default ``1.0``).
        retry_after: ``Retry-After`` seconds on 503 answers (default ``5``).
        registry: the Prometheus registry of the ``{metric_prefix}health_check_*`` metrics
            (default: prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of those metric names (default ``"prodkit_"``).

    Raises:
        ConfigurationError: a path that does not start with ``/`` or two endpoints on one path,
            a ``key`` shorter than 16 characters or one no header can carry, a ``timeout``
            that is not positive seconds, a negative ``cache_ttl``, a ``retry_after`` below 1,
            or ``checks`` that are not :class:`HealthCheck` objects.
    """

    coordinator: Readiness | None = None
    checks: Sequence[HealthCheck] = ()
    key: str | None = None
    livez_path: str = "/livez"
    readyz_path: str = "/readyz"
    healthz_path: str = "/healthz"
    timeout: float = 2.0
    cache_ttl: float = 1.0
    retry_after: int = 5
    registry: CollectorRegistry | None = None
    metric_prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        paths = {
            name: valid.url_path(name, getattr(self, name), example=f"/{name[:-5]}")
            for name in ("livez_path", "readyz_path", "healthz_path")
        }
        if len(set(paths.values())) != len(paths):
            raise ConfigurationError(
                f"livez_path, readyz_path, healthz_path={tuple(paths.values())!r}: two "
                "endpoints on one path; write three distinct paths, e.g. '/livez', '/readyz', "
                "'/healthz'"
            )
        if self.key is not None:
            valid.secret("key", self.key, min_length=MIN_KEY_LENGTH)
        valid.positive_seconds("timeout", self.timeout, example=2.0)
        valid.non_negative_seconds("cache_ttl", self.cache_ttl, example=1.0)
        valid.positive_int("retry_after", self.retry_after, example=5)
        valid.metric_prefix("metric_prefix", self.metric_prefix)
        checks = tuple(self.checks)
        for check in checks:
            if not isinstance(check, HealthCheck):
                raise ConfigurationError(
                    f"checks: {check!r} is not a HealthCheck; write "
                    "checks=[HealthCheck('postgres', postgres_check(pool))]"
                )
        object.__setattr__(self, "checks", checks)


class HealthKeywords(TypedDict, total=False):
    """:class:`HealthOptions`'s fields as keywords of :class:`HealthMiddleware`."""

    coordinator: Readiness | None
    checks: Sequence[HealthCheck]
    key: str | None
    livez_path: str
    readyz_path: str
    healthz_path: str
    timeout: float
    cache_ttl: float
    retry_after: int
    registry: CollectorRegistry | None
    metric_prefix: str


class HealthMiddleware:
    """Answer ``/livez``, ``/readyz`` and ``/healthz`` in front of the app.

    ``/livez`` touches no dependency; ``/readyz`` is 503 while the process drains or a critical
    check fails; ``/healthz`` reports every check, in detail to callers with the ``key``. Checks
    run concurrently, each within its timeout, and their results are reused for ``cache_ttl``
    seconds, so probes cannot overload a dependency (see :class:`HealthCheck`).

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette

        from prodkit import HealthMiddleware

        async def database():  # returns when the dependency answers, raises when it does not
            raise ConnectionError("connection refused")

        app = HealthMiddleware(Starlette(), key="probe-key-7f3a9c2e1d")
        app.add_check("database", database)  # critical: not ready while it fails

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                live = await client.get("/livez")
                ready = await client.get("/readyz")
                key = {"X-Health-Key": "probe-key-7f3a9c2e1d"}
                report = await client.get("/healthz", headers=key)
            assert live.status_code == 200  # alive: a restart would not bring the database back
            assert ready.status_code == 503 and ready.json()["status"] == "fail"
            check = report.json()["checks"]["database"]
            assert check["error"] == "ConnectionError: connection refused"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap (every other request goes to it).
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`HealthOptions`'s fields by name, instead of ``options``:
            ``HealthMiddleware(app, coordinator=coordinator, key=os.environ["HEALTH_KEY"])``.

    Raises:
        ConfigurationError: an invalid option (see :class:`HealthOptions`), or two checks
            with one name.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: HealthOptions | None = None,
        **keywords: Unpack[HealthKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(HealthOptions, options, keywords)
        self.coordinator = options.coordinator
        self.checks: list[HealthCheck] = []
        self._key = options.key.encode() if options.key is not None else None
        self._paths = {
            options.livez_path: "livez",
            options.readyz_path: "readyz",
            options.healthz_path: "healthz",
        }
        self.timeout = options.timeout
        self.cache_ttl = options.cache_ttl
        self.retry_after = str(options.retry_after).encode()
        prefix, registry = options.metric_prefix, options.registry
        self._up = gauge(
            f"{prefix}health_check_up",
            "1 when the last run of a health check passed, 0 when it failed.",
            ["check"],
            registry=registry,
            multiprocess_mode="min",
        )
        self._duration = histogram(
            f"{prefix}health_check_duration_seconds",
            "Duration of health check runs.",
            ["check"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0),
        )
        for check in options.checks:
            self._register(check)

    def _register(self, check: HealthCheck) -> None:
        if any(existing.name == check.name for existing in self.checks):
            raise ConfigurationError(f"a health check named {check.name!r} is already registered")
        self.checks.append(check)

    def add_check(
        self,
        name: str,
        func: CheckFunc,
        *,
        critical: bool = True,
        timeout: float | None = None,
        cache_ttl: float | None = None,
    ) -> HealthCheck:
        """Register an async check (see :class:`HealthCheck`); returns it."""
        check = HealthCheck(
            name,
            func,
            critical=critical,
            timeout=self.timeout if timeout is None else timeout,
            cache_ttl=self.cache_ttl if cache_ttl is None else cache_ttl,
        )
        self._register(check)
        return check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        name = self._paths.get(path)
        if name is None and scope.get("root_path"):
            # Served under a root_path, the app's own /readyz arrives as /api/readyz.
            path = route_path(scope)
            name = self._paths.get(path)
        if name is None:
            await self.app(scope, receive, send)
            return
        set_route_template(scope, path)
        if name == "livez":
            status, body = 200, {"status": "pass"}
        elif name == "readyz":
            status, body = await self._report(scope, critical_only=True)
        else:
            status, body = await self._report(scope, critical_only=False)
        await self._send(send, status, body, head=scope["method"] == "HEAD")

    def _authorised(self, scope: Scope) -> bool:
        if self._key is None:
            return False
        presented = scope_header(scope, b"x-health-key")
        return presented is not None and hmac.compare_digest(presented, self._key)

    async def run_checks(self, *, critical_only: bool = False) -> list[CheckResult]:
        """Run (or reuse) every registered check concurrently and return their results."""
        selected = [c for c in self.checks if c.critical or not critical_only]
        results = [c.cached() for c in selected]
        stale = [c for c, r in zip(selected, results, strict=True) if r is None]
        if not stale:  # the common case for frequent probes: no task, no metric update
            return [r for r in results if r is not None]
        ran = iter(await asyncio.gather(*(c.result() for c in stale)))
        merged: list[CheckResult] = []
        for result in results:
            if result is None:
                result = next(ran)
                self._up.labels(result.name).set(1 if result.ok else 0)
                self._duration.labels(result.name).observe(result.latency)
            merged.append(result)
        return merged

    async def _report(self, scope: Scope, *, critical_only: bool) -> tuple[int, dict[str, Any]]:
        draining = self.coordinator is not None and not self.coordinator.ready
        results = await self.run_checks(critical_only=critical_only)
        critical_failed = any(not r.ok and r.critical for r in results)
        if draining or critical_failed:
            status_text = "fail"
        elif any(not r.ok for r in results):
            status_text = "warn"
        else:
            status_text = "pass"
        body: dict[str, Any] = {"status": status_text, "draining": draining}
        if self._authorised(scope):
            body["checks"] = {r.name: r.to_dict() for r in results}
            if self.coordinator is not None:
                body["shutdown_state"] = self.coordinator.state.name.lower()
                body["in_flight"] = self.coordinator.in_flight
        return (503 if status_text == "fail" else 200), body

    async def _send(self, send: Send, status: int, body: dict[str, Any], *, head: bool) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 503:
            headers.append((b"retry-after", self.retry_after))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else payload})


__all__ = [
    "MIN_KEY_LENGTH",
    "CheckResult",
    "HealthCheck",
    "HealthKeywords",
    "HealthMiddleware",
    "HealthOptions",
    "postgres_check",
    "redis_check",
]
