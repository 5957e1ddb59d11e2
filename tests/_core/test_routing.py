"""Route templates across frameworks, before and after routing, and RouteTable."""

from __future__ import annotations

import httpx
import pytest

from prodkit import ConfigurationError
from prodkit._core.routing import remember_root_path
from prodkit.asgi import (
    UNMATCHED_ROUTE,
    ASGIApp,
    Receive,
    RouteTable,
    Scope,
    Send,
    route_template,
    route_template_before,
)
from tests.apps import build_app, mounted_starlette_app


def recorder(app: ASGIApp, seen: list[tuple[str, str]]) -> ASGIApp:
    """Wrap ``app`` and record (before, after) templates, the way prodkit middlewares do."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        remember_root_path(scope)
        before = route_template_before(scope, app)
        await app(scope, receive, send)
        seen.append((before, route_template(scope)))

    return middleware


async def fetch(app: ASGIApp, path: str, method: str = "GET") -> tuple[str, str]:
    seen: list[tuple[str, str]] = []
    transport = httpx.ASGITransport(app=recorder(app, seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.request(method, path)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/health", "/health"),
        ("/api/items/5", "/api/items/{item_id}"),
        ("/api/users/u1/posts/p9", "/api/users/{user_id}/posts/{post_id}"),  # nested Mount
        ("/sub/reports/12", "/sub/reports/{report_id}"),  # mounted sub-application
        ("/nope/1", UNMATCHED_ROUTE),
        ("/sub/reports/not-an-int", UNMATCHED_ROUTE),
    ],
)
async def test_starlette_mounts(path: str, template: str) -> None:
    before, after = await fetch(mounted_starlette_app(), path)
    assert after == template
    assert before == template


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "litestar"])
async def test_frameworks_give_the_template(framework: str) -> None:
    _, after = await fetch(build_app(framework), "/items/42")
    assert after in ("/items/{item_id}", "/items/{item_id:str}")
    _, after = await fetch(build_app(framework), "/definitely/not/here")
    assert after == UNMATCHED_ROUTE


async def test_method_not_allowed_keeps_the_template() -> None:
    _, after = await fetch(build_app("starlette"), "/echo", method="GET")
    assert after == "/echo"


async def test_raw_app_is_unmatched_unless_a_resolver_answers() -> None:
    _, after = await fetch(build_app("raw"), "/items/42")
    assert after == UNMATCHED_ROUTE
    scope: Scope = {"type": "http", "path": "/items/42"}
    assert route_template(scope, lambda s: "/items/{id}") == "/items/{id}"
    assert route_template(scope, lambda s: None) == UNMATCHED_ROUTE


def test_route_table_matches_templates() -> None:
    table = RouteTable(
        {
            "/api/funds": "list",
            "/api/funds/{id}": "one",
            "/api/funds/{id}/projection": "projection",
            "/files/{rest:path}": "files",
            "/n/{num:int}": "int",
            "/admin/*": "admin",
        }
    )
    assert table.match("/api/funds") == ("/api/funds", "list")
    assert table.match("/api/funds/abc") == ("/api/funds/{id}", "one")
    assert table.match("/api/funds/abc/projection") == ("/api/funds/{id}/projection", "projection")
    assert table.match("/api/funds/abc/other") is None
    assert table.match("/files/a/b/c.txt") == ("/files/{rest:path}", "files")
    assert table.match("/n/12") == ("/n/{num:int}", "int")
    assert table.match("/n/x") is None
    assert table.match("/admin/users/1") == ("/admin/*", "admin")
    assert table.match("/admin") == ("/admin/*", "admin")
    assert table.match("/adminx") is None


@pytest.mark.parametrize("bad", ["no-slash", "/x/{id:nope}"])
def test_route_table_rejects_bad_templates(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        RouteTable({bad: 1})
