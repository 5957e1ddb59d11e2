"""The rollout's parts on their own: scrape parsing and deltas, quantiles, verdicts, routers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from prodkit._core.exceptions import ConfigurationError
from prodkit.metrics import HTTP_REQUEST_DURATION, HTTP_REQUEST_DURATION_LABELS
from prodkit.rollout import (
    CommandRouter,
    HAProxyRouter,
    RolloutController,
    RolloutPolicy,
    RouterError,
    ScrapeError,
    Target,
    WindowStats,
    histogram_quantile,
    judge,
    parse_scrape,
    read_records,
    window_stats,
)
from prodkit.rollout.timeline import plot_timeline
from tests.servers import free_port


def _registry() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "http_request_duration_seconds",
        "HTTP request duration in seconds.",
        ["method", "route", "status_code"],
        registry=registry,
    )
    return registry, histogram


def test_window_is_the_delta_of_two_real_scrapes() -> None:
    registry, histogram = _registry()
    histogram.labels("GET", "/api/work", "200").observe(0.003)
    histogram.labels("GET", "/metrics", "200").observe(0.001)
    before = parse_scrape(generate_latest(registry).decode())
    for _ in range(90):
        histogram.labels("GET", "/api/work", "200").observe(0.02)
    for _ in range(10):
        histogram.labels("GET", "/api/work", "500").observe(0.2)
    for _ in range(50):
        histogram.labels("GET", "/readyz", "503").observe(0.001)
    after = parse_scrape(generate_latest(registry).decode())

    stats = window_stats(after.delta(before), quantile=0.99)

    # Probes and the scrape are not user traffic; the first observation is before the window.
    assert stats.requests == 100
    assert stats.errors == 10
    assert stats.error_ratio == pytest.approx(0.1)
    # 10 % of requests in the (0.1, 0.25] bucket: p99 interpolates to 0.1 + 0.15 * 0.9.
    assert stats.latency_quantile == pytest.approx(0.235)


def test_a_label_added_to_the_http_metrics_leaves_the_decision_unchanged() -> None:
    # The rollout reads the histogram through the schema the metrics concern publishes, and
    # sums over labels it does not know: split the same traffic over a tenant label (100 and
    # 5 requests in two series of one (method, route, status_code)) and nothing changes.
    plain, histogram = _registry()
    tenants = CollectorRegistry()
    by_tenant = Histogram(
        HTTP_REQUEST_DURATION,
        "HTTP request duration in seconds.",
        [*HTTP_REQUEST_DURATION_LABELS, "tenant"],
        registry=tenants,
    )
    scrapes = []
    for registry in (plain, tenants):
        scrapes.append(parse_scrape(generate_latest(registry).decode()))
    traffic = [("acme", "200", 0.02)] * 100 + [("zeta", "200", 0.02)] * 5
    traffic += [("acme", "500", 0.3)] * 4 + [("zeta", "500", 0.3)] * 2
    for tenant, status, seconds in traffic:
        histogram.labels("GET", "/api/work", status).observe(seconds)
        by_tenant.labels("GET", "/api/work", status, tenant).observe(seconds)
    windows = [
        window_stats(parse_scrape(generate_latest(registry).decode()).delta(before))
        for registry, before in zip((plain, tenants), scrapes, strict=True)
    ]

    assert windows[0] == windows[1]
    assert windows[1].requests == 111
    assert windows[1].errors == 6
    baseline = WindowStats(1000, 0, 0.02)
    assert judge(windows[1], baseline, POLICY) == judge(windows[0], baseline, POLICY)
    assert judge(windows[1], baseline, POLICY).result == "fail"


def test_a_restarted_process_counts_from_zero_like_prometheus_rate() -> None:
    registry, histogram = _registry()
    for _ in range(500):
        histogram.labels("GET", "/api/work", "200").observe(0.01)
    before = parse_scrape(generate_latest(registry).decode())
    fresh, histogram = _registry()
    for _ in range(30):
        histogram.labels("GET", "/api/work", "200").observe(0.01)
    after = parse_scrape(generate_latest(fresh).decode())

    assert window_stats(after.delta(before)).requests == 30


def test_a_page_without_the_histogram_is_an_empty_window() -> None:
    empty = parse_scrape("# HELP up ok\n# TYPE up gauge\nup 1\n")
    assert window_stats(empty) == WindowStats(0, 0, None)
    assert window_stats(empty).error_ratio is None


def test_garbage_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError):
        parse_scrape("http_request_duration_seconds_count{ 12 oops\n")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Same numbers as PromQL's histogram_quantile on these buckets.
        (0.5, {0.1: 50, 0.2: 100, math.inf: 100}, 0.1),
        (0.75, {0.1: 50, 0.2: 100, math.inf: 100}, 0.15),
        (0.99, {0.1: 0, 1.0: 100, math.inf: 100}, 0.1 + 0.9 * 0.99),
        # Rank in the +Inf bucket: the highest finite bound.
        (0.99, {0.1: 10, 0.2: 20, math.inf: 100}, 0.2),
        # First bucket interpolates from zero.
        (0.5, {1.0: 10, math.inf: 10}, 0.5),
        # No observations, or no +Inf bucket: no answer (PromQL: NaN).
        (0.5, {0.1: 0, math.inf: 0}, None),
        (0.5, {0.1: 5}, None),
    ],
)
def test_histogram_quantile_matches_promql(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    result = histogram_quantile(q, buckets)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@given(
    counts=st.lists(st.integers(0, 1000), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1),
    q1=st.floats(0.0, 1.0),
    q2=st.floats(0.0, 1.0),
)
def test_histogram_quantile_is_monotonic_and_within_bounds(
    counts: list[int], q1: float, q2: float
) -> None:
    cumulative: dict[float, float] = {}
    total = 0
    for le, count in zip((*BOUNDS, math.inf), counts, strict=True):
        total += count
        cumulative[le] = total
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, cumulative), histogram_quantile(high, cumulative)
    if total == 0:
        assert a is None
        assert b is None
        return
    assert a is not None
    assert b is not None
    assert 0.0 <= a <= b <= BOUNDS[-1]


POLICY = RolloutPolicy(min_requests=100, max_error_ratio=0.02, max_error_ratio_increase=0.01)


@pytest.mark.parametrize(
    ("canary", "baseline", "result", "reason"),
    [
        (WindowStats(99, 0, 0.05), WindowStats(1000, 0, 0.05), "wait", "fewer than min_requests"),
        (WindowStats(200, 0, 0.05), WindowStats(1000, 0, 0.05), "pass", "within limits"),
        (WindowStats(200, 6, 0.05), None, "fail", "> max_error_ratio"),
        # 1.5 % is under the absolute ceiling but 1.5 points above a clean baseline.
        (WindowStats(200, 3, 0.05), WindowStats(1000, 0, 0.05), "fail", "max_error_ratio_increase"),
        (WindowStats(200, 3, 0.05), WindowStats(1000, 10, 0.05), "pass", "within limits"),
        # p99 three times the baseline's and 0.2 s slower: a regression.
        (WindowStats(200, 0, 0.3), WindowStats(1000, 0, 0.1), "fail", "x baseline"),
        # Twice as slow but only 4 ms: under the tolerance, noise.
        (WindowStats(200, 0, 0.008), WindowStats(1000, 0, 0.004), "pass", "within limits"),
    ],
)
def test_judge(canary: WindowStats, baseline: WindowStats | None, result: str, reason: str) -> None:
    verdict = judge(canary, baseline, POLICY)
    assert verdict.result == result
    assert any(reason in text for text in verdict.reasons), verdict.reasons


def test_absolute_latency_ceiling() -> None:
    policy = RolloutPolicy(min_requests=1, max_latency_seconds=0.5)
    verdict = judge(WindowStats(10, 0, 0.75), None, policy)
    assert verdict.result == "fail"
    assert "max_latency_seconds" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": (50, 25, 100)}, "increasing"),
        ({"steps": (25, 50)}, "end at 100"),
        ({"steps": (0, 100)}, "between 1 and 100"),
        ({"bake_seconds": 0}, "bake_seconds"),
        ({"min_requests": 0}, "min_requests"),
        ({"max_error_ratio": 1.5}, "max_error_ratio"),
        ({"latency_quantile": 99}, "latency_quantile"),
        ({"max_latency_seconds": -1}, "max_latency_seconds"),
    ],
)
def test_policy_validation(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RolloutPolicy(**options)  # type: ignore[arg-type]


def _recording_router(tmp_path: Path) -> tuple[CommandRouter, Path]:
    out = tmp_path / "weights.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' ' + sys.argv[3] + '\\n')"
    router = CommandRouter(
        [sys.executable, "-c", script, str(out), "{canary_weight}", "{baseline_weight}"],
        check_command=[sys.executable, "-c", "pass"],
    )
    return router, out


def test_command_router_fills_in_the_weights(tmp_path: Path) -> None:
    router, out = _recording_router(tmp_path)
    router.check()
    router.set_weights(25, 75)
    router.set_weights(100, 0)
    assert out.read_text().splitlines() == ["25 75", "100 0"]
    assert "{canary_weight}" in router.describe()


def test_command_router_template_with_a_json_patch(tmp_path: Path) -> None:
    # The documented kubectl shape: JSON in single quotes, literal braces doubled.
    out = tmp_path / "patch.json"
    script = "import sys; open(sys.argv[1], 'w').write(sys.argv[-1])"
    router = CommandRouter(
        f'{sys.executable} -c "{script}" {out} --type=json -p '
        '\'[{{"op":"replace","path":"/spec/rules/0/backendRefs/1/weight",'
        '"value":{canary_weight}}}]\''
    )
    router.set_weights(25, 75)
    assert json.loads(out.read_text()) == [
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 25}
    ]


def test_command_router_reports_a_failing_command() -> None:
    router = CommandRouter([sys.executable, "-c", "import sys; sys.exit('no such route')"])
    with pytest.raises(RouterError, match="no such route"):
        router.set_weights(25, 75)


def test_command_router_rejects_unknown_placeholders() -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        CommandRouter("kubectl scale --replicas={replicas}")


@pytest.mark.parametrize(
    "options",
    [
        {"backend": ""},
        {"backend": "app;shutdown"},
        {"backend": "app", "canary_server": "a b"},
        {"backend": "app", "canary_server": "same", "baseline_server": "same"},
    ],
)
def test_haproxy_router_validates_names(options: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        HAProxyRouter("/tmp/none.sock", **options)  # type: ignore[arg-type]  # noqa: S108 - never connected to


def test_haproxy_router_reports_a_missing_socket(tmp_path: Path) -> None:
    router = HAProxyRouter(tmp_path / "absent.sock", backend="app")
    with pytest.raises(RouterError, match=r"absent\.sock"):
        router.check()


def test_failed_preflight_changes_no_weight_and_is_recorded(tmp_path: Path) -> None:
    router, out = _recording_router(tmp_path)
    down = f"http://127.0.0.1:{free_port()}"
    record_path = tmp_path / "deployments.jsonl"
    record = RolloutController(
        baseline=Target("baseline", f"{down}/metrics", f"{down}/readyz"),
        canary=Target("canary", f"{down}/metrics", f"{down}/readyz"),
        router=router,
        version="v9",
        record_path=record_path,
    ).run()

    assert record.outcome == "error"
    assert record.exit_status == 2
    assert "pre-flight failed: baseline is not ready" in record.reason
    assert not out.exists()
    (written,) = read_records(record_path)
    assert written["outcome"] == "error"
    assert written["version"] == "v9"


def test_cli_exits_2_on_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from prodkit.cli import main

    status = main(["rollout", "--baseline=http://127.0.0.1:1", "--canary=http://127.0.0.1:2"])
    assert status == 2
    assert "exactly one traffic router" in capsys.readouterr().err
    status = main(["rollout", "--baseline=x", "--canary=y", "--command=true", "--steps=50,25"])
    assert status == 2
    assert "increasing" in capsys.readouterr().err


def test_timeline_is_drawn_from_a_record(tmp_path: Path) -> None:
    record = json.loads((Path(__file__).parent / "sample_record.json").read_text())
    out = plot_timeline(record, tmp_path / "timeline.png")
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
