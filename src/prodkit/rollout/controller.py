"""The rollout controller: shift traffic to a canary step by step, judge it, promote or roll back.

For each configured percentage the controller sets the split on the traffic router, lets the
canary *bake*, and compares what canary and baseline served during that window — read from their
own ``/metrics`` pages as counter and histogram *deltas*:

* the canary must have served at least ``min_requests`` before it is judged (the window is
  extended up to ``max_bake_extensions`` times; still too little traffic rolls back);
* its 5xx ratio must stay under ``max_error_ratio`` and within ``max_error_ratio_increase`` of
  the baseline's;
* its latency quantile (p99 by default, estimated from histogram buckets) must stay within
  ``max_latency_ratio`` of the baseline's (differences under ``latency_tolerance_seconds`` are
  noise) and under ``max_latency_seconds`` if set;
* its ``/readyz`` must answer 200 before every step and at every check.

The canary is checked every ``check_interval`` seconds during a bake, so a bad canary is rolled
back as soon as it has served enough requests to be judged, not at the end of the window. Every
deployment is appended to a JSON-lines record with the numbers behind each decision.

The histogram comes from each target's ``metrics_url`` unless the controller is given another
reader, such as :class:`~prodkit.rollout.PrometheusReader` (the sum over every pod of a
deployment, from a Prometheus server).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit.rollout.metrics import (
    DEFAULT_EXCLUDED_ROUTES,
    DEFAULT_HISTOGRAM,
    Scrape,
    ScrapeError,
    WindowStats,
    fetch_text,
    scrape,
    window_stats,
)
from prodkit.rollout.routers import RouterError, TrafficRouter

Outcome = Literal["promoted", "rolled_back", "error", "aborted"]
#: Reads a target's request histogram now (raises :class:`ScrapeError` when it cannot).
MetricsReader = Callable[["Target"], Scrape]
#: Exit status of ``prodkit rollout`` for each outcome.
EXIT_STATUS: dict[str, int] = {"promoted": 0, "rolled_back": 1, "error": 2, "aborted": 2}


@dataclass(frozen=True)
class Target:
    """One deployment of the service: where its metrics and its readiness probe are.

    Arguments:
        name: ``"baseline"`` or ``"canary"`` (or any label for the record).
        metrics_url: its Prometheus page, e.g. ``http://10.0.0.5:8000/metrics``.
        ready_url: its readiness probe, e.g. ``http://10.0.0.5:8000/readyz`` (200 = ready).
    """

    name: str
    metrics_url: str
    ready_url: str


@dataclass(frozen=True)
class RolloutPolicy:
    """Steps, bake times and thresholds of a rollout (see the module docstring).

    Arguments:
        steps: canary percentages, increasing, ending at 100.
        bake_seconds: how long each step runs before it is judged.
        check_interval: seconds between checks during a bake (early roll-back).
        min_requests: canary requests in a window before it is judged.
        max_bake_extensions: extra bake windows granted when the canary saw too little traffic.
        max_error_ratio: highest acceptable canary 5xx ratio.
        max_error_ratio_increase: highest acceptable canary 5xx ratio above the baseline's.
        latency_quantile: the quantile compared (default ``0.99``: p99).
        max_latency_ratio: highest acceptable canary/baseline latency-quantile ratio.
        latency_tolerance_seconds: latency differences smaller than this always pass.
        max_latency_seconds: an absolute ceiling on the canary's latency quantile (or ``None``).
        excluded_routes: route templates left out (probes, the scrape itself).
        histogram: the request-duration histogram read from ``/metrics``.
        http_timeout: seconds for each scrape and probe.
    """

    steps: tuple[int, ...] = (25, 50, 75, 100)
    bake_seconds: float = 120.0
    check_interval: float = 10.0
    min_requests: int = 100
    max_bake_extensions: int = 2
    max_error_ratio: float = 0.02
    max_error_ratio_increase: float = 0.01
    latency_quantile: float = 0.99
    max_latency_ratio: float = 1.5
    latency_tolerance_seconds: float = 0.05
    max_latency_seconds: float | None = None
    excluded_routes: tuple[str, ...] = DEFAULT_EXCLUDED_ROUTES
    histogram: str = DEFAULT_HISTOGRAM
    http_timeout: float = 5.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ConfigurationError(
                f"steps {steps!r} must be increasing percentages between 1 and 100, e.g. 25,50,75,100"
            )
        if steps[-1] != 100:
            raise ConfigurationError(f"steps {steps!r} must end at 100 to promote the canary")
        positive = {
            "bake_seconds": self.bake_seconds,
            "check_interval": self.check_interval,
            "http_timeout": self.http_timeout,
            "max_latency_ratio": self.max_latency_ratio,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, got {value!r}")
        if self.min_requests < 1:
            raise ConfigurationError("min_requests must be at least 1")
        if self.max_bake_extensions < 0:
            raise ConfigurationError("max_bake_extensions must be 0 or more")
        for name, value in (
            ("max_error_ratio", self.max_error_ratio),
            ("max_error_ratio_increase", self.max_error_ratio_increase),
        ):
            if not 0 <= value <= 1:
                raise ConfigurationError(f"{name} must be a ratio between 0 and 1, got {value!r}")
        if not 0 < self.latency_quantile < 1:
            raise ConfigurationError("latency_quantile must be between 0 and 1, e.g. 0.99")
        if self.latency_tolerance_seconds < 0:
            raise ConfigurationError("latency_tolerance_seconds must be 0 or more")
        if self.max_latency_seconds is not None and self.max_latency_seconds <= 0:
            raise ConfigurationError("max_latency_seconds must be positive, or None")


@dataclass(frozen=True)
class Verdict:
    """The judgement of one window: ``pass``, ``fail`` or ``wait`` (too few requests yet)."""

    result: Literal["pass", "fail", "wait"]
    reasons: tuple[str, ...]


def judge(canary: WindowStats, baseline: WindowStats | None, policy: RolloutPolicy) -> Verdict:
    """Compare a canary window with a baseline window under ``policy``.

    ``baseline`` is ``None`` when no baseline window with enough requests exists (at 100 %,
    before any earlier step); then only the absolute thresholds apply.
    """
    if canary.requests < policy.min_requests:
        return Verdict(
            "wait",
            (
                f"canary served {canary.requests:g} requests, fewer than "
                f"min_requests={policy.min_requests}",
            ),
        )
    failures: list[str] = []
    notes: list[str] = []
    ratio = canary.error_ratio or 0.0
    if ratio > policy.max_error_ratio:
        failures.append(
            f"canary error ratio {ratio:.4f} > max_error_ratio {policy.max_error_ratio}"
        )
    if baseline is not None and baseline.error_ratio is not None:
        increase = ratio - baseline.error_ratio
        if increase > policy.max_error_ratio_increase:
            failures.append(
                f"canary error ratio {ratio:.4f} exceeds baseline {baseline.error_ratio:.4f} "
                f"by {increase:.4f} > max_error_ratio_increase {policy.max_error_ratio_increase}"
            )
    if not failures:
        notes.append(f"error ratio {ratio:.4f} within limits")
    q = f"p{policy.latency_quantile * 100:g}"
    latency = canary.latency_quantile
    if latency is not None:
        if policy.max_latency_seconds is not None and latency > policy.max_latency_seconds:
            failures.append(
                f"canary {q} {latency:.4f}s > max_latency_seconds {policy.max_latency_seconds}"
            )
        reference = baseline.latency_quantile if baseline is not None else None
        if (
            reference is not None
            and latency > reference * policy.max_latency_ratio
            and latency - reference > policy.latency_tolerance_seconds
        ):
            failures.append(
                f"canary {q} {latency:.4f}s > {policy.max_latency_ratio} x baseline "
                f"{reference:.4f}s (tolerance {policy.latency_tolerance_seconds}s)"
            )
        elif reference is not None:
            notes.append(f"{q} {latency:.4f}s vs baseline {reference:.4f}s within limits")
    if failures:
        return Verdict("fail", tuple(failures))
    return Verdict("pass", tuple(notes))


@dataclass
class DeploymentRecord:
    """Everything about one rollout, written as one JSON line when it ends.

    ``final_canary_weight`` is the canary's share when the rollout ended: 100 promoted, 0
    rolled back, -1 when the roll-back itself failed (the split is then unknown: check the
    router). ``steps`` holds each step's decision with its numbers, ``observations`` every check.
    """

    id: str
    version: str
    baseline: Target
    canary: Target
    router: str
    policy: RolloutPolicy
    started_at: str
    finished_at: str | None = None
    duration_seconds: float | None = None
    outcome: Outcome | None = None
    reason: str = ""
    final_canary_weight: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 promoted, 1 rolled back, 2 error or aborted."""
        return EXIT_STATUS.get(self.outcome or "error", 2)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready record."""
        return asdict(self)


class RolloutCancelled(Exception):
    """Raised inside the controller when :meth:`RolloutController.cancel` was called."""


class RolloutController:
    """Drive one rollout of ``canary`` next to ``baseline`` through ``router``.

    Arguments:
        baseline, canary: the two deployments (:class:`Target`).
        router: a :class:`~prodkit.rollout.routers.TrafficRouter`.
        policy: steps, bake times and thresholds (:class:`RolloutPolicy`).
        version: the canary's version, for the record.
        record_path: a JSON-lines file; the deployment record is appended to it.
        logger: a structlog logger (default: structlog's ``prodkit.rollout`` logger).
        metrics: reads a target's request histogram (a :data:`MetricsReader`, such as a
            :class:`~prodkit.rollout.PrometheusReader`; default: scrape its ``metrics_url``).
        clock, wall_clock: monotonic and wall clocks (replaceable in tests).

    :meth:`run` blocks until the rollout ends; :meth:`cancel` (from a signal handler or another
    thread) stops it and rolls back.
    """

    def __init__(
        self,
        *,
        baseline: Target,
        canary: Target,
        router: TrafficRouter,
        policy: RolloutPolicy | None = None,
        version: str = "",
        record_path: str | Path | None = None,
        logger: Any | None = None,
        metrics: MetricsReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(router, TrafficRouter):
            raise ConfigurationError("router must implement describe(), check() and set_weights()")
        self.baseline = baseline
        self.canary = canary
        self.router = router
        self.policy = policy or RolloutPolicy()
        self.version = version
        self.record_path = Path(record_path) if record_path is not None else None
        self.log = safe_logger("prodkit.rollout", logger)
        self._read = metrics
        self._clock = clock
        self._wall = wall_clock
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the rollout at the next wait and roll the canary back to 0 %."""
        self._cancelled.set()

    # -- probes -----------------------------------------------------------------------------

    def _ready(self, target: Target) -> tuple[bool, str]:
        try:
            status, _ = fetch_text(target.ready_url, self.policy.http_timeout)
        except ScrapeError as exc:
            return False, str(exc)
        return status == 200, f"GET {target.ready_url} answered {status}"

    def _scrape(self, target: Target) -> Scrape:
        if self._read is not None:
            return self._read(target)
        return scrape(target.metrics_url, self.policy.histogram, self.policy.http_timeout)

    def _stats(self, now: Scrape, start: Scrape) -> WindowStats:
        return window_stats(
            now.delta(start),
            quantile=self.policy.latency_quantile,
            excluded_routes=self.policy.excluded_routes,
        )

    def _wait(self, seconds: float) -> None:
        if self._cancelled.wait(max(0.0, seconds)):
            raise RolloutCancelled

    # -- the rollout ------------------------------------------------------------------------

    def run(self) -> DeploymentRecord:
        """Run the rollout to its end and return (and append to the record file) its record."""
        started = self._clock()
        record = DeploymentRecord(
            id=uuid.uuid4().hex,
            version=self.version,
            baseline=self.baseline,
            canary=self.canary,
            router=self.router.describe(),
            policy=self.policy,
            started_at=_iso(self._wall()),
        )
        log = self.log.bind(deployment_id=record.id, version=self.version)
        log.info("rollout started", steps=list(self.policy.steps), router=record.router)
        weight = 0
        try:
            problem = self._preflight()
            if problem:
                record.outcome, record.reason = "error", f"pre-flight failed: {problem}"
            else:
                self.router.set_weights(0, 100)
                reference: WindowStats | None = None
                for percent in self.policy.steps:
                    weight = percent
                    step, reference = self._step(percent, reference, started, record, log)
                    record.steps.append(step)
                    if step["verdict"] != "pass":
                        record.outcome = "rolled_back"
                        record.reason = f"step {percent}%: " + "; ".join(step["reasons"])
                        break
                else:
                    record.outcome = "promoted"
                    record.reason = f"canary passed every step up to {self.policy.steps[-1]}%"
        except RolloutCancelled:
            record.outcome, record.reason = "aborted", "cancelled by the operator"
        except RouterError as exc:
            record.outcome, record.reason = "error", f"traffic router failed: {exc}"
        except ScrapeError as exc:
            record.outcome, record.reason = "error", f"metrics: {exc}"
        except Exception as exc:
            record.outcome, record.reason = "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if record.outcome != "promoted" and weight > 0:
                weight = self._roll_back(record, log)
            elif record.outcome == "promoted":
                weight = 100
            record.final_canary_weight = weight
            record.finished_at = _iso(self._wall())
            record.duration_seconds = round(self._clock() - started, 3)
            self._write(record)
            log.info(
                "rollout finished",
                outcome=record.outcome,
                reason=record.reason,
                canary_weight=weight,
                duration_seconds=record.duration_seconds,
            )
        return record

    def _preflight(self) -> str:
        """Probe both targets, their metrics and the router; return a problem or ``""``."""
        for target in (self.baseline, self.canary):
            ready, detail = self._ready(target)
            if not ready:
                return f"{target.name} is not ready ({detail})"
            try:
                self._scrape(target)
            except ScrapeError as exc:
                return f"{target.name} metrics: {exc}"
        try:
            self.router.check()
        except RouterError as exc:
            return f"router: {exc}"
        return ""

    def _roll_back(self, record: DeploymentRecord, log: Any) -> int:
        try:
            self.router.set_weights(0, 100)
        except RouterError as exc:
            record.outcome = "error"
            record.reason += f"; roll-back failed: {exc}"
            log.error("roll-back failed", error=str(exc))
            return -1
        log.warning("rolled back", reason=record.reason)
        return 0

    def _step(
        self,
        percent: int,
        reference: WindowStats | None,
        started: float,
        record: DeploymentRecord,
        log: Any,
    ) -> tuple[dict[str, Any], WindowStats | None]:
        policy = self.policy
        step_start = self._clock()
        step: dict[str, Any] = {
            "percent": percent,
            "started_at_seconds": round(step_start - started, 3),
        }
        ready, detail = self._ready(self.canary)
        if not ready:
            step.update(verdict="fail", reasons=[f"canary not ready before the step: {detail}"])
            return step, reference
        self.router.set_weights(percent, 100 - percent)
        log.info("traffic shifted", canary_weight=percent, baseline_weight=100 - percent)
        canary_start, baseline_start = self._scrape(self.canary), self._scrape(self.baseline)
        window_start = self._clock()
        deadline = window_start + policy.bake_seconds
        extensions = 0
        while True:
            self._wait(min(policy.check_interval, deadline - self._clock()))
            now = self._clock()
            verdict, canary_stats, baseline_stats, source = self._check(
                canary_start, baseline_start, reference
            )
            record.observations.append(
                {
                    "t": round(now - started, 3),
                    "percent": percent,
                    "verdict": verdict.result,
                    "canary": canary_stats.as_dict() if canary_stats else None,
                    "baseline": baseline_stats.as_dict() if baseline_stats else None,
                }
            )
            done = verdict.result == "fail" or now >= deadline
            if done and verdict.result == "wait" and extensions < policy.max_bake_extensions:
                extensions += 1
                deadline += policy.bake_seconds
                log.info("bake extended", canary_weight=percent, reason=verdict.reasons[0])
                done = False
            if done:
                break
        result = verdict.result
        reasons = list(verdict.reasons)
        if result == "wait":
            result = "fail"
            reasons.insert(0, "not enough canary traffic to judge")
        if (
            result == "pass"
            and baseline_stats is not None
            and baseline_stats.requests >= policy.min_requests
        ):
            reference = baseline_stats
        step.update(
            verdict=result,
            reasons=reasons,
            bake_seconds=round(now - window_start, 3),
            extensions=extensions,
            canary=canary_stats.as_dict() if canary_stats else None,
            baseline=baseline_stats.as_dict() if baseline_stats else None,
            baseline_source=source,
        )
        log.info(
            "step judged",
            canary_weight=percent,
            verdict=result,
            reasons=reasons,
            canary=step["canary"],
            baseline=step["baseline"],
        )
        return step, reference

    def _check(
        self, canary_start: Scrape, baseline_start: Scrape, reference: WindowStats | None
    ) -> tuple[Verdict, WindowStats | None, WindowStats | None, str]:
        """One check during a bake: readiness, both scrapes, the verdict."""
        ready, detail = self._ready(self.canary)
        if not ready:
            return Verdict("fail", (f"canary not ready: {detail}",)), None, None, "none"
        try:
            canary_stats = self._stats(self._scrape(self.canary), canary_start)
        except ScrapeError as exc:
            return Verdict("fail", (f"canary metrics: {exc}",)), None, None, "none"
        try:
            baseline_stats: WindowStats | None = self._stats(
                self._scrape(self.baseline), baseline_start
            )
        except ScrapeError:
            baseline_stats = None
        if baseline_stats is not None and baseline_stats.requests >= self.policy.min_requests:
            compared, source = baseline_stats, "window"
        elif reference is not None:
            compared, source = reference, "previous step"
        else:
            compared, source = None, "none"
        return judge(canary_stats, compared, self.policy), canary_stats, baseline_stats, source

    def _write(self, record: DeploymentRecord) -> None:
        if self.record_path is None:
            return
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        with self.record_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record.as_dict(), sort_keys=True) + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read every deployment record of a JSON-lines file, oldest first."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


__all__ = [
    "EXIT_STATUS",
    "DeploymentRecord",
    "MetricsReader",
    "RolloutCancelled",
    "RolloutController",
    "RolloutPolicy",
    "Target",
    "Verdict",
    "judge",
    "read_records",
]
