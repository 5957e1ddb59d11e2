"""Route templates across frameworks, before and after routing, and RouteTable."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit._core.outcome import PathFilter, resolve_route
from prodkit._core.routing import (
    _FLATTENED,
    normalise_template,
    remember_root_path,
    route_path,
)
from prodkit._core.state import request_state
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


# -- issue #14: the template the user wrote, on every framework -------------------------------


def fastapi_routers_app() -> ASGIApp:
    """Prefixed, nested and mounted FastAPI routers, as most FastAPI apps are built."""
    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    items, users, nested = APIRouter(), APIRouter(), APIRouter()
    items.add_api_route("/", ok, methods=["GET"])
    items.add_api_route("/{item_id}", ok, methods=["GET"])
    users.add_api_route("/", ok, methods=["GET"])
    nested.add_api_route("/deep/{deep_id}", ok, methods=["GET"])
    items.include_router(nested, prefix="/nested")
    items.mount("/files", Starlette(routes=[Route("/{name}", ok)]))
    app = FastAPI()
    app.include_router(items, prefix="/api/v1/items")
    app.include_router(users, prefix="/api/v1/users")
    return app


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v1/items/", "/api/v1/items/"),
        ("/api/v1/users/", "/api/v1/users/"),
        ("/api/v1/items/5", "/api/v1/items/{item_id}"),
        ("/api/v1/items/nested/deep/3", "/api/v1/items/nested/deep/{deep_id}"),
        ("/api/v1/items/files/a.txt", "/api/v1/items/files/{name}"),
        ("/api/v2/items/", UNMATCHED_ROUTE),
    ],
)
async def test_fastapi_included_routers_keep_their_prefixes(path: str, template: str) -> None:
    before, after = await fetch(fastapi_routers_app(), path)
    assert after == template
    assert before == template


# FastAPI's included routers are flattened (FastAPI's public ``iter_route_contexts``) once per
# router and kept, not on every request: the label must stay the one a flattening made for this
# very request would give, whenever routes are added, to the app or to an included router.
def _template(parts: list[str]) -> str:
    return "/" + "/".join(f"{{p{i}}}" if part == "*" else part for i, part in enumerate(parts))


_TEMPLATE = st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=3).map(_template)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("route"), st.integers(0, 2), _TEMPLATE),  # 2: on the app itself
        st.tuples(st.just("request"), st.integers(0, 2), _TEMPLATE),
    ),
    min_size=1,
    max_size=12,
)


@settings(deadline=None, max_examples=60)  # behaviour, never time: a busy machine is slow
@given(steps=_STEPS)
async def test_kept_fastapi_flattening_labels_as_a_fresh_one(
    steps: list[tuple[str, int, str]],
) -> None:
    from fastapi import APIRouter, FastAPI
    from starlette.responses import PlainTextResponse

    def answering(label: str) -> Any:
        async def endpoint() -> PlainTextResponse:
            return PlainTextResponse(label)  # the template it was declared under

        return endpoint

    app = FastAPI()
    routers = [APIRouter(), APIRouter()]
    for index, router in enumerate(routers):
        app.include_router(router, prefix=f"/r{index}")
    labels: list[tuple[str, str]] = []

    async def labelled(scope: Scope, receive: Receive, send: Send) -> None:
        remember_root_path(scope)
        await app(scope, receive, send)
        kept = route_template(scope)
        _FLATTENED.clear()  # what flattening the routes for this request gives
        labels.append((kept, route_template(scope)))

    transport = httpx.ASGITransport(app=labelled)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for kind, where, template in steps:
            prefix = f"/r{where}" if where < 2 else ""
            if kind == "route":
                owner = routers[where] if where < 2 else app.router
                owner.add_api_route(template, answering(prefix + template), methods=["GET"])
                continue
            response = await client.get(prefix + re.sub(r"{p\d}", "7", template))
            kept, fresh = labels.pop()
            assert kept == fresh
            if response.status_code == 200:
                assert kept == response.text


def starlette_mounts_and_hosts_app() -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Host, Mount, Route

    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def static(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("file")(scope, receive, send)

    return Starlette(
        routes=[
            Mount("/static", app=static),
            Host("api.example.com", app=Starlette(routes=[Route("/v/{version}", ok)])),
        ]
    )


async def test_a_mounted_app_that_is_not_a_router_is_labelled_by_its_mount() -> None:
    assert await fetch(starlette_mounts_and_hosts_app(), "/static/css/site.css") == (
        "/static/{path}",
        "/static/{path}",
    )


async def test_a_host_route_adds_no_label_of_its_own() -> None:
    seen: list[tuple[str, str]] = []
    transport = httpx.ASGITransport(app=recorder(starlette_mounts_and_hosts_app(), seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.example.com") as c:
        assert (await c.get("/v/2")).status_code == 200
    assert seen == [("/v/{version}", "/v/{version}")]


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "litestar", "quart", "django"])
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/items/42", "/items/{item_id}"),
        ("/sub/things/7", "/sub/things/{thing_id}"),
        ("/definitely/not/here", UNMATCHED_ROUTE),
    ],
)
async def test_every_framework_gives_the_same_label(
    framework: str, path: str, template: str
) -> None:
    """One label syntax: the path from the app's root, parameters as ``{name}``."""
    before, _ = await fetch(build_app(framework), path)
    assert before == template
    seen: list[str] = []
    app = build_app(framework)

    async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)  # it remembers the root path
        await app(scope, receive, send)
        seen.append(resolve_route(scope, state, app, 200, None))

    transport = httpx.ASGITransport(app=recorded)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.get(path)
    assert seen == [template]


@pytest.mark.parametrize(
    ("written", "label"),
    [
        ("/items/{item_id:int}", "/items/{item_id}"),  # Starlette, Litestar
        ("/items/<int:item_id>", "/items/{item_id}"),  # werkzeug (Quart, Flask)
        ("items/<str:item_id>/", "/items/{item_id}/"),  # Django path()
        ("^items/(?P<item_id>[0-9]{4})/$", "/items/{item_id}/"),  # Django re_path()
        ("/static/{path}", "/static/{path}"),
    ],
)
def test_normalise_template(written: str, label: str) -> None:
    assert normalise_template(written) == label


@pytest.mark.parametrize(
    ("root_path", "path", "seen"),
    [
        ("", "/health", "/health"),
        ("/api", "/api/health", "/health"),
        ("/api", "/api", "/"),
        ("/api", "/other", "/other"),  # a server that did not prefix the path
    ],
)
def test_route_path_is_below_the_root_path(root_path: str, path: str, seen: str) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == seen


def test_exclude_paths_match_below_the_root_path() -> None:
    paths = PathFilter(["/health", "/static/*"])
    assert paths.excludes({"path": "/api/health", "root_path": "/api"})
    assert paths.excludes({"path": "/api/static/a.css", "root_path": "/api"})
    assert paths.excludes({"path": "/health", "root_path": ""})
    assert not paths.excludes({"path": "/api/healthz", "root_path": "/api"})
    assert not paths.excludes({"path": "/api/health", "root_path": ""})


@pytest.mark.parametrize(
    ("root_path", "path", "found"),
    [
        ("", "/funds/1", "/funds/{id}"),
        ("/api", "/api/funds/1", "/funds/{id}"),  # the app's own spelling, below the root_path
        ("/api", "/api/health", "/api/health"),  # the full spelling is tried first
        ("/api", "/api", None),
        ("", "/api/funds/1", None),  # no root_path: nothing is stripped
        ("/api", "/other/funds/1", None),  # a path outside the root_path is taken whole
    ],
)
def test_route_table_matches_a_request_below_its_root_path(
    root_path: str, path: str, found: str | None
) -> None:
    table = RouteTable({"/funds/{id}": 1, "/api/health": 2, "/health": 3})
    matched = table.match_request({"type": "http", "path": path, "root_path": root_path})
    assert (None if matched is None else matched[0]) == found
