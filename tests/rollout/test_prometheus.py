"""The rollout reads its metrics from a real Prometheus: the same numbers as the pages.

A real Prometheus (``tests/servers/prometheus.py``: the shipped configuration with 1 s
scrapes) scrapes three processes of the rollout test service: a canary of two processes that
fail 30 % of ``/api/work``, and a baseline of one, told apart by a target label ``track``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit._core.exceptions import ConfigurationError
from prodkit.rollout import (
    CommandRouter,
    PrometheusReader,
    RolloutController,
    RolloutPolicy,
    Scrape,
    ScrapeError,
    Target,
    parse_scrape,
    window_stats,
)
from prodkit.rollout.metrics import Series
from tests.conftest import unavailable
from tests.servers import HOST, ServerProcess, free_port, run_server
from tests.servers.prometheus import (
    PrometheusServer,
    configuration,
    prometheus,
    prometheus_missing,
)

SELECTORS = {"baseline": 'job="funds",track="baseline"', "canary": 'job="funds",track="canary"'}


# -- selectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "kept"),
    [
        ('job="funds"', 'job="funds"'),
        ('{job="funds", track=~"canary|canary-2"}', 'job="funds", track=~"canary|canary-2"'),
        ('job!="a,b", pod!~"x\\"y",', 'job!="a,b", pod!~"x\\"y"'),
    ],
)
def test_a_selector_is_label_matchers(selector: str, kept: str) -> None:
    reader = PrometheusReader("http://prometheus:9090", {"canary": selector})
    assert reader.selectors["canary"] == kept


@pytest.mark.parametrize(
    "selector",
    ["", "{}", "job", "job=funds", '{job="a"} or vector(1)', 'job="a"}', 'up{job="a"}', "job='a'"],
)
def test_anything_else_is_a_configuration_error(selector: str) -> None:
    with pytest.raises(ConfigurationError, match="label matchers"):
        PrometheusReader("http://prometheus:9090", {"canary": selector})


@given(st.text(max_size=60))
def test_any_text_is_a_selector_or_a_configuration_error(text: str) -> None:
    with contextlib.suppress(ConfigurationError):
        PrometheusReader("http://prometheus:9090", {"canary": text})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"url": "prometheus:9090"}, r"http\(s\)://host:port"),
        ({"histogram": "http duration"}, "metric name"),
        ({"timeout": 0}, "positive"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], says: str) -> None:
    arguments: dict[str, object] = {"url": "http://prometheus:9090", "selectors": {}, **options}
    with pytest.raises(ConfigurationError, match=says):
        PrometheusReader(**arguments)  # type: ignore[arg-type]


def test_an_unreachable_prometheus_is_a_scrape_error() -> None:
    reader = PrometheusReader(f"http://{HOST}:{free_port()}", SELECTORS, timeout=2)
    with pytest.raises(ScrapeError, match="cannot be asked"):
        reader.read(Target("canary", "", ""))


def test_a_target_without_a_selector_is_a_scrape_error() -> None:
    reader = PrometheusReader("http://prometheus:9090", {"canary": 'job="funds"'})
    with pytest.raises(ScrapeError, match="no Prometheus selector for the 'baseline'"):
        reader.read(Target("baseline", "", ""))


# -- a real Prometheus ----------------------------------------------------------------------


@dataclass
class Fleet:
    """The processes, the Prometheus that scrapes them, and a reader of it."""

    canary: list[ServerProcess]
    baseline: ServerProcess
    server: PrometheusServer
    reader: PrometheusReader

    def target(self, name: str) -> Target:
        process = self.baseline if name == "baseline" else self.canary[0]
        # The pages are not what the reader reads: a URL that answers nothing proves it.
        return Target(name, f"http://{HOST}:{free_port()}/metrics", f"{process.base_url}/readyz")

    def pages(self, name: str) -> Scrape:
        """The deployment's histogram from its processes' own pages, summed."""
        processes = self.canary if name == "canary" else [self.baseline]
        with httpx.Client(timeout=5.0) as client:
            return _sum(parse_scrape(client.get(f"{p.base_url}/metrics").text) for p in processes)

    def wait_for_a_scrape_after(self, moment: float, name: str) -> None:
        """Wait until Prometheus has scraped every process of ``name`` after ``moment``."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            scraped = self.server.query(f"timestamp(up{{{SELECTORS[name]}}})")
            if scraped and all(float(s["value"][1]) > moment for s in scraped):
                return
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus did not scrape the {name} again")


def _sum(scrapes: Iterator[Scrape]) -> Scrape:
    counts: dict[tuple[str, ...], float] = {}
    buckets: dict[tuple[str, ...], dict[float, float]] = {}
    for one in scrapes:
        for key, series in one.series.items():
            counts[key] = counts.get(key, 0.0) + series.count
            for le, value in series.buckets.items():
                buckets.setdefault(key, {})[le] = buckets.get(key, {}).get(le, 0.0) + value
    return Scrape({key: Series(counts[key], buckets.get(key, {})) for key in counts})


def _without_scrapes(scrape: Scrape) -> dict[tuple[str, ...], Series]:
    # Every scrape of /metrics is itself a request: the page and Prometheus never agree on it.
    return {key: series for key, series in scrape.series.items() if key[1] != "/metrics"}


def _traffic(processes: list[ServerProcess], requests: int) -> None:
    with httpx.Client(timeout=5.0) as client:
        for index in range(requests):
            process = processes[index % len(processes)]
            client.get(f"{process.base_url}/api/work")
            if index % 10 == 0:
                client.get(f"{process.base_url}/readyz")
                client.get(f"{process.base_url}/no-such-route")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    missing = prometheus_missing()
    if missing:
        unavailable(missing)
    tmp = tmp_path_factory.mktemp("fleet")
    ports = [free_port() for _ in range(3)]
    args = ["uvicorn", "tests.servers.rollout_app:app", "--host", HOST, "--log-level", "warning"]

    def start(port: int, **env: str) -> contextlib.AbstractContextManager[ServerProcess]:
        return run_server([*args, "--port", str(port)], port=port, tmp_path=tmp, env=env)

    config = configuration([], scrape_interval="1s")
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"{HOST}:{p}" for p in ports[:2]], "labels": {"track": "canary"}},
        {"targets": [f"{HOST}:{ports[2]}"], "labels": {"track": "baseline"}},
    ]
    with (
        start(ports[0], FAULT_ERROR_RATE="0.3") as first,
        start(ports[1], FAULT_ERROR_RATE="0.3") as second,
        start(ports[2]) as baseline,
        prometheus(tmp, config) as server,
    ):
        server.wait_until_scraped("funds", 3)
        yield Fleet([first, second], baseline, server, PrometheusReader(server.url, SELECTORS))


def test_prometheus_gives_the_histogram_the_pages_give(fleet: Fleet) -> None:
    _traffic(fleet.canary, 120)
    _traffic([fleet.baseline], 40)
    pages = {name: fleet.pages(name) for name in SELECTORS}
    moment = time.time()
    for name in SELECTORS:
        fleet.wait_for_a_scrape_after(moment, name)
        read = fleet.reader.read(fleet.target(name))
        assert _without_scrapes(read) == _without_scrapes(pages[name])
    # Both canary processes, the 500s, the probes and the unknown route are in the sums.
    canary = _without_scrapes(fleet.reader.read(fleet.target("canary")))
    statuses = {key[2] for key in canary if key[1] == "/api/work"}
    assert statuses == {"200", "500"}
    assert sum(s.count for k, s in canary.items() if k[1] == "/api/work") >= 120


def test_a_window_read_from_prometheus_is_the_window_of_the_pages(fleet: Fleet) -> None:
    canary = fleet.target("canary")
    fleet.wait_for_a_scrape_after(time.time(), "canary")
    start, start_pages = fleet.reader.read(canary), fleet.pages("canary")
    _traffic(fleet.canary, 100)
    end_pages = fleet.pages("canary")
    fleet.wait_for_a_scrape_after(time.time(), "canary")
    end = fleet.reader.read(canary)

    from_prometheus = window_stats(end.delta(start))
    from_pages = window_stats(end_pages.delta(start_pages))
    assert from_prometheus == from_pages
    assert from_prometheus.requests == 110  # 100 to /api/work, 10 to an unknown route
    assert 0 < from_prometheus.errors < 100


def test_a_target_that_is_down_or_unknown_is_a_scrape_error(fleet: Fleet) -> None:
    reader = PrometheusReader(
        fleet.server.url, {"canary": 'job="funds",track="nowhere"', "baseline": 'job="funds"'}
    )
    with pytest.raises(ScrapeError, match="no target"):
        reader.read(Target("canary", "", ""))
    broken = PrometheusReader(fleet.server.url, {"canary": 'job=~"("'})
    with pytest.raises(ScrapeError, match="bad_data"):
        broken.read(Target("canary", "", ""))


def test_a_down_target_is_named(tmp_path: Path) -> None:
    missing = prometheus_missing()
    if missing:
        unavailable(missing)
    nowhere = f"{HOST}:{free_port()}"
    with prometheus(tmp_path, configuration([nowhere], scrape_interval="1s")) as server:
        deadline = time.monotonic() + 20
        while not server.query('up{job="funds"}') and time.monotonic() < deadline:
            time.sleep(0.2)
        reader = PrometheusReader(server.url, {"canary": 'job="funds"'})
        with pytest.raises(ScrapeError, match=f"cannot scrape {nowhere}"):
            reader.read(Target("canary", "", ""))


def test_the_controller_rolls_back_a_failing_canary_from_prometheus(
    fleet: Fleet, tmp_path: Path
) -> None:
    # The canary's pages are not where the targets say: only Prometheus knows the numbers.
    policy = RolloutPolicy(
        steps=(50, 100), bake_seconds=6, check_interval=1.5, min_requests=30, max_error_ratio=0.1
    )
    controller = RolloutController(
        baseline=fleet.target("baseline"),
        canary=fleet.target("canary"),
        router=CommandRouter("true"),
        policy=policy,
        metrics=fleet.reader,
        record_path=tmp_path / "deployments.jsonl",
    )
    with _Load(fleet).running():
        record = controller.run()
    assert record.outcome == "rolled_back", record.reason
    assert "canary error ratio" in record.reason
    assert record.steps[0]["canary"]["requests"] >= 30


@dataclass
class _Load:
    """Both deployments get requests in a background thread while the controller runs."""

    fleet: Fleet

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        import threading

        stop = threading.Event()

        def run() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                _traffic([*self.fleet.canary, self.fleet.baseline], 30)

        thread = threading.Thread(target=run, name="prometheus-reader-load", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--prometheus=http://prometheus:9090"], "--prometheus needs --baseline-selector"),
        (['--canary-selector=job="funds"'], "need --prometheus"),
        (
            [
                "--prometheus=http://prometheus:9090",
                "--baseline-selector=job=funds",
                '--canary-selector=job="funds"',
            ],
            "label matchers",
        ),
    ],
)
def test_the_command_line_refuses_half_a_prometheus_source(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prodkit.cli import main

    status = main(["rollout", "--baseline=http://b", "--canary=http://c", "--command=true", *flags])
    assert status == 2
    assert says in capsys.readouterr().err
