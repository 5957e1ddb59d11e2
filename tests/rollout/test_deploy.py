"""The Grafana dashboard and the Prometheus rules: well-formed, and querying only real metrics.

:data:`METRICS_USED` is the one list of metric names (and labels) that
``deploy/grafana/prodkit.json`` and ``deploy/prometheus/alerts.yml`` rely on. The tests check
that every query names only metrics in it, and that a real scrape of an app built with
:func:`prodkit.recommended_stack` (wired like the example, see :func:`build_app`) exports every
one of them with those labels.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prodkit import Layer, Stack, StackSettings, caller_from_header
from prodkit.cache import CacheRule
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "prodkit.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

#: Every series name the dashboard and the alerts query, with the labels they may rely on.
#: THE one place to edit when a middleware renames a metric or a label.
METRICS_USED: dict[str, frozenset[str]] = {
    "http_request_duration_seconds_count": frozenset({"method", "route", "status_code"}),
    "http_request_duration_seconds_bucket": frozenset({"method", "route", "status_code", "le"}),
    "http_requests_in_flight": frozenset({"method"}),
    "http_request_size_bytes_bucket": frozenset({"method", "route", "le"}),
    "http_response_size_bytes_bucket": frozenset({"method", "route", "le"}),
    "http_exceptions_total": frozenset({"route", "exception_type"}),
    "prodkit_idempotency_requests_total": frozenset({"outcome"}),
    "prodkit_cache_requests_total": frozenset({"route", "outcome"}),
    "prodkit_rate_limit_decisions_total": frozenset({"policy", "decision"}),
    "prodkit_capacity_rejections_total": frozenset({"endpoint"}),
    "prodkit_circuit_breaker_state": frozenset({"breaker"}),
    "fund_creations_total": frozenset({"status", "idempotency_status", "model_version"}),
}
#: Labels Prometheus adds to every scraped series (target labels), usable in any query.
TARGET_LABELS = frozenset({"job", "instance"})


# -- PromQL: the names and labels a query uses --------------------------------------------------

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_IDENTIFIER = re.compile(r"(?<![\w.$\"])[A-Za-z_:][\w:]*")


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)


def _without_strings(expr: str) -> str:
    """The expression with string literals emptied (a Grafana ``label_values(m, label)``
    query reduced to its selector ``m``, its label kept as a ``by`` clause)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    wrapped = _LABEL_VALUES.match(expr)
    if wrapped:
        expr = f"{wrapped.group(1)} by ({wrapped.group(2)})"
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = _without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def promql_labels(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """Labels matched per selected metric, and labels named in by/without/on clauses."""
    text = _without_strings(expr)
    matched: dict[str, set[str]] = {}
    for name, body in _SELECTOR.findall(text):
        matched.setdefault(name, set()).update(_MATCHER_LABEL.findall(body))
    grouping = {
        label.strip()
        for clause in _GROUPING.findall(text)
        for label in clause.split(",")
        if label.strip()
    }
    return matched, grouping


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~"b|c"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ('a:b:ratio_rate1h{job=~"$job"} > (14.4 * 0.001) and on(job) c', {"a:b:ratio_rate1h", "c"}),
        ('label_values(m_count{job=~"$job"}, route)', {"m_count"}),
        ("1 - (sum without (le) (rate(y[5m])) / 2e3)", {"y"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# -- what the dashboard and the rules query --------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries() -> list[tuple[str, str]]:
    """``(where, expr)`` for every PromQL expression of the dashboard and the rules."""
    dashboard = _dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query.get("query", "")))
    found.extend((f"rule {r.get('record') or r.get('alert')}", r["expr"]) for r in _rules())
    return found


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def test_every_query_names_only_metrics_in_the_one_list() -> None:
    allowed = set(METRICS_USED) | _recorded()
    used: set[str] = set()
    for where, expr in _queries():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= allowed, f"{where} queries {sorted(names - allowed)}, not in METRICS_USED"
        used |= names
    # The list says exactly what is used: an unused entry is a stale name.
    assert set(METRICS_USED) <= used, f"unused in METRICS_USED: {sorted(set(METRICS_USED) - used)}"


def test_every_query_uses_only_labels_those_metrics_have() -> None:
    recorded = {name: frozenset({"job"}) for name in _recorded()}
    known = {**METRICS_USED, **recorded}
    for where, expr in _queries():
        matched, grouping = promql_labels(expr)
        for name, labels in matched.items():
            assert labels <= known[name] | TARGET_LABELS, (
                f"{where}: {name} has no label {sorted(labels - known[name] - TARGET_LABELS)}"
            )
        names = promql_metric_names(expr)
        available = set().union(*(known[name] for name in names)) | TARGET_LABELS
        assert grouping <= available, f"{where}: grouping by {sorted(grouping - available)}"


# -- a real scrape --------------------------------------------------------------------------


def build_app(registry: CollectorRegistry, redis_url: str) -> Stack:
    """The example's wiring on a small app: the real recommended stack, Redis-backed, plus
    the example's ``fund_creations_total``; ``/boom`` raises and ``/slow`` holds a slot."""
    from examples.funds.app import FundCreationMetrics

    async def get_fund(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["fund_id"]})

    async def create_fund(request: Request) -> Response:
        return JSONResponse({"id": "f1"}, status_code=201, headers={"X-Model-Version": "v1"})

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return JSONResponse({})

    router = Starlette(
        routes=[
            Route("/api/funds/{fund_id}", get_fund),
            Route("/api/funds", create_fund, methods=["POST"]),
            Route("/boom", boom),
            Route("/slow", slow),
        ]
    )
    stack = Stack.recommended(
        StackSettings(redis_url=redis_url, rate_limit="1000/second", max_concurrency=1),
        registry=registry,
        caller=caller_from_header("X-User-Id"),
        cache_routes={"/api/funds/{fund_id}": CacheRule(ttl=5, per_caller=True)},
    )
    stack.insert_after(
        "metrics", Layer("fund_metrics", FundCreationMetrics, {"registry": registry})
    )
    return stack.build(router)


async def test_a_real_scrape_exports_every_metric_the_dashboard_and_alerts_use(
    registry: CollectorRegistry, redis_url: str
) -> None:
    stack = build_app(registry, redis_url)
    user = {"X-User-Id": f"deploy-{uuid.uuid4().hex[:8]}"}
    transport = httpx.ASGITransport(app=stack)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/api/funds/42", headers=user)).status_code == 200
        created = await client.post(
            "/api/funds", json={}, headers={**user, "Idempotency-Key": uuid.uuid4().hex}
        )
        assert created.status_code == 201
        assert (await client.get("/boom")).status_code == 500
        shed = await asyncio.gather(client.get("/slow"), client.get("/slow"))
        assert sorted(r.status_code for r in shed) == [200, 503]  # max_concurrency=1
        page = await client.get("/metrics")
    await stack.aclose()  # no lifespan ran here: close the stores and the Redis client by hand

    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    missing = sorted(set(METRICS_USED) - set(exported))
    assert not missing, f"the app exports no {missing}"
    for name, labels in METRICS_USED.items():
        assert labels <= exported[name], f"{name} lacks labels {sorted(labels - exported[name])}"
    # Route templates, never raw paths.
    assert 'route="/api/funds/{fund_id}"' in page.text
    assert 'route="/api/funds/42"' not in page.text


# -- the dashboard's structure ------------------------------------------------------------------


def test_dashboard_has_the_fields_grafana_needs_to_import_it() -> None:
    dashboard = _dashboard()
    for key, kind in (
        ("title", str),
        ("uid", str),
        ("schemaVersion", int),
        ("panels", list),
        ("templating", dict),
        ("time", dict),
    ):
        assert isinstance(dashboard.get(key), kind), f"dashboard.{key} must be a {kind.__name__}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert "id" not in dashboard or dashboard["id"] is None, "an exported dashboard has no id"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"

    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        assert isinstance(panel["id"], int)
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["x"] >= 0, f"{panel['title']} is off the grid"
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is off the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "state-timeline", "stat", "gauge", "table"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in targets:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_red_latency_and_prodkits_own_metrics() -> None:
    exprs = " ".join(expr for _, expr in _queries())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
    titles = {panel["title"] for panel in _panels(_dashboard())}
    for needle in ("Requests per second", "error ratio", "in flight", "Idempotency", "hit ratio"):
        assert any(needle.lower() in t.lower() for t in titles), needle


# -- promtool --------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (apt-get install -y prometheus)")
    assert path is not None
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", str(RULES)),
        ("test", "rules", str(RULE_TESTS)),
        ("check", "config", str(PROMETHEUS_CONFIG)),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [_promtool(), *args],
        capture_output=True,
        text=True,
        timeout=300,  # the unit tests evaluate every 5 s over hours: ~40 s of CPU, more if shared
        check=False,
        cwd=RULES.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (Grafana's variables filled in) as a recording rule."""
    substitutions = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*", "$route": ".*"}
    rules = []
    for index, (where, expr) in enumerate(_queries()):
        if not where.startswith("panel"):
            continue
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown variable in {expr!r}"
        rules.append({"record": f"dashboard:query:{index}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sample_haproxy_configuration_is_valid() -> None:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        unavailable("haproxy is not installed (apt-get install -y haproxy)")
    assert binary is not None
    config = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
    result = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "WARNING" not in output, output
