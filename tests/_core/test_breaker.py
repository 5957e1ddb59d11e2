"""CircuitBreaker: opens after failures, fails fast while open, one half-open probe."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from prodkit import BackendError, BackendUnavailableError, ConfigurationError
from prodkit.asgi import BreakerState, CircuitBreaker


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
    for _ in range(3):
        with pytest.raises(BackendError):
            await cb.call(fail)
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
    for _ in range(3):
        with pytest.raises(BackendError):
            await cb.call(fail)
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


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"recovery_time": 0}, {"timeout": -1}]
)
def test_bad_options(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
