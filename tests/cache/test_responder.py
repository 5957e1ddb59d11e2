"""What is stored and how it is answered: storability, ETags and 304s, Vary, large bodies."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from prodkit.cache import compute_etag
from tests.cache.helpers import CountingApp, make_cache
from tests.conftest import ClientFactory

NOT_STORED = [
    # (path): the response says a shared cache must not store it (RFC 9111 section 3)
    pytest.param("/cookie", id="response Set-Cookie"),
    pytest.param("/nostore", id="response Cache-Control no-store (5.2.2.5)"),
    pytest.param("/private", id="response Cache-Control private (5.2.2.7)"),
    pytest.param("/nocache", id="response Cache-Control no-cache (5.2.2.4)"),
    pytest.param("/varystar", id="response Vary * (4.1)"),
    pytest.param("/missing", id="status not configured (404)"),
]


@pytest.mark.parametrize("path", NOT_STORED)
async def test_responses_a_shared_cache_must_not_store(
    path: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    for _ in range(3):
        response = await client.get(path)
        client.cookies.clear()  # the client would send /cookie's cookie back: not this case
        assert response.headers.get("x-cache") == "MISS"
    assert app.calls[path] == 3


# -- ETag and conditional requests (RFC 9110 sections 8.8.3, 13.1.2) ------------------------


async def test_if_none_match_gets_304_on_hit_and_on_miss(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    first = await client.get("/lang", headers={"Accept-Language": "en"})
    etag = first.headers["etag"]
    hit = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert hit.status_code == 304
    assert hit.content == b""
    assert hit.headers["etag"] == etag
    assert hit.headers["vary"] == "Accept-Language"
    assert hit.headers["x-cache"] == "HIT"
    assert "content-type" not in hit.headers
    weak = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f"W/{etag}"}
    )
    assert weak.status_code == 304
    listed = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f'"other", {etag}'}
    )
    assert listed.status_code == 304
    other = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": '"x"'})
    assert other.status_code == 200

    # A fresh cache (another process) computes the same ETag and answers 304 on its miss.
    other_app = CountingApp()
    fresh = make_client(make_cache(other_app, CollectorRegistry()))
    miss = await fresh.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert miss.status_code == 304
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["etag"] == etag
    assert other_app.calls["/lang"] == 1


async def test_the_apps_own_etag_is_kept(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(make_cache(CountingApp(), registry))
    await client.get("/etag")
    response = await client.get("/etag", headers={"If-None-Match": '"app-v1"'})
    assert response.status_code == 304
    assert response.headers["etag"] == 'W/"app-v1"'


def test_etag_is_the_same_in_another_process() -> None:
    code = (
        "from prodkit.cache import compute_etag;"
        "print(compute_etag(b'{\"id\":1}', [(b'content-type', b'application/json')]).decode())"
    )
    env_seeds = ("1", "2")
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout.strip()
        for seed in env_seeds
    }
    assert results == {compute_etag(b'{"id":1}', [(b"content-type", b"application/json")]).decode()}


# -- Vary and large bodies -----------------------------------------------------------------


async def test_vary_on_a_request_header_keeps_separate_entries(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    en = {"Accept-Language": "en"}
    de = {"Accept-Language": "de"}
    assert (await client.get("/lang", headers=en)).headers["x-cache"] == "MISS"
    assert (await client.get("/lang", headers=de)).headers["x-cache"] == "MISS"
    hit_en = await client.get("/lang", headers=en)
    hit_de = await client.get("/lang", headers=de)
    assert (hit_en.headers["x-cache"], hit_en.text) == ("HIT", "en")
    assert (hit_de.headers["x-cache"], hit_de.text) == ("HIT", "de")
    assert (await client.get("/lang")).text == "none"
    assert app.calls["/lang"] == 3


async def test_a_large_response_streams_through_unstored(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, max_body_bytes=10_000))
    for _ in range(2):
        response = await client.get("/big")
        assert response.headers["x-cache"] == "MISS"
        assert response.content == b"".join(bytes([i]) * 4096 for i in range(16))
    assert app.calls["/big"] == 2
