"""The funds example: its HTTP contract, in-process and as a real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from examples.funds.app import create_app
from prodkit.settings import StackSettings as Settings
from tests.servers import free_port, run_server

FUND: dict[str, Any] = {
    "name": "Seed Fund I",
    "size": 25_000_000,
    "description": "climate software, pre-seed to A",
    "stages": [
        {"name": "pre-seed", "months": 18, "graduate": 0.4, "exit": 0.1},
        {"name": "seed", "months": 24, "graduate": 0.5, "exit": 0.2},
        {"name": "series-a", "months": 30, "graduate": 0.3, "exit": 0.4},
    ],
}


@pytest.fixture(params=["memory", "postgres"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The example in-process, on its in-memory default and on PostgreSQL (DATABASE_URL)."""
    settings = Settings()
    if request.param == "postgres":
        settings = Settings(database_url=request.getfixturevalue("postgres_dsn"))
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


#: Per-test suffix for user ids: the PostgreSQL database is shared by the whole run.
_NAMESPACE = [uuid.uuid4().hex[:8]]


@pytest.fixture(autouse=True)
def fresh_users() -> None:
    _NAMESPACE[0] = uuid.uuid4().hex[:8]


def as_user(user: str) -> dict[str, str]:
    return {"X-User-Id": f"{user}-{_NAMESPACE[0]}"}


async def eventually_json(
    client: httpx.AsyncClient, url: str, user: str, expect: Callable[[Any], bool]
) -> Any:
    """GET ``url`` until ``expect(body)`` holds (summaries refresh in the background), 5 s at most."""
    body: Any = None
    for _ in range(100):
        body = (await client.get(url, headers=as_user(user))).json()
        if expect(body):
            return body
        await asyncio.sleep(0.05)
    return body


async def test_create_returns_201_location_and_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/funds", json=FUND, headers=as_user("u1"))
    assert response.status_code == 201
    assert response.headers["x-request-id"]
    fund = response.json()
    assert response.headers["location"] == f"/api/funds/{fund['id']}"
    assert {
        "id",
        "name",
        "description",
        "size",
        "stages",
        "irr",
        "model_version",
        "created_at",
        "updated_at",
    } <= set(fund)
    assert fund["stages"] == FUND["stages"]
    fetched = await client.get(response.headers["location"], headers=as_user("u1"))
    assert fetched.json() == fund


async def test_missing_user_is_401_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/funds", json=FUND)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "UNAUTHENTICATED"
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("change", "pointers"),
    [
        ({"name": ""}, ["/name"]),
        ({"name": "x" * 201}, ["/name"]),
        ({"size": 0}, ["/size"]),
        ({"size": "big"}, ["/size"]),
        ({"stages": []}, ["/stages"]),
        ({"stages": [FUND["stages"][0]] * 21}, ["/stages"]),
        (
            {"stages": [{"name": "s", "months": 0, "graduate": 0.1, "exit": 0.1}]},
            ["/stages/0/months"],
        ),
        (
            {"stages": [{"name": "s", "months": 241, "graduate": 0.1, "exit": 0.1}]},
            ["/stages/0/months"],
        ),
        ({"stages": [{"name": "s", "months": 12, "graduate": 0.7, "exit": 0.4}]}, ["/stages/0"]),
        (
            {"stages": [{"name": "s", "months": 12, "graduate": -0.1, "exit": 1.2}]},
            ["/stages/0/graduate", "/stages/0/exit"],
        ),
        (
            {"stages": [{"name": "s", "months": True, "graduate": 0.1, "exit": 0.1}]},
            ["/stages/0/months"],
        ),
        ({"extra": 1}, ["/extra"]),
    ],
)
async def test_invalid_funds_are_422_with_pointers(
    client: httpx.AsyncClient, change: dict[str, Any], pointers: list[str]
) -> None:
    response = await client.post("/api/funds", json={**FUND, **change}, headers=as_user("u1"))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_FAILED"
    assert [error["pointer"] for error in body["errors"]] == pointers
    listing = await client.get("/api/funds", headers=as_user("u1"))
    assert listing.json()["items"] == []  # nothing was written


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "MALFORMED_JSON"),
        (b"name=x", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"[1, 2]", "application/json", 422, "VALIDATION_FAILED"),
        (b"x" * 70_000, "application/json", 413, "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_bad_bodies_are_4xx_problems(
    client: httpx.AsyncClient, content: bytes, content_type: str, status: int, code: str
) -> None:
    response = await client.post(
        "/api/funds", content=content, headers={**as_user("u1"), "Content-Type": content_type}
    )
    assert (response.status_code, response.json()["code"]) == (status, code)


async def test_other_users_funds_are_404(client: httpx.AsyncClient) -> None:
    created = (await client.post("/api/funds", json=FUND, headers=as_user("alice"))).json()
    for method in ("GET", "PATCH", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"name": "mine now"}} if method == "PATCH" else {}
        response = await client.request(
            method, f"/api/funds/{created['id']}", headers=as_user("mallory"), **kwargs
        )
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
    still = await client.get(f"/api/funds/{created['id']}", headers=as_user("alice"))
    assert still.json()["name"] == FUND["name"]


async def test_list_is_newest_first_with_keyset_pagination(client: httpx.AsyncClient) -> None:
    ids = []
    for index in range(5):
        response = await client.post(
            "/api/funds", json={**FUND, "name": f"fund {index}"}, headers=as_user("u2")
        )
        ids.append(response.json()["id"])
    await client.post("/api/funds", json=FUND, headers=as_user("someone-else"))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/funds", params=params, headers=as_user("u2"))).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_search_and_bad_queries(client: httpx.AsyncClient) -> None:
    await client.post("/api/funds", json={**FUND, "name": "Ocean Ventures"}, headers=as_user("u3"))
    await client.post(
        "/api/funds",
        json={**FUND, "name": "Desert Capital", "description": "arid"},
        headers=as_user("u3"),
    )
    found = (await client.get("/api/funds", params={"q": "ocean"}, headers=as_user("u3"))).json()
    assert [item["name"] for item in found["items"]] == ["Ocean Ventures"]
    # A blank q is no filter, on memory and on PostgreSQL alike (issue #16).
    blank = (await client.get("/api/funds", params={"q": "    "}, headers=as_user("u3"))).json()
    assert [item["name"] for item in blank["items"]] == ["Desert Capital", "Ocean Ventures"]
    for params in ({"limit": "0"}, {"limit": "abc"}, {"limit": "101"}, {"cursor": "%%%"}):
        response = await client.get("/api/funds", params=params, headers=as_user("u3"))
        assert response.status_code == 400, params
        assert response.json()["errors"][0]["pointer"].startswith("/query/")


async def test_patch_and_soft_delete(client: httpx.AsyncClient) -> None:
    fund = (await client.post("/api/funds", json=FUND, headers=as_user("u4"))).json()
    url = f"/api/funds/{fund['id']}"
    patched = await client.patch(url, json={"name": "Renamed"}, headers=as_user("u4"))
    assert patched.status_code == 200
    assert patched.json()["name"] == "Renamed"
    assert patched.json()["updated_at"] >= fund["updated_at"]
    bad = await client.patch(url, json={"size": -5}, headers=as_user("u4"))
    assert bad.status_code == 422
    assert (await client.delete(url, headers=as_user("u4"))).status_code == 204
    assert (await client.get(url, headers=as_user("u4"))).status_code == 404
    assert (await client.delete(url, headers=as_user("u4"))).status_code == 404
    listing = (await client.get("/api/funds", headers=as_user("u4"))).json()
    assert listing["items"] == []


async def test_projection_is_deterministic(client: httpx.AsyncClient) -> None:
    fund = (await client.post("/api/funds", json=FUND, headers=as_user("u5"))).json()
    url = f"/api/funds/{fund['id']}/projection"
    first = await client.get(url, params={"simulations": 5000, "seed": 7}, headers=as_user("u5"))
    second = await client.get(url, params={"simulations": 5000, "seed": 7}, headers=as_user("u5"))
    other = await client.get(url, params={"simulations": 5000, "seed": 8}, headers=as_user("u5"))
    assert first.status_code == 200
    assert first.json() == second.json()
    assert first.json() != other.json()
    assert first.json()["model_version"] == fund["model_version"]
    too_many = await client.get(url, params={"simulations": 200_001}, headers=as_user("u5"))
    assert too_many.status_code == 400


async def test_summary(client: httpx.AsyncClient) -> None:
    empty = (await client.get("/api/summary", headers=as_user("u6"))).json()
    assert empty == {"total_funds": 0, "total_aum": 0, "avg_irr": None, "last_activity": None}
    a = (await client.post("/api/funds", json={**FUND, "size": 100}, headers=as_user("u6"))).json()
    await client.post("/api/funds", json={**FUND, "size": 50}, headers=as_user("u6"))
    await client.delete(f"/api/funds/{a['id']}", headers=as_user("u6"))
    # The summary is refreshed a moment after writes (at most about 1 s stale), and a refresh
    # may land between the writes: wait for the state after all three, not just any one fund.
    summary = await eventually_json(
        client,
        "/api/summary",
        "u6",
        lambda body: body["total_funds"] == 1 and body["total_aum"] == 50,
    )
    assert summary["total_funds"] == 1
    assert summary["total_aum"] == 50
    assert summary["last_activity"] is not None


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).json()["code"] == "NOT_FOUND"
    response = await client.put("/api/funds", headers=as_user("u1"))
    assert (response.status_code, response.json()["code"]) == (405, "METHOD_NOT_ALLOWED")


@pytest.mark.server
async def test_readme_command_serves_the_example(tmp_path: Path) -> None:
    port = free_port()
    with run_server(
        ["examples.funds", "--port", str(port)], port=port, tmp_path=tmp_path
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            response = await http.post("/api/funds", json=FUND, headers=as_user("u1"))
    assert response.status_code == 201
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"name": "\\ud800", "size": 1, "stages": [{"name": "s", "months": 1, "graduate": 0, "exit": 0}]}',
        b'{"name": "a\\u0000b", "size": 1, "stages": [{"name": "s", "months": 1, "graduate": 0, "exit": 0}]}',
    ],
)
async def test_text_postgres_cannot_store_is_422(client: httpx.AsyncClient, payload: bytes) -> None:
    response = await client.post(
        "/api/funds", content=payload, headers={**as_user("u1"), "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/name"


async def test_integral_float_months_are_accepted(client: httpx.AsyncClient) -> None:
    stage = {"name": "s", "months": 12.0, "graduate": 0.5, "exit": 0.5}
    response = await client.post(
        "/api/funds", json={**FUND, "stages": [stage]}, headers=as_user("u1")
    )
    assert response.status_code == 201
    assert response.json()["stages"][0]["months"] == 12


async def test_replays_carry_the_model_version(client: httpx.AsyncClient) -> None:
    headers = {**as_user("u7"), "Idempotency-Key": uuid.uuid4().hex}
    first = await client.post("/api/funds", json=FUND, headers=headers)
    replay = await client.post("/api/funds", json=FUND, headers=headers)
    assert first.headers["idempotency-status"] == "created"
    assert replay.headers["idempotency-status"] == "replayed"
    assert replay.headers["x-model-version"] == first.headers["x-model-version"] == "stage-model-1"
    metrics = (await client.get("/metrics")).text
    assert 'idempotency_status="replayed",model_version="stage-model-1",status="201"' in metrics


def _cursor(raw: str) -> str:
    import base64

    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"q": "a\x00b"}, "/query/q"),
        (
            {"cursor": _cursor("0001-01-01T00:00:00+14:00|00000000-0000-0000-0000-000000000000")},
            "/query/cursor",
        ),
        (
            {
                "cursor": _cursor(
                    "9999-12-31T23:59:59.999999-23:59|00000000-0000-0000-0000-000000000000"
                )
            },
            "/query/cursor",
        ),
        (
            {"cursor": _cursor("2026-01-01T00:00:00+00:00|{00000000-0000-0000-0000-000000000000}")},
            "/query/cursor",
        ),
    ],
)
async def test_hostile_list_queries_are_400_on_every_backend(
    client: httpx.AsyncClient, params: dict[str, str], pointer: str
) -> None:
    response = await client.get("/api/funds", params=params, headers=as_user("u8"))
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == pointer


async def test_deeply_nested_json_is_a_400(client: httpx.AsyncClient) -> None:
    body = b"[" * 20_000 + b"]" * 20_000
    response = await client.post(
        "/api/funds", content=body, headers={**as_user("u9"), "Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["code"]) == (400, "MALFORMED_JSON")


async def test_only_the_canonical_fund_id_finds_a_fund(client: httpx.AsyncClient) -> None:
    # Other spellings would be separate cache entries that a write never invalidates.
    fund = (await client.post("/api/funds", json=FUND, headers=as_user("u10"))).json()
    for spelling in (fund["id"].upper(), "{" + fund["id"] + "}", fund["id"].replace("-", "")):
        response = await client.get(f"/api/funds/{spelling}", headers=as_user("u10"))
        assert response.status_code == 404, spelling
