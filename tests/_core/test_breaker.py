"""CircuitBreaker: opens after failures, fails fast while open, one half-open probe, two log
lines per outage (opened, closed), and background probes."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from prodkit import BackendError, BackendUnavailableError, ConfigurationError
from prodkit.asgi import BreakerState, CircuitBreaker
from prodkit.testing import capture_logs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def fail() -> None:
    raise ConnectionRefusedError("refused")


async def ok() -> str:
    return "ok"


def state(cb: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so the type checker does not narrow it between reads."""
    return cb.state


async def trip(cb: CircuitBreaker) -> None:
    """Open ``cb`` with as many failed calls as its threshold."""
    for _ in range(cb.failure_threshold):
        with pytest.raises(BackendError):
            await cb.call(fail)


def breaker(registry: CollectorRegistry, clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(
        "redis", failure_threshold=3, recovery_time=5.0, registry=registry, clock=clock
    )


async def test_opens_after_threshold_and_fails_fast(registry: CollectorRegistry) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    for _ in range(3):
        with pytest.raises(BackendError) as info:
            await cb.call(fail)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert state(cb) is BreakerState.OPEN
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "x"

    with pytest.raises(BackendUnavailableError):
        await cb.call(counted)
    assert calls == 0
    assert registry.get_sample_value("prodkit_circuit_breaker_state", {"breaker": "redis"}) == 1
    assert (
        registry.get_sample_value("prodkit_circuit_breaker_failures_total", {"breaker": "redis"})
        == 3
    )
    assert (
        registry.get_sample_value("prodkit_circuit_breaker_rejections_total", {"breaker": "redis"})
        == 1
    )


async def test_half_open_admits_one_probe(registry: CollectorRegistry) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    clock.now = 5.0
    assert state(cb) is BreakerState.HALF_OPEN
    release = asyncio.Event()

    async def slow_probe() -> str:
        await release.wait()
        return "ok"

    probe = asyncio.create_task(cb.call(slow_probe))
    await asyncio.sleep(0)
    with pytest.raises(BackendUnavailableError):
        await cb.call(ok)  # a second caller while the probe is out
    release.set()
    assert await probe == "ok"
    assert state(cb) is BreakerState.CLOSED
    assert await cb.call(ok) == "ok"


async def test_failed_probe_reopens(registry: CollectorRegistry) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    clock.now = 5.0
    with pytest.raises(BackendError):
        await cb.call(fail)
    assert state(cb) is BreakerState.OPEN
    clock.now = 9.9
    assert state(cb) is BreakerState.OPEN
    clock.now = 10.0
    assert state(cb) is BreakerState.HALF_OPEN


async def test_timeout_counts_as_failure(registry: CollectorRegistry) -> None:
    cb = CircuitBreaker("slow", failure_threshold=1, timeout=0.01, registry=registry)

    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(BackendError, match="timed out"):
        await cb.call(hang)
    assert state(cb) is BreakerState.OPEN


async def test_success_resets_the_count_and_bugs_pass_through(registry: CollectorRegistry) -> None:
    cb = CircuitBreaker("x", failure_threshold=2, registry=registry, failure_exceptions=(OSError,))
    with pytest.raises(BackendError):
        await cb.call(fail)
    await cb.call(ok)
    with pytest.raises(BackendError):
        await cb.call(fail)
    assert state(cb) is BreakerState.CLOSED

    async def bug() -> None:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        await cb.call(bug)
    assert state(cb) is BreakerState.CLOSED


async def test_timeout_counts_whatever_the_failure_exceptions(
    registry: CollectorRegistry,
) -> None:
    cb = CircuitBreaker(
        "slow", failure_threshold=1, timeout=0.01, failure_exceptions=(OSError,), registry=registry
    )

    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(BackendError, match="timed out") as info:
        await cb.call(hang)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert state(cb) is BreakerState.OPEN


async def test_by_default_a_backend_that_is_back_is_probed_half_a_second_later(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    cb = CircuitBreaker("redis", registry=registry, clock=clock)  # default recovery_time
    for _ in range(cb.failure_threshold):
        with pytest.raises(BackendError):
            await cb.call(fail)
    with pytest.raises(BackendUnavailableError):
        await cb.call(ok)
    clock.now += 0.49
    with pytest.raises(BackendUnavailableError):
        await cb.call(ok)  # still open
    clock.now += 0.01
    assert await cb.call(ok) == "ok"  # the half-open probe: the backend answers
    assert state(cb) is BreakerState.CLOSED


async def test_logs_one_warning_when_it_opens_and_one_when_it_closes(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    with capture_logs() as events:
        for _ in range(3):
            with pytest.raises(BackendError):
                await cb.call(fail)
        for _ in range(10):  # refused while open: counted, not logged
            with pytest.raises(BackendUnavailableError):
                await cb.call(ok)
        for _ in range(3):  # probes that fail reopen it silently
            clock.now += cb.recovery_time
            with pytest.raises(BackendError):
                await cb.call(fail)
        clock.now += cb.recovery_time
        assert await cb.call(ok) == "ok"
        for _ in range(5):  # closed: nothing more to say
            await cb.call(ok)
    assert [(e["event"], e["log_level"], e["breaker"]) for e in events] == [
        ("circuit breaker opened", "warning", "redis"),
        ("circuit breaker closed", "warning", "redis"),
    ]
    opened, closed = events
    assert (opened["failures"], opened["error"]) == (3, "refused")
    assert closed["down_seconds"] == 4 * cb.recovery_time  # on the test's clock


async def test_a_custom_logger_gets_the_lines(registry: CollectorRegistry) -> None:
    lines: list[tuple[str, dict[str, object]]] = []

    class Logger:
        def warning(self, event: str, **fields: object) -> None:
            lines.append((event, fields))

    cb = CircuitBreaker("db", failure_threshold=1, registry=registry, logger=Logger())
    with pytest.raises(BackendError):
        await cb.call(fail)
    assert [(event, fields["breaker"]) for event, fields in lines] == [
        ("circuit breaker opened", "db")
    ]


async def test_probe_tries_an_open_backend_and_success_closes_it(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    assert await cb.probe(ok) == "ok"  # long before recovery_time
    assert state(cb) is BreakerState.CLOSED
    assert await cb.call(ok) == "ok"


async def test_a_failed_probe_keeps_it_open_for_another_recovery_time(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    clock.now = 4.0
    with pytest.raises(BackendError) as info:
        await cb.probe(fail)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    clock.now = 5.0  # recovery_time after the first opening, not after the probe
    assert state(cb) is BreakerState.OPEN
    clock.now = 9.0
    assert state(cb) is BreakerState.HALF_OPEN
    assert (
        registry.get_sample_value("prodkit_circuit_breaker_failures_total", {"breaker": "redis"})
        == 4
    )


async def test_probe_leaves_the_half_open_slot_alone(registry: CollectorRegistry) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    clock.now = 5.0
    release = asyncio.Event()

    async def slow_probe() -> str:
        await release.wait()
        return "ok"

    held = asyncio.create_task(cb.call(slow_probe))  # takes the half-open slot
    await asyncio.sleep(0)
    with pytest.raises(BackendError):
        await cb.probe(fail)  # a background probe fails meanwhile
    with pytest.raises(BackendUnavailableError):
        await cb.call(ok)  # the slot is still taken
    release.set()
    assert await held == "ok"
    assert state(cb) is BreakerState.CLOSED


async def test_once_a_probe_closed_it_one_failure_does_not_reopen_it(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    cb = breaker(registry, clock)
    await trip(cb)
    clock.now = 5.0
    release = asyncio.Event()

    async def slow_failure() -> None:
        await release.wait()
        raise ConnectionResetError("reset")

    held = asyncio.create_task(cb.call(slow_failure))  # takes the half-open slot
    await asyncio.sleep(0)
    assert await cb.probe(ok) == "ok"  # the backend is back: closed
    release.set()
    with pytest.raises(BackendError):
        await held  # an ordinary failure now, one of the threshold's three
    assert state(cb) is BreakerState.CLOSED
    with pytest.raises(BackendError):
        await cb.call(fail)
    assert state(cb) is BreakerState.CLOSED


async def test_probe_failures_of_a_closed_breaker_count_towards_the_threshold(
    registry: CollectorRegistry,
) -> None:
    cb = breaker(registry, Clock())
    for _ in range(2):
        with pytest.raises(BackendError):
            await cb.probe(fail)
    assert state(cb) is BreakerState.CLOSED
    with pytest.raises(BackendError):
        await cb.call(fail)
    assert state(cb) is BreakerState.OPEN


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"recovery_time": 0}, {"timeout": -1}]
)
def test_bad_options(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
